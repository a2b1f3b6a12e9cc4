"""The SQLite store: durability settings, group commit, exact credits, job state machine."""

from __future__ import annotations

import asyncio
import sqlite3

import pytest

from bridge.errors import StoreError
from bridge.store import SCHEMA_VERSION, Incoming, JobState, NewJob, NewReply, Store


def incoming(key: str | None, numbers=("+33612121515",), cost: int = 1, login: str = "a") -> Incoming:
    return Incoming(
        key=key,
        login=login,
        message_id=None,
        reply_to="alice@example.org",
        summary="a@***|...",
        jobs=[NewJob(number=n, text="hi", sender=None, parts=cost, cost=cost) for n in numbers],
    )


@pytest.fixture
async def store(tmp_path):
    store = await Store.open(tmp_path / "s.db")
    await store.open_accounts({"a": 10}, now=0)
    yield store
    await store.close()


class TestDurability:
    async def test_wal_and_full_sync(self, tmp_path, store):
        """The store runs in WAL mode with synchronous=FULL (fsync before acknowledging)."""
        conn = store._writer.conn
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL

    async def test_schema_is_versioned(self, tmp_path, store):
        """A new store records its schema version; reopening keeps the data."""
        await store.accept(incoming("k1"), now=1)
        await store.close()
        reopened = await Store.open(tmp_path / "s.db")
        try:
            assert len(await reopened.jobs()) == 1
            version = sqlite3.connect(tmp_path / "s.db").execute("SELECT value FROM meta").fetchone()[0]
            assert int(version) == SCHEMA_VERSION
        finally:
            await reopened.close()

    async def test_newer_schema_is_refused(self, tmp_path):
        """A store written by a newer bridge is not touched."""
        store = await Store.open(tmp_path / "n.db")
        await store.close()
        with sqlite3.connect(tmp_path / "n.db") as conn:
            conn.execute("UPDATE meta SET value='99' WHERE key='schema'")
        with pytest.raises(StoreError, match="newer"):
            await Store.open(tmp_path / "n.db")


class TestCredits:
    async def test_opening_balance_applied_once(self, tmp_path, store):
        """Restarting with the same (or a changed) opening balance does not add it again."""
        await store.open_accounts({"a": 10}, now=1)
        await store.open_accounts({"a": 500}, now=2)
        assert (await store.balances())["a"] == 10

    async def test_racing_mails_cannot_overspend(self, store):
        """Twenty concurrent mails for 1 credit each against 10 credits: exactly 10 pass."""
        results = await asyncio.gather(*(store.accept(incoming(f"k{i}"), now=1) for i in range(20)))
        outcomes = [r.outcome for r in results]
        assert outcomes.count("accepted") == 10 and outcomes.count("insufficient_credit") == 10
        assert (await store.balances())["a"] == 0

    async def test_refund_on_failure(self, store):
        """A failed job gives its credits back, once, and the ledger says why."""
        result = await store.accept(incoming("k", cost=3), now=1)
        [job] = await store.claim_jobs(now=2, limit=10)
        await store.mark_failed(job.id, "refused", now=3)
        await store.mark_failed(job.id, "refused", now=4)  # a second call changes nothing
        assert (await store.balances())["a"] == 10
        reasons = [row["reason"] for row in await store.ledger("a")]
        assert reasons == ["opening", "debit", "refund"] and result.job_ids == (job.id,)

    async def test_manual_credit(self, store):
        """`accounts credit` adds a ledger row and returns the new balance."""
        assert await store.credit("a", 5, "manual", now=1) == 15


class TestJobs:
    async def test_duplicate_key_is_dropped(self, store):
        """The same idempotency key commits only once, even within one group commit."""
        first, second = await asyncio.gather(store.accept(incoming("same"), 1), store.accept(incoming("same"), 1))
        assert sorted([first.outcome, second.outcome]) == ["accepted", "duplicate"]
        assert len(await store.jobs()) == 1

    async def test_no_key_is_never_deduplicated(self, store):
        """Mails without an idempotency key are all accepted."""
        for _ in range(3):
            assert (await store.accept(incoming(None), 1)).outcome == "accepted"

    async def test_claim_is_exclusive(self, store):
        """A job is claimed by one caller only, and moves to sending."""
        await store.accept(incoming("k"), 1)
        claims = await asyncio.gather(store.claim_jobs(2, 10), store.claim_jobs(2, 10))
        assert sorted(len(c) for c in claims) == [0, 1]
        assert (await store.jobs())[0].state is JobState.SENDING

    async def test_future_jobs_wait(self, store):
        """A job with a send date is not claimed before it."""
        scheduled = Incoming(
            key="k", login="a", message_id=None, reply_to=None, summary="",
            jobs=[NewJob("+33612121515", "hi", None, 1, 1, send_at=100.0)],
        )
        await store.accept(scheduled, 1)
        assert await store.claim_jobs(99, 10) == []
        assert len(await store.claim_jobs(100, 10)) == 1

    async def test_recover_sending_marks_unknown(self, store):
        """After a crash, jobs left in sending become unknown and are not claimable."""
        await store.accept(incoming("k"), 1)
        [job] = await store.claim_jobs(2, 10)
        assert await store.recover_sending(3) == [job.id]
        assert (await store.job(job.id)).state is JobState.UNKNOWN
        assert await store.claim_jobs(4, 10) == []

    async def test_operator_requeue_of_failed_job_debits_again(self, store):
        """`queue retry` on a failed job re-debits the refund and queues it."""
        await store.accept(incoming("k", cost=2), 1)
        [job] = await store.claim_jobs(2, 10)
        await store.mark_failed(job.id, "x", 3)
        assert await store.requeue(job.id, 4)
        assert (await store.balances())["a"] == 8
        assert (await store.job(job.id)).state is JobState.QUEUED
        assert not await store.requeue(job.id, 5)  # queued: nothing to do

    async def test_failed_write_does_not_sink_its_group(self, store):
        """One write raising inside a group commit leaves the others committed."""

        def broken(conn):
            conn.execute("INSERT INTO nowhere VALUES (1)")

        results = await asyncio.gather(
            store.accept(incoming("k1"), 1), store.write(broken), store.accept(incoming("k2"), 1),
            return_exceptions=True,
        )
        assert isinstance(results[1], StoreError)
        assert len(await store.jobs()) == 2


class TestReplies:
    async def test_reply_lifecycle(self, store):
        """Queued replies are claimed when due, retried later, then marked sent."""
        await store.queue_reply(NewReply("Bob@Example.org", 105, b"x"), now=1)
        [reply] = await store.claim_replies(now=1, limit=10)
        await store.finish_reply(reply.id, "queued", "relay down", when=50, now=2)
        assert await store.claim_replies(now=10, limit=10) == []
        assert len(await store.claim_replies(now=50, limit=10)) == 1
        await store.finish_reply(reply.id, "sent", None, 51, 51)
        assert await store.replies_since("bob@example.org", 0) == 1
        assert (await store.replies())[0]["state"] == "sent"


class TestMigrationAndKeys:
    async def test_v1_store_is_migrated(self, tmp_path):
        """A version-1 store gets the new tables and keeps its dedup keys."""
        from bridge import store as store_module

        path = tmp_path / "old.db"
        with sqlite3.connect(path) as conn:
            for statement in store_module._SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute("INSERT INTO meta VALUES ('schema', '1')")
            conn.execute(
                "INSERT INTO messages (key, summary, outcome, received_at) VALUES ('old', '', 'accepted', 0)"
            )
        migrated = await Store.open(path)
        try:
            assert await migrated.seen("old")
            assert (await migrated.accept(incoming("old"), 1)).outcome == "duplicate"
            assert await migrated.mailbox_state("INBOX") is None
        finally:
            await migrated.close()

    async def test_any_key_makes_a_duplicate(self, store):
        """A mail is a duplicate when any of its keys (content or IMAP UID) was seen."""
        first = Incoming(key="content", login="a", message_id=None, reply_to=None, summary="",
                         jobs=incoming(None).jobs, extra_keys=("imap:INBOX:1:7",))
        again = Incoming(key=None, login="a", message_id=None, reply_to=None, summary="",
                         jobs=incoming(None).jobs, extra_keys=("imap:INBOX:1:7",))
        assert (await store.accept(first, 1)).outcome == "accepted"
        assert (await store.accept(again, 2)).outcome == "duplicate"

    async def test_mailbox_state(self, store):
        """The last UID only grows within one UIDVALIDITY and resets with a new one."""
        await store.set_mailbox_state("INBOX", 10, 5)
        await store.set_mailbox_state("INBOX", 10, 3)
        assert await store.mailbox_state("INBOX") == (10, 5)
        await store.set_mailbox_state("INBOX", 11, 1)
        assert await store.mailbox_state("INBOX") == (11, 1)
