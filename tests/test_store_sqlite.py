"""SQLite specifics: the intake's reads stay independent of the backlog's size."""

from __future__ import annotations

import time

from bridge.store import SqliteStore
from bridge.store.sql_intake import DAY_COUNT_SQL, DAY_SPEND_SQL, per_number_sql


async def test_the_hourly_cap_is_read_by_number_not_by_account(tmp_path):
    """With a large backlog for one account, the per-number cap query uses the number index
    (a few rows per number), not the account's index (the whole backlog), and reads the index
    alone (a number with thousands of SMS this hour costs no table reads)."""
    store = await SqliteStore.open(tmp_path / "s.db")
    try:
        numbers = [f"+3361{i:07d}" for i in range(100)]
        sql = per_number_sql(len(numbers))
        plan = await store.read(lambda c: c.execute("EXPLAIN QUERY PLAN " + sql,
                                                    (time.time() - 3600, "a", *numbers)).fetchall())
        details = " ".join(row[3] for row in plan)
        assert "COVERING INDEX jobs_number_created" in details and "jobs_login_created" not in details
        assert "jobs_number_dropped" in details  # failed and cancelled ones: their own small index
    finally:
        await store.close()


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
