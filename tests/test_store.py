"""The store: durability, exact credits, and the job state machine on disk.

One suite for both backends: every test taking ``store`` or ``backend`` runs against
SQLite and against PostgreSQL (a fresh schema of the local server; see ``tests/pg.py``).
The few tests of SQLite's own machinery (WAL, group commit) use ``sqlite_store``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import asyncpg
import pytest

from bridge.errors import StoreError
from bridge.model import IllegalTransition, JobState, Limits, NewJob, NewReply, Plan, Settlement
from bridge.store import SqliteStore, Store, open_url
from bridge.store.protocol import Handoff
from bridge.store.pg_schema import MIGRATIONS as PG_MIGRATIONS, SCHEMA_VERSION as PG_SCHEMA_VERSION
from bridge.store.pg_schema import migrate as pg_migrate
from bridge.store.schema import MIGRATIONS, SCHEMA_VERSION, connect, migrate
from pg import fresh_schema

S = JobState


def plan(key: str | None, numbers=("+33612121515",), cost: int = 1, login: str = "a", **extra) -> Plan:
    return Plan(
        key=key,
        login=login,
        message_id=None,
        reply_to="alice@example.org",
        summary="a@***|...",
        jobs=tuple(NewJob(number=n, text="hi", sender=None, parts=cost, cost=cost) for n in numbers),
        **extra,
    )


async def _store_before_the_ranks(backend: "Backend", now: float) -> None:
    """The store at the version before ranks (SQLite 6, PostgreSQL 3) with account ``a``'s
    SMS to +33612121515 (a day and a half ago, 2 hours, 60 and 30 seconds ago) and one of
    account ``b``, each with its debit."""
    history = ((now - 90_000, "a"), (now - 7200, "a"), (now - 60, "a"), (now - 30, "a"), (now - 30, "b"))
    if backend.name == "sqlite":
        conn = connect(backend.url.removeprefix("sqlite://"))
        migrate(conn, {version: MIGRATIONS[version] for version in range(1, 7)})
        with conn:
            conn.execute("BEGIN")
            conn.execute("INSERT INTO balances VALUES ('a', 10)")
            message = conn.execute("INSERT INTO messages (summary, outcome, received_at) "
                                   "VALUES ('a@***', 'accepted', 0)").lastrowid
            for at, login in history:
                job = conn.execute("INSERT INTO jobs (message, login, number, text, parts, cost, unicode, low_cost, "
                                   "state, created_at, next_attempt_at, updated_at) VALUES (?, ?, '+33612121515', "
                                   "'hi', 1, 1, 0, 0, 'sent', ?, ?, ?)", (message, login, at, at, at)).lastrowid
                conn.execute("INSERT INTO ledger (login, amount, reason, job, created_at) VALUES (?, -1, 'debit', ?, ?)",
                             (login, job, at))
        conn.close()
        return
    conn = await asyncpg.connect(backend.url)
    try:
        await pg_migrate(conn, {version: PG_MIGRATIONS[version] for version in (1, 2, 3)})
        await conn.execute("INSERT INTO balances VALUES ('a', 10)")
        message = await conn.fetchval("INSERT INTO messages (summary, outcome, received_at) "
                                      "VALUES ('a@***', 'accepted', 0) RETURNING id")
        for at, login in history:
            job = await conn.fetchval(
                "INSERT INTO jobs (message, login, number, text, parts, cost, unicode, low_cost, state, created_at, "
                "next_attempt_at, updated_at) VALUES ($1, $2, '+33612121515', 'hi', 1, 1, false, false, 'sent', $3, "
                "$3, $3) RETURNING id", message, login, at)
            await conn.execute("INSERT INTO ledger (login, amount, reason, job, created_at) "
                               "VALUES ($1, -1, 'debit', $2, $3)", login, job, at)
    finally:
        await conn.close()


@dataclass
class Backend:
    """One backend under test: its store URL, and raw SQL on its database for setting up cases."""

    name: str
    url: str
    sql: Callable[[str], Awaitable[list[Any]]]
    schema_version: int

    async def open(self) -> Store:
        """Open (creating or migrating) the store at ``url``."""
        return await open_url(self.url)


@pytest.fixture(params=["sqlite", "postgresql"])
async def backend(request, tmp_path) -> AsyncIterator[Backend]:
    """The SQLite file or PostgreSQL schema of this test."""
    if request.param == "sqlite":
        path = tmp_path / "s.db"

        async def sqlite_sql(statement: str) -> list[Any]:
            with sqlite3.connect(path) as conn:
                return conn.execute(statement).fetchall()

        yield Backend("sqlite", f"sqlite://{path}", sqlite_sql, SCHEMA_VERSION)
        return
    async with fresh_schema() as url:

        async def pg_sql(statement: str) -> list[Any]:
            conn = await asyncpg.connect(url)
            try:
                return [tuple(r) for r in await conn.fetch(statement)]
            finally:
                await conn.close()

        yield Backend("postgresql", url, pg_sql, PG_SCHEMA_VERSION)


@pytest.fixture
async def store(backend):
    store = await backend.open()
    await store.open_accounts({"a": 10}, now=0)
    yield store
    await store.close()


@pytest.fixture
async def sqlite_store(tmp_path):
    store = await SqliteStore.open(tmp_path / "s.db")
    await store.open_accounts({"a": 10}, now=0)
    yield store
    await store.close()


async def one_job(store, cost: int = 1, owner: str = "me", now: float = 2, lease: float = 60):
    await store.commit(plan(None, cost=cost), 1)
    [job] = await store.claim(owner, now, 10, lease)
    return job


class TestSchema:
    async def test_schema_is_versioned(self, backend, store):
        """A new store records its schema version; reopening keeps the data."""
        await store.commit(plan("k1"), now=1)
        await store.close()
        reopened = await backend.open()
        try:
            assert len(await reopened.jobs()) == 1
            [(version,)] = await backend.sql("SELECT value FROM meta WHERE key='schema'")
            assert int(version) == backend.schema_version
        finally:
            await reopened.close()

    async def test_newer_schema_is_refused(self, backend, store):
        """A store written by a newer bridge is not touched."""
        await store.close()
        await backend.sql("UPDATE meta SET value='99' WHERE key='schema'")
        with pytest.raises(StoreError, match="newer"):
            await backend.open()


class TestSqliteDurability:
    async def test_wal_and_full_sync(self, sqlite_store):
        """The store runs in WAL mode with synchronous=FULL (fsync before acknowledging)."""
        conn = sqlite_store._writer.conn
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL

    async def test_failed_write_does_not_sink_its_group(self, sqlite_store):
        """One write raising inside a group commit leaves the others committed."""
        store = sqlite_store

        def broken(conn):
            conn.execute("INSERT INTO nowhere VALUES (1)")

        results = await asyncio.gather(
            store.commit(plan("k1"), 1), store.write(broken), store.commit(plan("k2"), 1),
            return_exceptions=True,
        )
        assert isinstance(results[1], StoreError)
        assert len(await store.jobs()) == 2

    async def test_a_cancelled_caller_still_commits_and_the_others_get_their_answers(self, sqlite_store):
        """Cancelling a caller while its write is queued or running cancels only its wait:
        the mail is committed all the same, and the writes around it are answered."""
        store = sqlite_store
        started = threading.Event()

        def slow(conn):
            started.set()
            time.sleep(0.2)  # holds the writer: the next writes queue up behind it
            return "slow"

        first = asyncio.ensure_future(store.write(slow))
        await asyncio.to_thread(started.wait, 5)
        cancelled = asyncio.ensure_future(store.commit(plan("k1"), 1))
        after = asyncio.ensure_future(store.commit(plan("k2"), 1))
        await asyncio.sleep(0)
        cancelled.cancel()
        assert await first == "slow"
        assert (await after).outcome == "accepted"
        with pytest.raises(asyncio.CancelledError):
            await cancelled
        assert len(await store.jobs()) == 2
        assert (await store.commit(plan("k1"), 2)).outcome == "duplicate"

    async def test_broken_connection_fails_its_batch_and_the_store_goes_on(self, sqlite_store):
        """A write that breaks the connection (so even ROLLBACK fails): every caller of that
        batch gets an error instead of waiting forever, and the next write succeeds."""
        store = sqlite_store

        def breaks(conn):
            conn.close()

        results = await asyncio.wait_for(
            asyncio.gather(store.write(breaks), store.commit(plan("k1"), 1), return_exceptions=True), 5)
        assert all(isinstance(r, Exception) for r in results)
        assert (await asyncio.wait_for(store.commit(plan("k2"), 2), 5)).outcome == "accepted"
        assert len(await store.jobs()) == 1


class TestCredits:
    async def test_opening_balance_applied_once(self, store):
        """Restarting with the same (or a changed) opening balance does not add it again."""
        await store.open_accounts({"a": 10}, now=1)
        await store.open_accounts({"a": 500}, now=2)
        assert (await store.balances())["a"] == 10

    async def test_racing_mails_cannot_overspend(self, store):
        """Twenty concurrent mails for 1 credit each against 10 credits: exactly 10 pass."""
        results = await asyncio.gather(*(store.commit(plan(f"k{i}"), now=1) for i in range(20)))
        outcomes = [r.outcome for r in results]
        assert outcomes.count("accepted") == 10 and outcomes.count("insufficient_credit") == 10
        assert (await store.balances())["a"] == 0

    async def test_refund_on_failure_once(self, store):
        """A failed job gives its credits back once, and the ledger says why."""
        job = await one_job(store, cost=3)
        await store.start_call("me", [job.id], "p", "r1", 3, 60)
        refused = await store.settle_call("r1", [Settlement(job.id, S.FAILED, "refused")], 4)
        again = await store.settle_call("r1", [Settlement(job.id, S.FAILED, "refused")], 5)
        assert refused == [] and again == [job.id]
        assert (await store.balances())["a"] == 10
        assert [row["reason"] for row in await store.ledger("a")] == ["opening", "debit", "refund"]

    async def test_manual_credit(self, store):
        """`accounts credit` adds a ledger row and returns the new balance."""
        assert await store.credit("a", 5, "manual", now=1) == 15

    async def test_one_mail_debits_every_job_in_one_transaction(self, store):
        """A 3-number mail creates 3 jobs, 3 debit rows and one balance change."""
        result = await store.commit(plan("k", numbers=("+33612121515", "+33612121516", "+33612121517"), cost=2), 1)
        assert len(result.job_ids) == 3 and result.used == 6
        assert (await store.balances())["a"] == 4
        assert [r["job"] for r in await store.ledger("a") if r["reason"] == "debit"] == list(result.job_ids)


class TestIntakeRules:
    async def test_opted_out_numbers_are_not_created_nor_charged(self, store):
        """An opted-out number gets a 125 refusal; the others are sent and charged."""
        await store.optout_add("+33612121516", None, "cli", 0)
        result = await store.commit(plan("k", numbers=("+33612121515", "+33612121516")), 1)
        assert len(result.job_ids) == 1 and [r.code for r in result.refused] == [125]
        assert result.status == 125 and (await store.balances())["a"] == 9

    async def test_per_number_cap_counts_jobs_of_the_same_mail(self, store):
        """With 2 per number per hour, a mail naming one number 3 times gets 2 jobs (127)."""
        numbers = ("+33612121515",) * 3
        result = await store.commit(plan("k", numbers=numbers, limits=Limits(per_number_per_hour=2)), 1)
        assert len(result.job_ids) == 2 and result.refused[0].code == 127


    async def test_per_number_cap_counts_this_hour_of_this_account_and_no_failed_or_cancelled_job(self, store):
        """Cap 2 per hour: a job over an hour old, another account's job, a failed job and a
        cancelled one do not count; two live jobs do, so the next mail to the number gets 127."""
        await store.open_accounts({"b": 10}, now=0)
        limits = Limits(per_number_per_hour=2)
        now = 10_000.0
        assert (await store.commit(plan("old", limits=limits), now - 4000)).job_ids
        assert (await store.commit(plan("other", login="b", limits=limits), now)).job_ids
        failed = (await store.commit(plan("failed", limits=limits), now)).job_ids[0]
        await store.claim("me", now, 10, 60, only=[failed])
        assert await store.settle_claimed("me", [Settlement(failed, JobState.FAILED, "refused")], now) == []
        cancelled = (await store.commit(plan("cancelled", limits=limits), now)).job_ids[0]
        assert await store.cancel(cancelled, now)
        for key in ("live1", "live2"):
            assert (await store.commit(plan(key, limits=limits), now)).job_ids
        third = await store.commit(plan("third", limits=limits), now)
        assert third.job_ids == () and [r.code for r in third.refused] == [127]


    async def test_daily_cap_counts_24_hours_of_this_account_and_no_failed_or_cancelled_job(self, store):
        """max_sms_per_day 2: a job over a day old, another account's job, a failed job and a
        cancelled one do not count; two live jobs do, so the next mail gets 127."""
        await store.open_accounts({"b": 10}, now=0)
        limits = Limits(sms_per_day=2)
        now = 200_000.0
        numbers = iter(f"+3361212{i:04d}" for i in range(100))

        async def send(key: str, at: float = now, login: str = "a"):
            return await store.commit(plan(key, numbers=(next(numbers),), login=login, limits=limits), at)

        assert (await send("old", now - 90_000)).job_ids
        assert (await send("other", login="b")).job_ids
        failed = (await send("failed")).job_ids[0]
        await store.claim("me", now, 10, 60, only=[failed])
        assert await store.settle_claimed("me", [Settlement(failed, JobState.FAILED, "refused")], now) == []
        assert await store.cancel((await send("cancelled")).job_ids[0], now)
        for key in ("live1", "live2"):
            assert (await send(key)).job_ids
        third = await send("third")
        assert third.job_ids == () and [r.code for r in third.refused] == [127]


class TestClaimSeesOptOuts:
    async def test_a_number_opted_out_since_intake_is_flagged_at_claim(self, store):
        """A STOP recorded after the commit is reported with the claimed job (not texted)."""
        await store.commit(plan("k", numbers=("+33612121515", "+33612121516")), 1)
        await store.optout_add("+33612121516", None, "sms", 2)
        jobs = {j.number: j for j in await store.claim("me", 3, 10, 60)}
        assert jobs["+33612121515"].suppressed is None
        assert jobs["+33612121516"].suppressed == "opted out (STOP)"


    async def test_an_opt_out_of_one_sender_holds_back_only_that_senders_jobs(self, store):
        """A STOP to one sender since intake holds back that sender's job (whatever its case),
        not another sender's to the same number; a global STOP holds back every sender's."""
        async def commit(key, number, sender, at):
            jobs = (NewJob(number=number, text="hi", sender=sender, parts=1, cost=1),)
            return (await store.commit(dataclasses.replace(plan(key), jobs=jobs), at)).job_ids[0]

        shop = await commit("k1", "+33612121515", "Shop", 1)
        bank = await commit("k2", "+33612121515", "BANK", 1)
        other = await commit("k3", "+33612121516", "Shop", 1)
        await store.optout_add("+33612121515", "shop", "sms", 2)
        await store.optout_add("+33612121516", "BANK", "sms", 2)
        await store.optout_add("+33612121516", None, "sms", 2)
        jobs = {j.id: j.suppressed for j in await store.claim("me", 3, 10, 60)}
        assert jobs == {shop: "opted out of sender Shop", bank: None, other: "opted out (STOP)"}


    async def test_a_claimed_job_carries_what_was_committed(self, store):
        """Every field of a claimed job, as read from the claim's row (by position), is what
        intake committed; the mail's subject is not read by a claim."""
        extra = dict(message_id="mid@example.org")
        jobs = (NewJob(number="+33612121515", text="the text", sender="SENDER", parts=2, cost=4, unicode=True,
                       low_cost=False, category="marketing"),)
        committed = await store.commit(dataclasses.replace(plan("k"), jobs=jobs, **extra), 5.0)
        (job,) = await store.claim("me", 6.0, 10, 60)
        assert (job.id, job.login, job.number, job.text, job.sender, job.parts, job.cost) == (
            committed.job_ids[0], "a", "+33612121515", "the text", "SENDER", 2, 4)
        assert (job.unicode, job.low_cost, job.attempts, job.created_at, job.next_attempt_at) == (
            True, False, 0, 5.0, 5.0)
        assert (job.provider, job.provider_message_id, job.last_error, job.client_ref, job.called_at) == (
            None, None, None, None, None)
        assert (job.message_id, job.reply_to, job.category, job.suppressed, job.subject) == (
            "mid@example.org", "alice@example.org", "marketing", None, None)


class TestClaimRecordsCalls:
    async def test_the_plan_calls_are_recorded_in_the_claim(self, store):
        """The calls a plan names come back 'calling' with provider and reference, counted as
        an attempt, in the same write; the jobs it leaves out are only claimed."""
        await store.commit(plan("k", numbers=("+33612121515", "+33612121516", "+33612121517")), 1)
        seen: list[int] = []

        def plan_calls(jobs):
            seen.extend(j.id for j in jobs)
            return [([jobs[0].id, jobs[1].id], "p", "m2s-ref-1")]

        jobs = await store.claim("me", 2, 10, 60, plan=plan_calls)
        assert sorted(seen) == sorted(j.id for j in jobs) and len(jobs) == 3
        called = [j for j in jobs if j.state is S.CALLING]
        assert [(j.provider, j.client_ref) for j in called] == [("p", "m2s-ref-1")] * 2
        stored = {j.id: j for j in await store.jobs()}
        assert sorted(j.state.value for j in stored.values()) == ["calling", "calling", "claimed"]
        assert all(stored[j.id].attempts == 1 and stored[j.id].client_ref == "m2s-ref-1" for j in called)
        refused = await store.settle_call("m2s-ref-1", [Settlement(j.id, S.SENT, None, "id") for j in called], 3)
        assert refused == [] and sorted(j.state.value for j in await store.jobs()) == ["claimed", "sent", "sent"]

    async def test_several_calls_of_one_claim_each_keep_their_provider_and_reference(self, store):
        """A claim whose plan names several calls (to two providers) records each job with its
        own call's provider and reference; each call then settles its own jobs only."""
        numbers = tuple(f"+3361212151{i}" for i in range(5))
        ids = (await store.commit(plan("k", numbers=numbers), 1)).job_ids
        calls = [([ids[0], ids[3]], "p", "m2s-a"), ([ids[1]], "q", "m2s-b"), ([ids[4]], "p", "m2s-c")]
        jobs = {j.id: j for j in await store.claim("me", 2, 10, 60, plan=lambda jobs: calls)}
        expected = {ids[0]: ("p", "m2s-a"), ids[3]: ("p", "m2s-a"), ids[1]: ("q", "m2s-b"), ids[4]: ("p", "m2s-c")}
        assert {i: (j.provider, j.client_ref) for i, j in jobs.items() if j.state is S.CALLING} == expected
        stored = {j.id: j for j in await store.jobs()}
        assert ids[2] in jobs and stored[ids[2]].state is S.CLAIMED
        assert {i: (stored[i].provider, stored[i].client_ref, stored[i].attempts) for i in expected} == {
            i: (*call, 1) for i, call in expected.items()}
        # a settle names its call: the jobs of another call are refused, not moved
        assert await store.settle_call("m2s-b", [Settlement(ids[1], S.SENT, None, "x"),
                                                  Settlement(ids[4], S.SENT, None, "y")], 3) == [ids[4]]
        assert (await store.job(ids[1])).state is S.SENT and (await store.job(ids[4])).state is S.CALLING

    async def test_a_claim_of_more_calls_than_one_statement_takes(self, store):
        """600 one-job calls in one claim (over the 500 rows a statement carries), then their
        600 answers at once: every job is called and then sent under its own reference."""
        numbers = tuple(f"+33612{i:06d}" for i in range(600))
        jobs = tuple(NewJob(number=n, text="hi", sender=None, parts=1, cost=1) for n in numbers)
        await store.credit("a", 1000, "manual", 0)
        ids = (await store.commit(dataclasses.replace(plan("k"), jobs=jobs), 1)).job_ids
        assert len(ids) == 600
        claimed = await store.claim("me", 2, 1000, 60, plan=lambda jobs: [([j.id], "p", f"m2s-{j.id}-1") for j in jobs])
        assert sorted((j.id, j.client_ref) for j in claimed if j.state is S.CALLING) == [(i, f"m2s-{i}-1") for i in ids]
        answers = await asyncio.gather(*(
            store.settle_call(f"m2s-{i}-1", [Settlement(i, S.SENT, provider_message_id=f"P{i}")], 3) for i in ids))
        assert answers == [[]] * 600
        stored = await store.jobs(limit=1000)
        assert sorted((j.id, j.state, j.provider_message_id) for j in stored) == [(i, S.SENT, f"P{i}") for i in ids]

    async def test_a_call_recorded_in_the_claim_holds_the_claims_lease(self, store):
        """The jobs a claim calls and the ones it only claims carry the owner and the lease's
        end: a sweep when the lease ends, or when the owner is dead, marks the first unknown
        and puts the others back."""
        numbers = ("+33612121515", "+33612121516", "+33612121517")
        for key, at, dead in (("k1", 2, ()), ("k2", 100, ("me",))):
            ids = (await store.commit(plan(key, numbers=numbers), at - 1)).job_ids
            jobs = await store.claim("me", at, 10, 60, ids, plan=lambda jobs, ids=ids: [([ids[0], ids[2]], "p", key)])
            assert sorted(j.id for j in jobs) == sorted(ids)
            assert await store.lease_owners() == ["me"]
            assert await store.sweep(at + 59, ["other"]) == ([], [])
            assert await store.sweep(at + 1 if dead else at + 61, dead) == ([ids[1]], [ids[0], ids[2]])
            stored = {j.id: j for j in await store.jobs()}
            assert [(stored[i].state, stored[i].attempts, stored[i].called_at) for i in ids] == [
                (S.UNKNOWN, 1, at), (S.QUEUED, 0, None), (S.UNKNOWN, 1, at)]


class TestCommitHandsOff:
    async def test_the_handoff_records_the_calls_of_the_new_due_jobs(self, store):
        """The handoff's plan sees the mail's due jobs as a claim would (ids, text, the mail's
        Message-ID and Reply-To); the calls it names are 'calling' in the same commit, leased
        to its owner, counted as an attempt; a job it leaves out, and one due later
        (``date=``), stay queued."""
        numbers = ("+33612121515", "+33612121516", "+33612121517")
        jobs = tuple(NewJob(number=n, text="hi", sender=None, parts=1, cost=1) for n in numbers) + (
            NewJob(number="+33612121518", text="hi", sender=None, parts=1, cost=1, send_at=500),)
        seen = []

        def plan_calls(due):
            seen.extend(due)
            return [([due[0].id, due[1].id], "p", "m2s-ref-1")]

        mail = dataclasses.replace(plan("k"), jobs=jobs, message_id="<m@t>")
        done = await store.commit(mail, 10, Handoff("me", 60, plan_calls))
        ids = done.job_ids
        assert [(j.id, j.number, j.text, j.state, j.message_id, j.reply_to) for j in seen] == [
            (i, n, "hi", S.QUEUED, "<m@t>", "alice@example.org") for i, n in zip(ids, numbers)]
        assert [(j.id, j.state, j.provider, j.client_ref) for j in done.calling] == [
            (i, S.CALLING, "p", "m2s-ref-1") for i in ids[:2]]
        stored = {j.id: j for j in await store.jobs()}
        assert [(stored[i].state, stored[i].attempts, stored[i].called_at, stored[i].client_ref) for i in ids] == [
            (S.CALLING, 1, 10, "m2s-ref-1"), (S.CALLING, 1, 10, "m2s-ref-1"),
            (S.QUEUED, 0, None, None), (S.QUEUED, 0, None, None)]
        assert await store.lease_owners() == ["me"]
        assert await store.sweep(69, ["other"]) == ([], [])
        assert await store.sweep(71) == ([], list(ids[:2]))  # the lease ended during the call: unknown
        assert (await store.settle_call("m2s-ref-1", [Settlement(i, S.SENT, None, "x") for i in ids[:2]], 72)) == []
        assert [j.state for j in await store.jobs()] == [S.QUEUED, S.QUEUED, S.SENT, S.SENT]

    async def test_no_handoff_for_a_mail_that_is_not_accepted(self, store):
        """A plan that names no call leaves the jobs queued; a duplicate, or a mail refused for
        want of credit, offers the plan nothing."""
        offered = []

        def plan_calls(due):
            offered.append([j.id for j in due])
            return []

        first = await store.commit(plan("k"), 1, Handoff("me", 60, plan_calls))
        assert (first.outcome, first.calling, offered) == ("accepted", (), [list(first.job_ids)])
        assert [j.state for j in await store.jobs()] == [S.QUEUED]
        assert (await store.commit(plan("k"), 2, Handoff("me", 60, plan_calls))).outcome == "duplicate"
        poor = await store.commit(plan("k2", cost=10**9), 3, Handoff("me", 60, plan_calls))
        assert (poor.outcome, poor.calling, len(offered)) == ("insufficient_credit", (), 1)


class TestJobs:
    async def test_duplicate_key_is_dropped(self, store):
        """The same idempotency key commits only once, even within one group commit."""
        first, second = await asyncio.gather(store.commit(plan("same"), 1), store.commit(plan("same"), 1))
        assert sorted([first.outcome, second.outcome]) == ["accepted", "duplicate"]
        assert len(await store.jobs()) == 1

    async def test_each_mail_gets_the_ids_of_its_own_jobs(self, store):
        """Mails committed together (one group commit) each get their own jobs' ids, in the
        order of their numbers, and the ledger debits each of those jobs once."""
        numbers = [tuple(f"+336121215{m}{n}" for n in range(count)) for m, count in enumerate((1, 3, 2))]
        results = await asyncio.gather(*(store.commit(plan(f"k{m}", numbers=nums), 1) for m, nums in enumerate(numbers)))
        stored = {j.id: j.number for j in await store.jobs()}
        assert [[stored[i] for i in r.job_ids] for r in results] == [list(nums) for nums in numbers]
        assert len(stored) == 6 and (await store.balances())["a"] == 10 - 6

    async def test_no_key_is_never_deduplicated(self, store):
        """Mails without an idempotency key are all accepted."""
        for _ in range(3):
            assert (await store.commit(plan(None), 1)).outcome == "accepted"

    async def test_claim_is_exclusive(self, store):
        """A job is claimed by one owner only, and moves to claimed under a lease."""
        await store.commit(plan("k"), 1)
        claims = await asyncio.gather(store.claim("x", 2, 10, 60), store.claim("y", 2, 10, 60))
        assert sorted(len(c) for c in claims) == [0, 1]
        assert (await store.jobs())[0].state is S.CLAIMED

    async def test_future_jobs_wait(self, store):
        """A job with a send date is not claimed before it."""
        scheduled = Plan(key="k", login="a", message_id=None, reply_to=None, summary="",
                         jobs=(NewJob("+33612121515", "hi", None, 1, 1, send_at=100.0),))
        await store.commit(scheduled, 1)
        assert await store.claim("me", 99, 10, 60) == []
        assert len(await store.claim("me", 100, 10, 60)) == 1

    async def test_operator_requeue_of_failed_job_debits_again(self, store):
        """`queue retry` on a failed job re-debits the refund and queues it."""
        job = await one_job(store, cost=2)
        await store.settle_claimed("me", [Settlement(job.id, S.FAILED, "x")], 3)
        assert await store.requeue(job.id, 4)
        assert (await store.balances())["a"] == 8
        assert (await store.job(job.id)).state is S.QUEUED
        assert not await store.requeue(job.id, 5)  # queued: nothing to do

    async def test_operator_cancel_refunds_a_queued_job_only(self, store):
        """`queue cancel` refunds a queued job; a claimed one cannot be cancelled."""
        result = await store.commit(plan("k", numbers=("+33612121515", "+33612121516"), cost=2), 1)
        assert await store.cancel(result.job_ids[0], 2)
        assert (await store.job(result.job_ids[0])).state is S.CANCELLED
        assert (await store.balances())["a"] == 8
        await store.claim("me", 3, 10, 60)
        assert not await store.cancel(result.job_ids[1], 4)


class TestPrune:
    async def test_prune_deletes_finished_rows_and_keeps_the_ledger(self, store):
        """Old finished jobs, sent replies and their mails go; queued jobs and the ledger stay."""
        done = await one_job(store)
        await store.settle_claimed("me", [Settlement(done.id, S.FAILED, "x")], 3)
        waiting = await store.commit(plan("k2"), 4)
        await store.queue_reply(NewReply("b@example.org", 109, b"x"), now=1)
        [reply] = await store.claim_replies(2, 10)
        await store.finish_reply(reply.id, "sent", None, 2, 2)
        assert await store.prune(before=10) == {"jobs": 1, "replies": 1, "messages": 1, "events": 0}
        assert [j.id for j in await store.jobs()] == list(waiting.job_ids)
        assert len(await store.ledger("a")) == 4  # opening, debit, refund, debit


    async def test_a_job_id_is_never_given_twice_even_after_every_job_was_pruned(self, store):
        """Once every job is pruned, the next mail's jobs still get new ids: an id is a job's
        client reference (``m2s-<id>-<attempt>``) at the providers and its key in the kept
        ledger, so giving it again would tie the new SMS to the old one's answer."""
        old = [await one_job(store) for _ in range(3)]
        await store.settle_claimed("me", [Settlement(j.id, S.FAILED, "x") for j in old], 3)
        assert (await store.prune(before=10))["jobs"] == 3 and await store.jobs() == []
        new = await store.commit(plan("k-new", numbers=("+33612121515", "+33612121516")), 20)
        assert min(new.job_ids) > max(j.id for j in old)
        ledger_jobs = [row["job"] for row in await store.ledger("a") if row["job"] is not None]
        assert len(ledger_jobs) == len(set(ledger_jobs)) + 3  # each old job: its debit and its refund

class TestStateMachine:
    async def test_record_before_call(self, store):
        """start_call writes the provider and the reference before the request leaves."""
        job = await one_job(store)
        assert await store.start_call("me", [job.id], "partner", "m2s-1-1", 3, 60) == [job.id]
        stored = await store.job(job.id)
        assert (stored.state, stored.provider, stored.client_ref, stored.attempts) == (S.CALLING, "partner", "m2s-1-1", 1)

    async def test_call_on_a_job_another_owner_holds_is_refused(self, store):
        """A job claimed by another owner cannot be called by this one."""
        job = await one_job(store, owner="other")
        assert await store.start_call("me", [job.id], "partner", "r", 3, 60) == []
        assert (await store.job(job.id)).state is S.CLAIMED

    async def test_a_bulk_call_settles_in_one_write(self, store):
        """Three jobs of one call: one sent, one rejected (refunded), one to the next provider."""
        result = await store.commit(plan("k", numbers=("+33612121515", "+33612121516", "+33612121517")), 1)
        a, b, c = result.job_ids
        await store.claim("me", 2, 10, 60)
        await store.start_call("me", result.job_ids, "p", "r", 3, 60)
        refused = await store.settle_call("r", [
            Settlement(a, S.SENT, provider_message_id="M1"),
            Settlement(b, S.FAILED, "invalid number"),
            Settlement(c, S.CLAIMED, "p: 503"),
        ], 4, 60)
        assert refused == []
        states = {j.id: j.state for j in await store.jobs()}
        assert states == {a: S.SENT, b: S.FAILED, c: S.CLAIMED}
        assert (await store.job(a)).provider_message_id == "M1"
        assert (await store.balances())["a"] == 8

    async def test_each_job_of_a_bulk_call_keeps_its_own_outcome(self, store):
        """A bulk call's jobs sharing the call's one id, jobs with ids and errors of their own,
        and a job of another call in the same settle: each ends with its own columns."""
        numbers = tuple(f"+3361212150{k}" for k in range(7))
        ids = (await store.commit(plan("k", numbers=numbers), 1)).job_ids
        await store.claim("me", 2, 10, 60)
        await store.start_call("me", ids[:6], "p", "r", 3, 60)
        await store.start_call("me", ids[6:], "p", "other", 3, 60)
        assert await store.settle_call("r", [Settlement(i, S.SENT, provider_message_id="CALL") for i in ids[:2]],
                                       4, 60) == []
        refused = await store.settle_call("r", [
            Settlement(ids[2], S.SENT, provider_message_id="M2"),
            Settlement(ids[3], S.SENT, provider_message_id="M3"),
            Settlement(ids[4], S.FAILED, "invalid number"),
            Settlement(ids[5], S.FAILED, "blacklisted"),
            Settlement(ids[6], S.SENT, provider_message_id="M6"),   # called as "other": refused
        ], 5, 60)
        assert refused == [ids[6]]
        got = {i: await store.job(i) for i in ids}
        assert [(got[i].state, got[i].provider_message_id, got[i].last_error) for i in ids] == [
            (S.SENT, "CALL", None), (S.SENT, "CALL", None), (S.SENT, "M2", None), (S.SENT, "M3", None),
            (S.FAILED, None, "invalid number"), (S.FAILED, None, "blacklisted"), (S.CALLING, None, None)]
        assert await store.lease_owners() == ["me"]   # the refused job's lease only

    async def test_a_job_that_may_be_out_never_goes_back_to_the_queue(self, store):
        """Settling a calling or unknown job as queued from the wrong state is refused by the CAS."""
        job = await one_job(store)
        await store.start_call("me", [job.id], "p", "r", 3, 60)
        await store.settle_call("r", [Settlement(job.id, S.UNKNOWN, "timeout")], 4)
        assert await store.settle_call("r", [Settlement(job.id, S.QUEUED, "retry")], 5) == [job.id]
        assert await store.settle_claimed("me", [Settlement(job.id, S.QUEUED, "back")], 5) == [job.id]
        assert (await store.job(job.id)).state is S.UNKNOWN

    async def test_illegal_transition_raises_and_changes_nothing(self, store):
        """A transition the table does not have (claimed -> sent) raises, never applied."""
        job = await one_job(store)
        with pytest.raises(IllegalTransition):
            await store.settle_claimed("me", [Settlement(job.id, S.SENT)], 3)
        assert (await store.job(job.id)).state is S.CLAIMED

    async def test_late_receipt_settles_an_unknown_job_by_its_reference(self, store):
        """A receipt that arrives after the sweep marked the job unknown still settles it."""
        job = await one_job(store, lease=1)
        await store.start_call("me", [job.id], "p", "r1", 3, 1)
        assert await store.sweep(10) == ([], [job.id])
        assert await store.settle_call("r1", [Settlement(job.id, S.SENT, provider_message_id="M")], 11) == []
        assert (await store.job(job.id)).state is S.SENT

    async def test_an_old_reference_settles_nothing(self, store):
        """The outcome of an earlier call (another reference) does not touch the job."""
        job = await one_job(store)
        await store.start_call("me", [job.id], "p", "new", 3, 60)
        assert await store.settle_call("old", [Settlement(job.id, S.SENT)], 4) == [job.id]
        assert (await store.job(job.id)).state is S.CALLING


class TestConcurrentSettles:
    """Calls settled at once (a claim starts its calls together): each keeps its own answer."""

    async def calls(self, store, count: int) -> list[tuple[int, str]]:
        """``count`` one-job calls in flight, as (job id, reference)."""
        numbers = tuple(f"+3361212150{i}" for i in range(count))
        ids = (await store.commit(plan("k", numbers=numbers), 1)).job_ids
        await store.claim("me", 2, 10, 60, plan=lambda jobs: [([i], "p", f"m2s-{i}-1") for i in ids])
        return [(i, f"m2s-{i}-1") for i in ids]

    async def test_each_call_gets_its_own_refused_ids(self, store):
        """Four sent answers at once, one naming a reference that is not its job's: that job
        is refused to that call alone and stays calling; the others are sent with their ids."""
        (a, ra), (b, rb), (c, rc), (d, _) = await self.calls(store, 4)
        answers = await asyncio.gather(
            store.settle_call(ra, [Settlement(a, S.SENT, provider_message_id="A")], 3),
            store.settle_call(rb, [Settlement(b, S.SENT, provider_message_id="B")], 3),
            store.settle_call(ra, [Settlement(d, S.SENT, provider_message_id="D")], 3),  # not d's call
            store.settle_call(rc, [Settlement(c, S.SENT)], 3),
        )
        assert answers == [[], [], [d], []]
        jobs = {j.id: j for j in await store.jobs()}
        assert {i: (jobs[i].state, jobs[i].provider_message_id) for i in (a, b, c, d)} == {
            a: (S.SENT, "A"), b: (S.SENT, "B"), c: (S.SENT, None), d: (S.CALLING, None)}

    async def test_a_sent_answer_beside_a_failure_each_write_their_own(self, store):
        """A plain sent beside a refusal in the same turn: the refusal is refunded and its status
        mail queued; the sent job is not."""
        (a, ra), (b, rb) = await self.calls(store, 2)
        reply = NewReply(to="alice@example.org", code=105, message=b"refused")
        answers = await asyncio.gather(
            store.settle_call(ra, [Settlement(a, S.SENT, provider_message_id="A")], 3),
            store.settle_call(rb, [Settlement(b, S.FAILED, "invalid number", reply=reply)], 3))
        assert answers == [[], []]
        assert {j.id: j.state for j in await store.jobs()} == {a: S.SENT, b: S.FAILED}
        assert (await store.balances())["a"] == 10 - 1
        assert await store.count_replies("queued") == 1

    async def test_the_same_answer_twice_at_once_is_written_once(self, store):
        """One call's answer given twice in the same turn (a retried callback): the first
        settles the job, the second is refused, as if they had come one after the other."""
        ((a, ra),) = await self.calls(store, 1)
        answers = await asyncio.gather(
            store.settle_call(ra, [Settlement(a, S.SENT, provider_message_id="A")], 3),
            store.settle_call(ra, [Settlement(a, S.SENT, provider_message_id="A2")], 3))
        assert answers == [[], [a]]
        assert ((await store.job(a)).state, (await store.job(a)).provider_message_id) == (S.SENT, "A")

    async def test_a_cancelled_caller_still_has_its_answer_written(self, store):
        """The caller gave up waiting (shutdown): the outcome it handed over is committed."""
        ((a, ra),) = await self.calls(store, 1)
        task = asyncio.create_task(store.settle_call(ra, [Settlement(a, S.SENT, provider_message_id="A")], 3))
        await asyncio.sleep(0)  # the answer is handed over
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        for _ in range(200):
            if (await store.job(a)).state is S.SENT:
                break
            await asyncio.sleep(0.01)
        assert (await store.job(a)).state is S.SENT

    async def test_answers_handed_over_before_close_are_on_disk(self, tmp_path):
        """Closing the store in the same turn as the answers: they are committed first, and a
        store opened again on the file has every job sent, each at its own call's time."""
        store = await SqliteStore.open(tmp_path / "s.db")
        await store.open_accounts({"a": 10}, now=0)
        calls = await self.calls(store, 3)
        waits = [asyncio.ensure_future(store.settle_call(ref, [Settlement(i, S.SENT, provider_message_id=ref)], 3 + n))
                 for n, (i, ref) in enumerate(calls)]
        await asyncio.sleep(0)
        await store.close()
        assert await asyncio.gather(*waits) == [[], [], []]
        with contextlib.closing(sqlite3.connect(tmp_path / "s.db")) as conn:
            rows = conn.execute("SELECT id, state, provider_message_id, updated_at FROM jobs ORDER BY id").fetchall()
        assert rows == [(i, "sent", ref, 3.0 + n) for n, (i, ref) in enumerate(calls)]
        with pytest.raises(StoreError):
            await store.settle_call("x", [Settlement(1, S.SENT)], 9)


class TestLeases:
    async def test_sweep_requeues_expired_claims_and_marks_expired_calls_unknown(self, store):
        """Expired: claimed -> queued (never called), calling -> unknown (may be out)."""
        result = await store.commit(plan("k", numbers=("+33612121515", "+33612121516")), 1)
        first, second = result.job_ids
        await store.claim("me", 2, 10, 5)
        await store.start_call("me", [second], "p", "r", 3, 5)
        assert await store.sweep(now=4) == ([], [])       # not expired yet
        assert await store.sweep(now=9) == ([first], [second])
        assert (await store.job(first)).state is S.QUEUED
        unknown = await store.job(second)
        assert unknown.state is S.UNKNOWN and "may have been sent" in unknown.last_error

    async def test_a_dead_owner_loses_its_leases_at_once(self, store):
        """The sweep frees the leases of an owner known to be dead before they expire."""
        job = await one_job(store, owner="host:1:dead", lease=3600)
        assert await store.lease_owners() == ["host:1:dead"]
        assert await store.sweep(3, dead_owners=["host:1:dead"]) == ([job.id], [])
        assert len(await store.claim("me", 4, 10, 60)) == 1

    async def test_unknown_jobs_to_reconcile_wait_for_reconcile_after(self, store):
        """unknown_jobs lists a job only once its call is old enough."""
        job = await one_job(store)
        await store.start_call("me", [job.id], "p", "r", 100, 60)
        await store.settle_call("r", [Settlement(job.id, S.UNKNOWN, "timeout")], 101)
        assert await store.unknown_jobs(called_before=100, limit=10) == []
        assert [j.id for j in await store.unknown_jobs(called_before=131, limit=10)] == [job.id]


class TestReplies:
    async def test_reply_lifecycle(self, store):
        """Queued replies are claimed when due, retried later, then marked sent."""
        await store.queue_reply(NewReply("Bob@Example.org", 105, b"x"), now=1)
        [reply] = await store.claim_replies(now=1, limit=10)
        await store.finish_reply(reply.id, "queued", "relay down", when=50, now=2)
        assert await store.claim_replies(now=10, limit=10) == []
        assert len(await store.claim_replies(now=50, limit=10)) == 1
        await store.finish_reply(reply.id, "sent", None, 51, 51)
        [row] = await store.replies()
        assert (row["to_addr"], row["state"]) == ("bob@example.org", "sent")

    async def test_hourly_cap_per_address(self, store):
        """Past max_per_hour replies to one address in an hour, more are dropped."""
        ids = [await store.queue_reply(NewReply("b@example.org", 109, b"x", max_per_hour=2), now=i) for i in range(3)]
        assert ids[2] is None and len(await store.replies()) == 2


class TestReplyRetry:
    async def test_only_a_failed_reply_can_be_retried(self, store):
        """`replies retry` queues a failed status mail again; a sent one stays sent."""
        first = await store.queue_reply(NewReply("a@example.org", 109, b"x"), now=1)
        second = await store.queue_reply(NewReply("b@example.org", 109, b"x"), now=1)
        await store.finish_reply(first, "failed", "550 no such user", 2, 2)
        await store.finish_reply(second, "sent", None, 2, 2)
        assert await store.retry_reply(first, 3) and not await store.retry_reply(second, 3)
        assert [r.id for r in await store.claim_replies(3, 10)] == [first]


class TestBackscatterCaps:
    async def test_plus_tags_share_one_mailbox_cap(self, store):
        """300 replies to target+N@victim.org: the mailbox cap (20/hour) holds for all of them."""
        for i in range(300):
            await store.queue_reply(NewReply(f"target+{i}@Victim.org", 109, b"x", max_per_hour=20), now=i)
        assert len(await store.replies()) == 20

    async def test_one_domain_has_its_own_cap(self, store):
        """Replies to many mailboxes of one domain stop at the domain cap; others still go."""
        for i in range(100):
            await store.queue_reply(NewReply(f"user{i}@victim.org", 109, b"x", max_per_hour=20,
                                             max_per_domain_per_hour=60), now=1)
        await store.queue_reply(NewReply("ops@elsewhere.org", 109, b"x", max_per_hour=20,
                                         max_per_domain_per_hour=60), now=1)
        addresses = [r["to_addr"] for r in await store.replies()]
        assert len(addresses) == 61 and addresses[-1] == "ops@elsewhere.org"

    async def test_a_global_cap_holds_for_every_address(self, store):
        """Past the hourly total, no status mail is queued, whoever it is for."""
        for i in range(10):
            await store.queue_reply(NewReply(f"u@d{i}.org", 109, b"x", max_total_per_hour=4), now=1)
        assert len(await store.replies()) == 4

    async def test_the_cap_is_per_hour(self, store):
        """An hour later the mailbox may get replies again."""
        for now in (0, 1, 2):
            await store.queue_reply(NewReply("b@example.org", 109, b"x", max_per_hour=2), now=now)
        assert len(await store.replies()) == 2
        await store.queue_reply(NewReply("b@example.org", 109, b"x", max_per_hour=2), now=3601)
        assert len(await store.replies()) == 3


class TestMigrationAndKeys:
    async def test_v2_store_is_migrated(self, tmp_path):
        """(SQLite) A version-2 store: dedup keys kept, 'sending' jobs become unknown, keys hidden."""
        path = tmp_path / "old.db"
        with sqlite3.connect(path) as conn:
            for version in (1, 2):
                for statement in MIGRATIONS[version].split(";\n"):
                    if statement.strip():
                        conn.execute(statement)
            conn.execute("INSERT INTO meta VALUES ('schema', '2')")
            conn.execute("INSERT INTO messages (key, summary, outcome, received_at) "
                         "VALUES ('old', 'arthur@s3cr3t-key 0612121515', 'rejected', 0)")
            conn.execute("INSERT INTO message_keys VALUES ('old', 1)")
            conn.execute("INSERT INTO jobs (message, login, number, text, parts, cost, unicode, low_cost, state, "
                         "created_at, next_attempt_at, updated_at) VALUES (1, 'a', '+33612121515', 'hi', 1, 1, 0, 0, "
                         "'sending', 0, 0, 0)")
        migrated = await SqliteStore.open(path)
        try:
            assert (await migrated.commit(plan("old"), 1)).outcome == "duplicate"
            assert (await migrated.job(1)).state is S.UNKNOWN
            summary = sqlite3.connect(path).execute("SELECT summary FROM messages").fetchone()[0]
            assert "s3cr3t" not in summary and summary.startswith("arthur@***")
        finally:
            await migrated.close()

    async def test_v7_store_keeps_its_mails_keys_and_jobs_without_the_random_indexes(self, tmp_path):
        """(SQLite) Schema 8 rebuilds ``messages`` without the unique index on its key and
        ``message_keys`` as its key index alone: every mail, key and job is kept, a mail seen
        before the upgrade is still a duplicate, jobs still find their mail, and foreign
        keys are enforced again afterwards."""
        path = tmp_path / "v7.db"
        conn = connect(path)
        migrate(conn, {v: MIGRATIONS[v] for v in range(1, 8)})
        assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1  # on again after migrate()
        conn.execute("INSERT INTO messages (key, login, summary, outcome, received_at) "
                     "VALUES ('before', 'a', 'a@***|...', 'accepted', 0)")
        conn.executemany("INSERT INTO message_keys VALUES (?, 1)", [("before",), ("imap:INBOX:1:9",)])
        conn.execute("INSERT INTO jobs (message, login, number, text, parts, cost, unicode, low_cost, state, "
                     "created_at, next_attempt_at, updated_at, nseq, lseq) VALUES (1, 'a', '+33612121515', 'hi', "
                     "1, 1, 0, 0, 'queued', 0, 0, 0, 1, 1)")
        conn.close()
        migrated = await SqliteStore.open(path)
        try:
            assert (await migrated.commit(plan("before"), 1)).outcome == "duplicate"
            assert (await migrated.commit(plan(None, extra_keys=("imap:INBOX:1:9",)), 1)).outcome == "duplicate"
            assert (await migrated.job(1)).text == "hi"
            await migrated.open_accounts({"a": 10}, 2)
            accepted = await migrated.commit(plan("after"), 2)
            assert accepted.outcome == "accepted" and (await migrated.commit(plan("after"), 3)).outcome == "duplicate"
        finally:
            await migrated.close()
        check = connect(path)
        try:
            assert [tuple(r) for r in check.execute("SELECT key, login FROM messages ORDER BY id")] == [
                ("before", "a"), ("after", "a")]
            assert check.execute("SELECT COUNT(*) FROM jobs j JOIN messages m ON m.id=j.message").fetchone()[0] == 2
            assert [r[1] for r in check.execute("PRAGMA index_list(messages)")] == []
            assert "WITHOUT ROWID" in check.execute(
                "SELECT sql FROM sqlite_master WHERE name='message_keys'").fetchone()[0]
            with pytest.raises(sqlite3.IntegrityError):  # the rebuilt table still refers to its mail
                check.execute("INSERT INTO message_keys VALUES ('orphan', 999)")
        finally:
            check.close()

    async def test_jobs_and_debits_from_before_the_upgrade_count_against_the_caps(self, backend):
        """SQLite's schema 7 and PostgreSQL's 4 rank the jobs already there and total the
        spend already in the ledger, so what a number or an account had before the upgrade
        still counts against the hourly and daily caps."""
        now = 100_000.0
        await _store_before_the_ranks(backend, now)
        migrated = await backend.open()
        try:
            capped = await migrated.commit(plan("k1", limits=Limits(per_number_per_hour=2)), now)
            assert capped.job_ids == () and [r.code for r in capped.refused] == [127]
            assert len((await migrated.commit(plan("k2", limits=Limits(per_number_per_hour=3)), now)).job_ids) == 1
            capped = await migrated.commit(plan("k3", limits=Limits(per_number_per_hour=3)), now)
            assert capped.job_ids == () and [r.code for r in capped.refused] == [127]
            # the day: 3 SMS and 3 credits from before the upgrade (one is older), 1 since
            for limits in (Limits(sms_per_day=4), Limits(spend_per_day=4)):
                capped = await migrated.commit(plan(f"day{limits}", numbers=("+33612121599",), limits=limits), now)
                assert capped.job_ids == () and [r.code for r in capped.refused] == [127]
            assert (await migrated.commit(plan("k4", numbers=("+33612121599",), limits=Limits(sms_per_day=5)),
                                          now)).job_ids
        finally:
            await migrated.close()

    async def test_any_key_makes_a_duplicate(self, store):
        """A mail is a duplicate when any of its keys (content or IMAP UID) was seen."""
        assert (await store.commit(plan("content", extra_keys=("imap:INBOX:1:7",)), 1)).outcome == "accepted"
        assert (await store.commit(plan(None, extra_keys=("imap:INBOX:1:7",)), 2)).outcome == "duplicate"

    async def test_mailbox_state(self, store):
        """The last UID only grows within one UIDVALIDITY and resets with a new one."""
        await store.set_mailbox_state("INBOX", 10, 5)
        await store.set_mailbox_state("INBOX", 10, 3)
        assert await store.mailbox_state("INBOX") == (10, 5)
        await store.set_mailbox_state("INBOX", 11, 1)
        assert await store.mailbox_state("INBOX") == (11, 1)


class TestInstances:
    async def test_a_lone_instance_gets_its_mailbox(self, store):
        """One bridge asking for a mailbox gets it, and can ask again once it let go."""
        async with store.mailbox_lock("work:INBOX") as lock:
            assert lock
        async with store.mailbox_lock("work:INBOX") as lock:
            assert lock and not lock.lost.is_set()

    async def test_listen_ends_when_asked(self, store):
        """The wake-up listener runs until the bridge stops, then returns."""
        stop = asyncio.Event()
        listener = asyncio.create_task(store.listen(lambda: None, stop))
        await asyncio.sleep(0.1)
        assert not listener.done()
        stop.set()
        await asyncio.wait_for(listener, 15)


async def sent_job(store, ref: str = "m2s-1-1", message_id: str = "pm-1"):
    """One job sent through provider ``p`` with the provider's id ``message_id``."""
    job = await one_job(store)
    await store.start_call("me", [job.id], "p", ref, 3, 60)
    assert await store.settle_call(ref, [Settlement(job.id, S.SENT, provider_message_id=message_id)], 4) == []
    return job


class TestWebhooks:
    """Delivery reports and inbound SMS: one transaction each, idempotent (both backends)."""

    async def test_a_report_moves_the_job_notes_it_and_queues_its_mail(self, store):
        job = await sent_job(store)
        reply = NewReply(to="alice@example.org", code=128, message=b"Subject: x\r\n\r\nundelivered\r\n")
        assert await store.report_delivery(job.id, S.UNDELIVERED, "p: undelivered (EXPIRED)", None,
                                           "undelivered: EXPIRED", reply, 5)
        found = await store.job(job.id)
        assert (found.state, found.last_error, found.provider_message_id) == (
            S.UNDELIVERED, "p: undelivered (EXPIRED)", "pm-1")
        assert [(r["code"], r["to_addr"]) for r in await store.replies()] == [(128, "alice@example.org")]
        history = await store.job_history(job.id)
        assert [(e["kind"], e["detail"]) for e in history["events"]] == [("report", "undelivered: EXPIRED")]

    async def test_a_second_or_contrary_report_changes_nothing(self, store):
        job = await sent_job(store)
        assert await store.report_delivery(job.id, S.DELIVERED, None, None, "delivered", None, 5)
        reply = NewReply(to="alice@example.org", code=128, message=b"Subject: x\r\n\r\nx\r\n")
        assert not await store.report_delivery(job.id, S.UNDELIVERED, "late", None, "undelivered", reply, 6)
        assert not await store.report_delivery(job.id, S.DELIVERED, None, None, "delivered", None, 7)
        assert (await store.job(job.id)).state is S.DELIVERED
        assert await store.replies() == []
        assert len((await store.job_history(job.id))["events"]) == 1

    async def test_a_report_before_the_answer_wins_over_the_later_sent(self, store):
        """A report while the call is still ``calling``: applied; the dispatcher's ``sent`` is refused."""
        job = await one_job(store)
        await store.start_call("me", [job.id], "p", "r1", 3, 60)
        assert await store.report_delivery(job.id, S.DELIVERED, None, "pm-9", "delivered", None, 4)
        assert await store.settle_call("r1", [Settlement(job.id, S.SENT, provider_message_id="pm-9")], 5) == [job.id]
        assert (await store.job(job.id)).state is S.DELIVERED

    async def test_a_queued_job_takes_no_report(self, store):
        await store.commit(plan(None), 1)
        [job] = await store.jobs()
        assert not await store.report_delivery(job.id, S.DELIVERED, None, None, "delivered", None, 2)
        assert (await store.job(job.id)).state is S.QUEUED

    async def test_inbound_stop_then_start_and_its_duplicate(self, store):
        job = await sent_job(store)
        number = job.number
        assert await store.record_inbound("inbound:p:1", job.id, number, "STOP", "add", None, 5)
        assert [(o["number"], o["source"]) for o in await store.optouts()] == [(number, "sms")]
        # the provider delivers the same webhook again: dropped, nothing changes
        assert not await store.record_inbound("inbound:p:1", job.id, number, "STOP", "add", None, 6)
        await store.optout_add(number, "ACME", "admin", 6)
        assert await store.record_inbound("inbound:p:2", job.id, number, "START", "remove", None, 7)
        assert await store.optouts() == []
        assert [e["detail"] for e in (await store.job_history(job.id))["events"]] == ["STOP", "START"]

    async def test_origin_is_the_named_sms_else_the_newest_to_that_number(self, store):
        first = await sent_job(store, "r1", "pm-1")
        second = await sent_job(store, "r2", "pm-2")
        assert (await store.find_origin("p", first.number, "pm-1", 0)).id == first.id
        assert (await store.find_origin("p", first.number, None, 0)).id == second.id
        assert (await store.find_origin("p", first.number, "pm-404", 0)).id == second.id
        assert await store.find_origin("other", first.number, None, 0) is None
        assert await store.find_origin("p", first.number, None, 10) is None
        assert await store.find_origin("p", "+33699999999", None, 0) is None
        assert (await store.find_origin("p", first.number, None, 0)).subject == "a@***|..."


class TestInboundParts:
    async def test_parts_are_joined_once_all_are_there(self, store):
        assert await store.inbound_part("part:p:+33612121515:08", 2, 3, "b", 1) is None
        assert await store.inbound_part("part:p:+33612121515:08", 2, 3, "b", 2) is None     # posted twice
        assert await store.inbound_part("part:p:+33612121515:09", 1, 2, "other", 2) is None  # another SMS
        assert await store.inbound_part("part:p:+33612121515:08", 3, 3, "c", 3) is None
        assert await store.inbound_part("part:p:+33612121515:08", 1, 3, "a", 4) == ["a", "b", "c"]
        assert await store.inbound_part("part:p:+33612121515:08", 1, 3, "a", 5) == ["a", "b", "c"]
