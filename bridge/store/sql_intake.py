"""The intake commit (run on the writer thread): dedupe, rules, credit, jobs, replies.

The counts the rules need are read here, inside the transaction, so two mails racing for
the last credits or the last SMS of a cap cannot both pass; the decision itself is
``rules.screen`` (pure). Reads are set-based: one query for the opt-outs of all a mail's
numbers, one for their hourly counts, one multi-row insert for the jobs.
"""

from __future__ import annotations

import sqlite3

from bridge import rules, status_mail
from bridge.model import Acceptance, Counts, Plan
from bridge.store.sql import INSERT_LEDGER, SPENT_SO_FAR, balance, marks, queue_reply


#: A job takes the next rank among the jobs of its (number, account) and of its account:
#: what the caps count by (``per_number_sql``, ``DAY_COUNT_SQL``).
_INSERT_JOB = (
    "INSERT INTO jobs (message, login, number, text, sender, parts, cost, unicode, low_cost, "
    "state, created_at, next_attempt_at, updated_at, category, nseq, lseq) "
    "VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, 'queued', ?10, ?11, ?12, ?13, "
    "(SELECT COALESCE(MAX(nseq), 0) + 1 FROM jobs WHERE number=?3 AND login=?2), "
    "(SELECT COALESCE(MAX(lseq), 0) + 1 FROM jobs WHERE login=?2))"
)


def commit(conn: sqlite3.Connection, plan: Plan, now: float) -> Acceptance:
    """Apply intake's ``plan``; return what was done."""
    keys = [k for k in (plan.key, *plan.extra_keys) if k]
    if keys and conn.execute(f"SELECT 1 FROM message_keys WHERE key IN ({marks(keys)})", keys).fetchone():
        return Acceptance("duplicate")
    kept, refused = rules.screen(plan.jobs, plan.sender, plan.limits, _counts(conn, plan, now))
    refused = [*plan.refused, *refused]
    used = sum(job.cost for job in kept)
    available = balance(conn, plan.login) if plan.login else 0
    outcome = "accepted" if kept else "rejected"
    if kept and used > available:
        kept, outcome = [], "insufficient_credit"
    evaluated = bool(plan.jobs or plan.refused)
    status, note = rules.status_of(refused, kept) if evaluated else (0, "")
    message = conn.execute(
        "INSERT INTO messages (key, message_id, login, reply_to, summary, outcome, received_at) "
        "VALUES (?, ?, ?, ?, ?, ?, ?)",
        (plan.key, plan.message_id, plan.login, plan.reply_to, plan.summary, outcome, now),
    ).lastrowid
    if keys:
        conn.executemany("INSERT OR IGNORE INTO message_keys VALUES (?, ?)", [(k, message) for k in keys])
    ids: tuple[int, ...] = ()
    if kept:
        rows = [(message, plan.login, j.number, j.text, j.sender, j.parts, j.cost, j.unicode, j.low_cost,
                 now, j.send_at if j.send_at is not None else now, now, j.category) for j in kept]
        if len(rows) == 1:  # the usual mail: its id comes with the insert
            ids = (conn.execute(_INSERT_JOB, rows[0]).lastrowid,)
        else:
            conn.executemany(_INSERT_JOB, rows)
            ids = tuple(r[0] for r in conn.execute("SELECT id FROM jobs WHERE message=? ORDER BY id", (message,)))
        conn.executemany(INSERT_LEDGER, [(plan.login, -job.cost, "debit", job_id, now) for job, job_id in zip(kept, ids)])
        conn.execute(
            "INSERT INTO balances VALUES (?, ?) ON CONFLICT(login) DO UPDATE SET balance=balance+?",
            (plan.login, -used, -used),
        )
    acceptance = Acceptance(outcome, ids, used, available, tuple(refused), status, note)
    for reply in status_mail.after_commit(plan, acceptance, evaluated):
        queue_reply(conn, reply, now)
    return acceptance


def per_number_sql(count: int) -> str:
    """Jobs per number of the last hour, for ``count`` numbers (not failed nor cancelled);
    parameters: since, login, then the numbers. A number without a job this hour counts NULL.

    Every job has its rank (``nseq``) among the jobs of its (number, account), given at
    insert, so the hour's count is the newest job's rank less the rank of the hour's first
    job, plus one: two index seeks (``jobs_number_seq``, ``jobs_number_created``), however
    many SMS the number had this hour. The failed and cancelled ones of the hour are taken
    off through their partial index. ``+login`` keeps SQLite on the number's index, not the
    account's (the whole backlog).
    """
    numbers = ", ".join(f"(?{i + 3})" for i in range(count))
    return (
        f"WITH n(number) AS (VALUES {numbers}) SELECT n.number, "
        "(SELECT MAX(nseq) FROM jobs WHERE number=n.number AND login=?2) - "
        "(SELECT nseq FROM jobs WHERE number=n.number AND created_at>=?1 AND +login=?2 ORDER BY created_at LIMIT 1) "
        "+ 1 - (SELECT COUNT(*) FROM jobs d WHERE d.number=n.number AND d.created_at>=?1 AND +d.login=?2 "
        "AND d.state IN ('failed', 'cancelled')) FROM n"
    )


#: Jobs of the last 24 hours of an account (not failed nor cancelled); parameters: login,
#: since. As the hourly count, by rank (``lseq``): a few index seeks, however many SMS the
#: account sent that day.
DAY_COUNT_SQL = (
    "SELECT COALESCE((SELECT MAX(lseq) FROM jobs WHERE login=?1) - (SELECT lseq FROM jobs WHERE login=?1 "
    "AND created_at>=?2 ORDER BY created_at LIMIT 1) + 1, 0) - (SELECT COUNT(*) FROM jobs "
    "WHERE login=?1 AND created_at>=?2 AND state IN ('failed', 'cancelled'))"
)
#: Credits spent in the last 24 hours by an account (debits less refunds); parameters:
#: login, since. The account's running spend now less what it was before the window.
DAY_SPEND_SQL = (
    f"SELECT {SPENT_SO_FAR} - COALESCE((SELECT spent FROM ledger WHERE login=?1 AND created_at<?2 "
    "AND reason IN ('debit', 'refund') ORDER BY created_at DESC, id DESC LIMIT 1), 0)"
)


def _counts(conn: sqlite3.Connection, plan: Plan, now: float) -> Counts:
    """What the rules need to know about this mail's numbers and account, set-based."""
    if not plan.jobs:
        return Counts()
    numbers = sorted({job.number for job in plan.jobs})
    senders = ["", (plan.sender or "").lower()]
    optouts = frozenset(
        (r[0], r[1]) for r in conn.execute(
            f"SELECT number, sender FROM optouts WHERE number IN ({marks(numbers)}) AND sender IN (?, ?)",
            (*numbers, *senders),
        )
    )
    limits, login = plan.limits, plan.login
    per_number: dict[str, int] = {}
    if limits.per_number_per_hour:
        rows = conn.execute(per_number_sql(len(numbers)), (now - 3600, login, *numbers))
        per_number = {number: count for number, count in rows if count}
    sms_today = spent_today = 0
    if limits.sms_per_day:
        (sms_today,) = conn.execute(DAY_COUNT_SQL, (login, now - 86400)).fetchone()
    if limits.spend_per_day:
        (spent_today,) = conn.execute(DAY_SPEND_SQL, (login, now - 86400)).fetchone()
    return Counts(optouts=optouts, per_number_hour=per_number, sms_today=sms_today, spent_today=spent_today)
