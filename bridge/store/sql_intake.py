"""The intake commit (run on the writer thread): dedupe, rules, credit, jobs, replies.

The counts the rules need are read here, inside the transaction, so two mails racing for
the last credits or the last SMS of a cap cannot both pass; the decision itself is
``rules.screen`` (pure). Everything the commit reads (is the mail a duplicate, the
account's balance, the opt-outs and hourly counts of all the mail's numbers, the daily
counts) is one statement (``reads_sql``): less SQL and Python per commit than a statement
each, and fewer times the writer thread lets go of the GIL and waits for the event loop to
give it back (sqlite3 lets go at every statement step).
"""

from __future__ import annotations

import sqlite3
from functools import lru_cache

from bridge import rules, status_mail
from bridge.model import Acceptance, Counts, Plan
from bridge.store.sql import ADD_TO_BALANCE, INSERT_LEDGER, SPENT_SO_FAR, queue_reply


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
    duplicate, available, counts = _read(conn, plan, keys, now)
    if duplicate:
        return Acceptance("duplicate")
    kept, refused = rules.screen(plan.jobs, plan.sender, plan.limits, counts)
    refused = [*plan.refused, *refused]
    used = sum(job.cost for job in kept)
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
        conn.execute(ADD_TO_BALANCE, (plan.login, -used, -used))
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
    return _per_number(count, since="?1", login="?2", first=3)


def _per_number(count: int, since: str, login: str, first: int) -> str:
    """``per_number_sql`` with its parameters where the caller has them: the window's
    start ``since``, the ``login`` and the numbers from ``?first`` on."""
    numbers = ", ".join(f"(?{i + first})" for i in range(count))
    return (
        f"WITH n(number) AS (VALUES {numbers}) SELECT n.number AS number, "
        f"(SELECT MAX(nseq) FROM jobs WHERE number=n.number AND login={login}) - "
        f"(SELECT nseq FROM jobs WHERE number=n.number AND created_at>={since} AND +login={login} "
        "ORDER BY created_at LIMIT 1) "
        f"+ 1 - (SELECT COUNT(*) FROM jobs d WHERE d.number=n.number AND d.created_at>={since} "
        f"AND +d.login={login} AND d.state IN ('failed', 'cancelled')) AS count FROM n"
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


@lru_cache(maxsize=256)
def reads_sql(numbers: int, keys: int, per_number: bool, sms_per_day: bool, spend_per_day: bool) -> str:
    """Everything an intake commit reads, as one row: duplicate (0/1), balance, the numbers
    opted out of all senders and of this sender (comma-separated), the hourly count of each
    number with a job this hour (``number:count``, comma-separated), the day's SMS and spend.

    Parameters: ``?1`` login, ``?2`` the day's start, ``?3`` the hour's start, ``?4`` the
    sender (lowercase, or ""), the ``numbers`` from ``?5`` on, then the ``keys``. E.164
    numbers hold no comma nor colon. The parts a mail does not need are constants.
    """
    first_key = 5 + numbers
    in_numbers = ",".join(f"?{5 + i}" for i in range(numbers))
    parts = [
        f"EXISTS (SELECT 1 FROM message_keys WHERE key IN ({','.join(f'?{first_key + i}' for i in range(keys))}))"
        if keys else "0",
        "COALESCE((SELECT balance FROM balances WHERE login=?1), 0)",
    ]
    if numbers:
        parts += [
            f"(SELECT group_concat(number) FROM optouts WHERE number IN ({in_numbers}) AND sender='')",
            f"(SELECT group_concat(number) FROM optouts WHERE number IN ({in_numbers}) AND sender=?4 AND ?4<>'')",
        ]
    else:
        parts += ["NULL", "NULL"]
    parts.append(
        # ``count`` once: a second use would evaluate its subqueries again (NULL: no job)
        f"(SELECT group_concat(number || ':' || count) FROM ({_per_number(numbers, '?3', '?1', 5)}))"
        if numbers and per_number else "NULL")
    parts.append(f"({DAY_COUNT_SQL})" if sms_per_day else "0")
    parts.append(f"({DAY_SPEND_SQL})" if spend_per_day else "0")
    return "SELECT " + ", ".join(parts)


def _read(conn: sqlite3.Connection, plan: Plan, keys: list[str], now: float) -> tuple[bool, int, Counts]:
    """Whether the mail is a duplicate, the account's balance (0 without an account: no row
    matches a NULL login) and what the rules need to know about its numbers and account:
    one statement."""
    limits, login = plan.limits, plan.login
    numbers = sorted({job.number for job in plan.jobs})
    sender = (plan.sender or "").lower()
    sql = reads_sql(len(numbers), len(keys), bool(numbers and limits.per_number_per_hour),
                    bool(numbers and limits.sms_per_day), bool(numbers and limits.spend_per_day))
    # SQLite counts the parameters up to the highest one used: without numbers nor keys, ?1
    args = (login, now - 86400, now - 3600, sender, *numbers, *keys) if numbers or keys else (login,)
    duplicate, available, opted_out, opted_out_sender, hourly, sms_today, spent_today = conn.execute(
        sql, args).fetchone()
    optouts = frozenset(
        [(number, "") for number in (opted_out.split(",") if opted_out else ())]
        + [(number, sender) for number in (opted_out_sender.split(",") if opted_out_sender else ())])
    per_number = {}
    for item in hourly.split(",") if hourly else ():
        number, _, count = item.partition(":")
        if int(count):
            per_number[number] = int(count)
    counts = Counts(optouts=optouts, per_number_hour=per_number, sms_today=sms_today, spent_today=spent_today)
    return bool(duplicate), available, counts
