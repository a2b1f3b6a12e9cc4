"""Several bridges on one PostgreSQL: what only a shared server can get wrong.

Each test opens two (or more) ``PostgresStore`` instances, each with its own pool, on one
fresh schema of the local server, and races them for real. The outage test runs a private
server (``tests/pg.py``) and stops it under the store.
"""

from __future__ import annotations

import asyncio
import json
import time

import asyncpg
import pytest

from bridge.errors import StoreError
from bridge.model import JobState, Limits, NewJob, NewReply, Plan
from bridge.store.pg_intake import counts_sql
from bridge.store.pg_schema import RANK_FILLS
from bridge.store.postgres import PostgresStore
from pg import PrivateServer, pg_url  # noqa: F401  (fixture)

S = JobState


def plan(key: str | None, numbers=("+33612121515",), cost: int = 1, login: str = "a", **extra) -> Plan:
    return Plan(key=key, login=login, message_id=None, reply_to="alice@example.org", summary="a@***|...",
                jobs=tuple(NewJob(number=n, text="hi", sender=None, parts=cost, cost=cost) for n in numbers),
                **extra)


@pytest.fixture
async def two(pg_url):
    """Two bridges' stores (two pools) on one schema; account ``a`` has 10 credits."""
    first, second = await asyncio.gather(PostgresStore.open(pg_url), PostgresStore.open(pg_url))
    await asyncio.gather(first.open_accounts({"a": 10}, 0), second.open_accounts({"a": 10}, 0))
    yield first, second
    await asyncio.gather(first.close(), second.close())


class TestOpening:
    async def test_instances_starting_together_migrate_once(self, pg_url):
        """Four bridges opening a new database at once: one migrates, all work, one opening balance."""
        stores = await asyncio.gather(*(PostgresStore.open(pg_url) for _ in range(4)))
        try:
            await asyncio.gather(*(s.open_accounts({"a": 10}, 0) for s in stores))
            assert (await stores[0].balances()) == {"a": 10}
            assert [r["reason"] for r in await stores[3].ledger("a")] == ["opening"]
        finally:
            await asyncio.gather(*(s.close() for s in stores))

    async def test_unreachable_server_is_a_store_error(self):
        """No server at the URL: opening raises StoreError (the daemon exits 1), not a driver error."""
        with pytest.raises(StoreError, match="cannot open the PostgreSQL store"):
            await PostgresStore.open("postgresql://postgres@127.0.0.1:1/test")


class TestCapCounts:
    async def test_the_caps_read_as_few_rows_for_2000_sms_in_the_window_as_for_20(self, pg_url):
        """A number with 2,000 SMS this hour, an account with 2,020 today: their counts read
        no more rows than those with 20 (rows read by the plan's scans, from EXPLAIN ANALYZE,
        not time): ranks and running totals, not one row per SMS. The counts are exact."""
        await (await PostgresStore.open(pg_url)).close()
        now = time.time()
        conn = await asyncpg.connect(pg_url)
        try:
            message = await conn.fetchval("INSERT INTO messages (summary, outcome, received_at) "
                                          "VALUES ('a@***', 'accepted', 0) RETURNING id")
            rows = [("a", "+33612120001", now - 1800 + i * 0.1) for i in range(2_000)]
            rows += [(login, number, now - 1800 + i) for login, number in (("a", "+33612120002"),
                                                                           ("b", "+33612120003")) for i in range(20)]
            await conn.executemany(
                "INSERT INTO jobs (message, login, number, text, parts, cost, unicode, low_cost, state, created_at, "
                "next_attempt_at, updated_at) VALUES ($1, $2, $3, 'hi', 1, 1, false, false, 'sent', $4, $4, $4)",
                [(message, *row) for row in rows])
            await conn.execute("INSERT INTO ledger (login, amount, reason, job, created_at) "
                               "SELECT login, -1, 'debit', id, created_at FROM jobs ORDER BY id")
            for fill in RANK_FILLS:                  # as the upgrade does for rows already there
                await conn.execute(fill)
            await conn.execute("ANALYZE jobs; ANALYZE ledger")

            async def read(number: str, login: str, limits: Limits) -> tuple[list, int]:
                sql, args = counts_sql(plan(None, numbers=(number,), login=login, limits=limits), now)
                explained = json.loads(await conn.fetchval("EXPLAIN (ANALYZE, FORMAT JSON) " + sql, *args))

                def nodes(node: dict):
                    yield node
                    for child in node.get("Plans", ()):
                        yield from nodes(child)
                scanned = sum(n["Actual Rows"] * n["Actual Loops"] for n in nodes(explained[0]["Plan"])
                              if "Scan" in n["Node Type"])
                return list(await conn.fetchrow(sql, *args))[1:], scanned

            hourly, daily = Limits(per_number_per_hour=5), Limits(sms_per_day=5, spend_per_day=5)
            for (busy, busy_rows), (calm, calm_rows), expected in (
                (await read("+33612120001", "a", hourly), await read("+33612120002", "a", hourly),
                 ([["+33612120001\x1f2000"]], [["+33612120002\x1f20"]])),
                (await read("+33612120009", "a", daily), await read("+33612120009", "b", daily),
                 ([2_020, 2_020], [20, 20])),
            ):
                assert (busy, calm) == expected
                assert busy_rows < 2 * calm_rows, (busy_rows, calm_rows)
        finally:
            await conn.close()


class TestRaces:
    async def test_two_instances_never_claim_the_same_job(self, two):
        """300 jobs, four claimers on each of two instances: every job claimed exactly once."""
        first, second = two
        await first.credit("a", 1000, "test", 0)
        for i in range(30):
            await first.commit(plan(f"k{i}", numbers=[f"+336121215{n:02}" for n in range(10)]), 1)
        claimed: dict[str, list[int]] = {}

        async def claimer(store: PostgresStore, name: str) -> None:
            while jobs := await store.claim(name, 2, 7, 60):
                claimed.setdefault(name, []).extend(j.id for j in jobs)

        await asyncio.gather(*(claimer(store, f"{label}{n}") for store, label in ((first, "x"), (second, "y"))
                               for n in range(4)))
        every = [job_id for ids in claimed.values() for job_id in ids]
        assert len(every) == len(set(every)) == 300
        assert any(name.startswith("x") for name in claimed) and any(name.startswith("y") for name in claimed)
        assert await second.count_jobs() == {"claimed": 300}

    async def test_last_credits_from_two_instances(self, two):
        """Twenty concurrent mails (ten per instance) for the last 10 credits: exactly 10 pass."""
        first, second = two
        results = await asyncio.gather(*((first if i % 2 else second).commit(plan(f"k{i}"), 1) for i in range(20)))
        outcomes = [r.outcome for r in results]
        assert outcomes.count("accepted") == 10 and outcomes.count("insufficient_credit") == 10
        assert (await first.balances())["a"] == 0
        assert sum(r["amount"] for r in await second.ledger("a")) == 0

    async def test_the_same_mail_on_two_instances_is_sent_once(self, two):
        """Each of 10 mails committed at once on both instances: one accepted, one duplicate, no error."""
        first, second = two
        results = await asyncio.gather(*(store.commit(plan(f"same{i}"), 1) for i in range(10)
                                         for store in (first, second)))
        outcomes = [r.outcome for r in results]
        assert outcomes.count("accepted") == 10 and outcomes.count("duplicate") == 10
        assert len(await first.jobs()) == 10 and (await first.balances())["a"] == 0

    async def test_per_number_cap_holds_across_instances(self, two):
        """With 3 SMS per number per hour, 8 racing mails to one number on two instances: 3 jobs."""
        first, second = two
        capped = Limits(per_number_per_hour=3)
        results = await asyncio.gather(*((first if i % 2 else second).commit(plan(f"k{i}", limits=capped), 1)
                                         for i in range(8)))
        assert sum(len(r.job_ids) for r in results) == 3
        assert sorted({r.status for r in results if not r.job_ids}) == [127]

    async def test_sweeps_on_two_instances_requeue_each_job_once(self, two):
        """Both instances sweep expired leases at once: each job is requeued by exactly one."""
        first, second = two
        await first.commit(plan("k", numbers=[f"+3361212150{n}" for n in range(8)]), 1)
        await first.claim("dead", 2, 10, 5)
        (a, _), (b, _) = await asyncio.gather(first.sweep(10), second.sweep(10))
        assert sorted(a + b) == sorted(j.id for j in await first.jobs()) and not set(a) & set(b)
        assert len(await second.claim("alive", 11, 10, 60)) == 8

    async def test_a_reply_is_handed_to_one_instance(self, two):
        """Due replies claimed by two instances at once go to one of them each."""
        first, second = two
        for i in range(6):
            await first.queue_reply(NewReply(f"r{i}@example.org", 105, b"x"), 1)
        got = await asyncio.gather(first.claim_replies(2, 10), second.claim_replies(2, 10))
        ids = [r.id for batch in got for r in batch]
        assert len(ids) == len(set(ids)) == 6


class TestWakeUps:
    async def test_a_commit_on_one_instance_wakes_the_other(self, two):
        """Jobs committed on one instance wake the other's dispatcher at once (LISTEN/NOTIFY)."""
        first, second = two
        woken = asyncio.Event()
        stop = asyncio.Event()
        listener = asyncio.create_task(second.listen(woken.set, stop))
        try:
            await asyncio.wait_for(woken.wait(), 5)   # the wake-up given on (re)connecting
            woken.clear()
            await asyncio.sleep(0.2)
            await first.commit(plan("k"), 1)
            await asyncio.wait_for(woken.wait(), 5)
        finally:
            stop.set()
            await asyncio.wait_for(listener, 15)

    async def test_a_rejected_mail_wakes_nobody(self, two):
        """A mail that created no job sends no notification."""
        first, second = two
        woken = asyncio.Event()
        stop = asyncio.Event()
        listener = asyncio.create_task(second.listen(woken.set, stop))
        try:
            await asyncio.wait_for(woken.wait(), 5)
            woken.clear()
            await first.commit(plan("k", cost=50), 1)   # insufficient credit
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(woken.wait(), 1)
        finally:
            stop.set()
            await asyncio.wait_for(listener, 15)


class TestMailboxLock:
    async def test_one_instance_polls_a_mailbox(self, two):
        """The first instance gets the mailbox; the second does not until the first lets go."""
        first, second = two
        async with first.mailbox_lock("work:INBOX") as mine:
            assert mine
            async with second.mailbox_lock("work:INBOX") as theirs:
                assert not theirs
            async with second.mailbox_lock("other:INBOX") as other:
                assert other
        async with second.mailbox_lock("work:INBOX") as theirs:
            assert theirs

    async def test_a_dead_holder_loses_the_mailbox_at_once(self, two, pg_url):
        """When the holder's session ends (its process died), the other instance takes over."""
        first, second = two
        async with first.mailbox_lock("work:INBOX") as mine:
            admin = await asyncpg.connect(pg_url)
            try:
                await admin.execute("SELECT pg_terminate_backend(pid) FROM pg_locks "
                                    "WHERE locktype='advisory' AND pid <> pg_backend_pid()")
            finally:
                await admin.close()
            await asyncio.wait_for(mine.lost.wait(), 5)
            assert not mine
            async with second.mailbox_lock("work:INBOX") as theirs:
                assert theirs


class TestOutage:
    async def test_server_stopped_and_started_again(self):
        """Server down: commits raise StoreError at once (SMTP 451); back up: they work again, by themselves."""
        server = PrivateServer()
        try:
            await asyncio.to_thread(server.start)
            store = await PostgresStore.open(server.url)
            woken = asyncio.Event()
            stop = asyncio.Event()
            listener = asyncio.create_task(store.listen(woken.set, stop))
            try:
                await store.open_accounts({"a": 10}, 0)
                assert (await store.commit(plan("before"), 1)).outcome == "accepted"
                await asyncio.wait_for(woken.wait(), 5)
                await asyncio.to_thread(server.stop)
                started = time.monotonic()
                with pytest.raises(StoreError):
                    await store.commit(plan("during"), 2)
                with pytest.raises(StoreError):
                    await store.claim("me", 2, 10, 60)
                with pytest.raises(StoreError):
                    await store.balances()
                with pytest.raises(StoreError):
                    async with store.mailbox_lock("work:INBOX"):
                        pass
                assert time.monotonic() - started < CONNECT_BOUND
                woken.clear()
                await asyncio.to_thread(server.start)
                assert (await _eventually(lambda: store.commit(plan("after"), 3))).outcome == "accepted"
                assert (await store.commit(plan("before"), 4)).outcome == "duplicate"
                assert (await store.balances())["a"] == 8
                await asyncio.wait_for(woken.wait(), 40)   # the listener reconnected by itself
            finally:
                stop.set()
                await asyncio.wait_for(listener, 15)
                await store.close()
        finally:
            await asyncio.to_thread(server.remove)


CONNECT_BOUND = 12.0   # two failed calls, each bounded by the connect timeout


async def _eventually(call, timeout: float = 20.0):
    """The first result of ``call()`` that is not a StoreError (the pool reconnecting)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return await call()
        except StoreError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)
