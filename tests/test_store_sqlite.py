"""SQLite specifics: the intake's reads stay independent of the backlog's size."""

from __future__ import annotations

import re
import time

from bridge.model import JobState, Limits, NewJob, Plan, Settlement
from bridge.store import SqliteStore
from bridge.store.sql_intake import DAY_COUNT_SQL, DAY_SPEND_SQL, reads_sql


async def test_the_hourly_cap_is_read_by_number_not_by_account(tmp_path):
    """With a large backlog for one account, the per-number cap in the one statement of the
    intake's reads uses the number's indexes (seeks), never the account's index (the whole
    backlog) nor a sort; so do the duplicate check and the opt-outs, on their keys."""
    store = await SqliteStore.open(tmp_path / "s.db")
    try:
        now, numbers = time.time(), [f"+3361{i:07d}" for i in range(100)]
        for sql, args in ((reads_sql(len(numbers), 1, True, False, False),
                           ("a", now - 86400, now - 3600, "", *numbers, "key")),):
            plan = await store.read(lambda c, sql=sql, args=args: c.execute("EXPLAIN QUERY PLAN " + sql, args).fetchall())
            details = " ".join(row[3] for row in plan)
            assert "COVERING INDEX jobs_number_seq" in details and "COVERING INDEX jobs_number_created" in details
            assert "jobs_number_dropped" in details  # failed and cancelled ones: their own small index
            assert "jobs_login_created" not in details and "B-TREE" not in details, details
            assert re.sub(r"SCAN (n|\d* ?CONSTANT ROWS?)", "", details).count("SCAN") == 0, details
            assert details.count("jobs_number_seq") == 1, details  # each count is worked out once
    finally:
        await store.close()


async def test_the_caps_count_as_cheaply_for_2000_sms_in_the_window_as_for_20(tmp_path):
    """A pager number that had 2,000 SMS this hour, and an account that sent 2,000 today, cost
    their counts no more SQLite work than 20 do (the work is counted in SQLite's VM steps,
    not timed): counts and spend are read by rank and running total, in a few index seeks.
    The figures are exact: what is older than the window, failed or refunded is left out."""
    store = await SqliteStore.open(tmp_path / "s.db")
    now = time.time()
    try:
        await store.open_accounts({"a": 10_000, "b": 100}, now - 90_000)
        for i in range(5):  # before both windows
            await store.commit(_plan(f"old{i}", "+33612120001", None), now - 90_000 + i)
        for i in range(2_000):
            at = now - 1800 + i * 0.1
            await store.commit(_plan(f"busy{i}", "+33612120001", None), at)
            if i < 20:
                await store.commit(_plan(f"calm{i}", "+33612120002", None), at)
                await store.commit(_plan(f"b{i}", "+33612120003", None, login="b"), at)
        [failed] = (await store.commit(_plan("failed", "+33612120003", None, login="b"), now)).job_ids
        await store.claim("me", now, 10, 60, only=[failed])
        assert await store.settle_claimed("me", [Settlement(failed, JobState.FAILED, "refused")], now) == []

        async def steps(sql: str, args: tuple, column: int) -> tuple[object, int]:
            def run(conn) -> tuple[object, int]:
                counted = [0]

                def step() -> int:
                    counted[0] += 1
                    return 0

                conn.set_progress_handler(step, 1)
                try:
                    row = conn.execute(sql, args).fetchone()
                finally:
                    conn.set_progress_handler(None, 1)
                return row[column], counted[0]
            return await store.read(run)

        hour, day = now - 3600, now - 86400
        per_number = reads_sql(1, 0, True, False, False)
        for sql, busy_args, calm_args, column, expected in (
            # number:top:first:dropped (the hour's count: top - first + 1 - dropped)
            (per_number, ("a", day, hour, "", "+33612120001"), ("a", day, hour, "", "+33612120002"), 4,
             ("+33612120001:2005:6:0", "+33612120002:20:1:0")),
            (DAY_COUNT_SQL, ("a", day), ("b", day), 0, (2_020, 20)),
            (DAY_SPEND_SQL, ("a", day), ("b", day), 0, (2_020, 20)),
        ):
            (busy, busy_steps) = await steps(sql, busy_args, column)
            (calm, calm_steps) = await steps(sql, calm_args, column)
            assert (busy, calm) == expected, sql
            assert busy_steps < 2 * calm_steps, (sql, busy_steps, calm_steps)
        capped = await store.commit(_plan("over", "+33612120001", 2_000), now)
        assert capped.job_ids == () and [r.code for r in capped.refused] == [127]
        assert len((await store.commit(_plan("under", "+33612120001", 2_001), now)).job_ids) == 1
    finally:
        await store.close()


def _plan(key: str, number: str, cap: int | None, login: str = "a") -> Plan:
    return Plan(key=key, login=login, message_id=None, reply_to="alice@example.org", summary="a@***|...",
                jobs=(NewJob(number=number, text="hi", sender=None, parts=1, cost=1),),
                limits=Limits(per_number_per_hour=cap))


async def test_the_daily_caps_read_indexes_not_the_accounts_rows(tmp_path):
    """max_sms_per_day and max_spend_per_day read a few index entries (ranks, running
    totals), never every job or ledger row of the account's day."""
    store = await SqliteStore.open(tmp_path / "s.db")
    try:
        day = time.time() - 86400
        count_uses = ("COVERING INDEX jobs_login_seq", "COVERING INDEX jobs_login_created", "jobs_login_dropped")
        spend_uses = ("ledger_login", "ledger_spent_at")
        for sql, args, used in ((DAY_COUNT_SQL, ("a", day), count_uses), (DAY_SPEND_SQL, ("a", day), spend_uses),
                                (reads_sql(1, 0, False, True, True),  # the intake's one statement
                                 ("a", day, day + 82800, "", "+33612120001"), count_uses + spend_uses)):
            plan = await store.read(lambda c, sql=sql, args=args: c.execute("EXPLAIN QUERY PLAN " + sql, args).fetchall())
            details = " ".join(row[3] for row in plan)
            assert all(index in details for index in used) and "B-TREE" not in details, details
    finally:
        await store.close()


async def test_jobs_read_by_position_are_the_jobs_read_by_name(tmp_path):
    """``job_of`` reads ``JOB_SELECT`` and ``THREAD_SELECT`` rows by position; every field of
    the ``Job`` it makes is the column of the same name, for a job whose every column
    differs from the others."""
    import dataclasses

    from bridge.model import Job
    from bridge.store.sql import JOB_SELECT, THREAD_SELECT, job_of

    store = await SqliteStore.open(tmp_path / "s.db")
    try:
        def write(conn):
            conn.execute("INSERT INTO messages (id, key, message_id, login, reply_to, summary, outcome, received_at) "
                         "VALUES (7, 'k', 'mid@x', 'acct', 'reply@x', 'acct@***|+33612345678', 'accepted', 1.5)")
            conn.execute(
                "INSERT INTO jobs (id, message, login, number, text, sender, parts, cost, unicode, low_cost, state, "
                "attempts, created_at, next_attempt_at, updated_at, provider, provider_message_id, last_error, "
                "category, client_ref, called_at, lease_owner, lease_until, nseq, lseq) VALUES (42, 7, 'acct', "
                "'+33612345678', 'the text', 'SENDER', 3, 9, 1, 0, 'calling', 2, 10.0, 11.0, 12.0, 'prov', 'pmid', "
                "'an error', 'marketing', 'ref-1', 13.0, 'owner', 14.0, 1, 1)")
        await store.write(write)
        names = {"message_id": "mail_message_id", "reply_to": "mail_reply_to", "subject": "mail_summary"}
        for select in (JOB_SELECT, THREAD_SELECT):
            row = await store.read(lambda c, select=select: c.execute(f"{select} WHERE j.id=42").fetchone())
            job = job_of(row)
            for field in dataclasses.fields(Job):
                column = names.get(field.name, field.name)
                expected = row[column] if column in row.keys() else None
                if field.name in ("unicode", "low_cost"):
                    expected = bool(expected)
                elif field.name == "state":
                    expected = JobState(expected)
                assert getattr(job, field.name) == expected, field.name
            assert job.subject == ("acct@***|+33612345678" if select is THREAD_SELECT else None)
            assert (job.unicode, job.low_cost, job.state) == (True, False, JobState.CALLING)
    finally:
        await store.close()


async def test_a_mail_of_many_numbers_takes_consecutive_ranks_and_running_spend(tmp_path):
    """A mail's jobs and debits go in as multi-row inserts, split where SQLite's limit on
    parameters says (lowered here to two jobs a statement): every job gets the next rank of
    its number and of its account, the same number twice in a mail included, every debit
    the next running spend, and the hourly cap counts them all."""
    import sqlite3

    store = await SqliteStore.open(tmp_path / "s.db")
    try:
        await store.open_accounts({"a": 100, "b": 100}, 1)
        a, b, c, d = (f"+3361212000{k}" for k in range(4))
        await store.commit(_plan("first", a, None), 2)
        await store.commit(_plan("other account", b, None, login="b"), 2)
        await store.write(lambda conn: conn.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, 40))
        jobs = tuple(NewJob(number=n, text="hi", sender=None, parts=1, cost=2) for n in (a, b, a, c, a, b, d))
        result = await store.commit(Plan(key="many", login="a", message_id=None, reply_to=None, summary="s",
                                         jobs=jobs), 3)
        assert len(result.job_ids) == 7 and result.used == 14

        def rows(conn):
            ranks = conn.execute(f"SELECT number, nseq, lseq FROM jobs WHERE id IN ({','.join('?' * 7)}) "
                                 "ORDER BY id", result.job_ids).fetchall()
            debits = conn.execute("SELECT job, amount, spent FROM ledger WHERE login='a' AND reason='debit' "
                                  "ORDER BY id").fetchall()
            return [tuple(r) for r in ranks], [tuple(r) for r in debits]

        ranks, debits = await store.read(rows)
        assert ranks == [(a, 2, 2), (b, 1, 3), (a, 3, 4), (c, 1, 5), (a, 4, 6), (b, 2, 7), (d, 1, 8)]
        assert [(job, amount) for job, amount, _ in debits[1:]] == [(i, -2) for i in result.job_ids]
        assert [spent for _, _, spent in debits] == [1, 3, 5, 7, 9, 11, 13, 15]
        assert (await store.balances())["a"] == 100 - 1 - 14
        capped = await store.commit(_plan("capped", a, 4), 4)
        assert capped.job_ids == () and [r.code for r in capped.refused] == [127]
        assert len((await store.commit(_plan("under", c, 4), 4)).job_ids) == 1
    finally:
        await store.close()


async def test_two_moves_in_one_write_are_both_checked_against_the_table(tmp_path):
    """``transition`` with ``via`` (a claim that records its call) makes queued -> claimed ->
    calling one compare-and-set on queued; a pair with a move the table lacks raises and
    changes nothing, and so does the direct queued -> calling."""
    import pytest

    from bridge.model import IllegalTransition
    from bridge.store.sql import transition

    store = await SqliteStore.open(tmp_path / "s.db")
    try:
        await store.open_accounts({"a": 10}, 1)
        [job] = (await store.commit(_plan("k", "+33612120001", None), 1)).job_ids
        for target, via in ((JobState.CALLING, None), (JobState.SENT, JobState.CLAIMED),
                            (JobState.CALLING, JobState.SENT)):
            with pytest.raises(IllegalTransition):
                await store.write(lambda c, t=target, v=via: transition(c, [job], t, JobState.QUEUED, 2, via=v))
            assert (await store.job(job)).state is JobState.QUEUED
        moved = await store.write(lambda c: transition(c, [job], JobState.CALLING, JobState.QUEUED, 2,
                                                        via=JobState.CLAIMED))
        assert moved == {job} and (await store.job(job)).state is JobState.CALLING
        assert await store.write(lambda c: transition(c, [job], JobState.CALLING, JobState.QUEUED, 3,
                                                      via=JobState.CLAIMED)) == set()  # no longer queued
    finally:
        await store.close()
