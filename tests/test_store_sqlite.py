"""SQLite specifics: the intake's reads stay independent of the backlog's size."""

from __future__ import annotations

import time

from bridge.model import Limits, NewJob, Plan
from bridge.store import SqliteStore
from bridge.store.sql_intake import DAY_COUNT_SQL, DAY_SPEND_SQL, per_number_sql


async def test_the_hourly_cap_is_read_by_number_not_by_account(tmp_path):
    """With a large backlog for one account, the per-number cap query uses the number's
    indexes (seeks), never the account's index (the whole backlog) nor a sort."""
    store = await SqliteStore.open(tmp_path / "s.db")
    try:
        numbers = [f"+3361{i:07d}" for i in range(100)]
        sql = per_number_sql(len(numbers))
        plan = await store.read(lambda c: c.execute("EXPLAIN QUERY PLAN " + sql,
                                                    (time.time() - 3600, "a", *numbers)).fetchall())
        details = " ".join(row[3] for row in plan)
        assert "COVERING INDEX jobs_number_seq" in details and "COVERING INDEX jobs_number_created" in details
        assert "jobs_number_dropped" in details  # failed and cancelled ones: their own small index
        assert "jobs_login_created" not in details and "B-TREE" not in details, details
    finally:
        await store.close()


async def test_the_hourly_count_costs_the_same_for_20_or_2000_sms_of_the_hour(tmp_path):
    """A pager number that had 2,000 SMS this hour costs its count no more SQLite work than one
    that had 20 (the work is counted in SQLite's VM steps, not timed): the count and the next
    job's rank are index seeks, not one index entry per SMS of the hour. The counts are exact."""
    store = await SqliteStore.open(tmp_path / "s.db")
    now = time.time()
    try:
        await store.open_accounts({"a": 10_000}, now)
        for i in range(2_000):
            await store.commit(_plan(f"busy{i}", "+33612120001", None), now - 1800 + i * 0.1)
            if i < 20:
                await store.commit(_plan(f"calm{i}", "+33612120002", None), now - 1800 + i * 0.1)

        async def steps(number: str) -> tuple[int, int]:
            def run(conn) -> tuple[int, int]:
                counted = [0]

                def step() -> int:
                    counted[0] += 1
                    return 0

                conn.set_progress_handler(step, 1)
                try:
                    count = conn.execute(per_number_sql(1), (now - 3600, "a", number)).fetchone()[1]
                finally:
                    conn.set_progress_handler(None, 1)
                return count, counted[0]
            return await store.read(run)

        (busy, busy_steps), (calm, calm_steps) = await steps("+33612120001"), await steps("+33612120002")
        assert (busy, calm) == (2_000, 20)
        assert busy_steps < 2 * calm_steps, (busy_steps, calm_steps)
        capped = await store.commit(_plan("over", "+33612120001", 2_000), now)
        assert capped.job_ids == () and [r.code for r in capped.refused] == [127]
        assert len((await store.commit(_plan("under", "+33612120001", 2_001), now)).job_ids) == 1
    finally:
        await store.close()


def _plan(key: str, number: str, cap: int | None) -> Plan:
    return Plan(key=key, login="a", message_id=None, reply_to="alice@example.org", summary="a@***|...",
                jobs=(NewJob(number=number, text="hi", sender=None, parts=1, cost=1),),
                limits=Limits(per_number_per_hour=cap))


async def test_the_daily_caps_read_indexes_not_the_accounts_rows(tmp_path):
    """max_sms_per_day and max_spend_per_day count through indexes alone (the day's index
    entries), never every job or ledger row of the account."""
    store = await SqliteStore.open(tmp_path / "s.db")
    try:
        args = ("a", time.time() - 86400)
        for sql, used in ((DAY_COUNT_SQL, ("COVERING INDEX jobs_login_created", "jobs_login_dropped")),
                          (DAY_SPEND_SQL, ("COVERING INDEX ledger_login",))):
            plan = await store.read(lambda c, sql=sql: c.execute("EXPLAIN QUERY PLAN " + sql, args).fetchall())
            details = " ".join(row[3] for row in plan)
            assert all(index in details for index in used), details
    finally:
        await store.close()
