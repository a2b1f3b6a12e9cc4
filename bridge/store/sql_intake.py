"""The intake commit (run on the writer thread): dedupe, rules, credit, jobs, replies.

The counts the rules need are read here, inside the transaction, so two mails racing for
the last credits or the last SMS of a cap cannot both pass; the decision itself is
``rules.screen`` (pure). Everything the commit reads (is the mail a duplicate, the
account's balance, the opt-outs and hourly counts of all the mail's numbers, the daily
counts, the ranks and running spend the new rows continue) is one statement
(``reads_sql``): less SQL and Python per commit than a statement each, and fewer times the
writer thread lets go of the GIL and waits for the event loop to give it back (sqlite3
lets go at every statement step). The jobs and debits it writes are one statement each.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

from bridge import rules, status_mail
from bridge.model import Acceptance, Counts, Job, JobState, NewJob, Plan, check_transition
from bridge.store.protocol import Handoff
from bridge.store.sql import ADD_TO_BALANCE, SPENT_SO_FAR, due_jobs, queue_reply


#: The columns of a new job, in the order ``_insert_jobs`` gives them. A job takes the next
#: rank among the jobs of its (number, account) and of its account (``nseq``, ``lseq``: what
#: the caps count by, see ``reads_sql``); the ranks come from the commit's reads, so the
#: jobs of a mail are one multi-row ``INSERT`` (a statement per row ran SQLite's program,
#: its twelve cursors and two rank lookups again for each), and so are their debits.
_JOB_COLUMNS = ("id, message, login, number, text, sender, parts, cost, unicode, low_cost, state, created_at, "
                "next_attempt_at, updated_at, category, nseq, lseq, attempts, provider, client_ref, called_at, "
                "lease_owner, lease_until")
_JOB_VALUES = "(" + ",".join("?" * 23) + ")"
_LEDGER_VALUES = "(?,?,'debit',?,?,?)"
#: Rows per multi-row ``INSERT`` (fewer when SQLite's limit on parameters is lower).
_ROWS_PER_INSERT = 500


def commit(conn: sqlite3.Connection, plan: Plan, now: float, handoff: Handoff | None = None) -> Acceptance:
    """Apply intake's ``plan``; return what was done. With ``handoff``, the calls it plans for
    the new due jobs are recorded too (``Acceptance.calling``)."""
    keys = [k for k in (plan.key, *plan.extra_keys) if k]
    duplicate, available, counts, ranks = _read(conn, plan, keys, now)
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
    calling: tuple[Job, ...] = ()
    if kept:
        ids = tuple(range(ranks.next_id, ranks.next_id + len(kept)))
        due = due_jobs(plan, kept, ids, now) if handoff is not None else []
        calls = _handed_off(due, handoff) if due else {}
        _insert_jobs(conn, message, plan.login, kept, ids, ranks, calls, handoff, now)
        spent, debits = ranks.spent, []
        for job, job_id in zip(kept, ids):
            spent += job.cost
            debits += (plan.login, -job.cost, job_id, now, spent)
        _insert_rows(conn, "INSERT INTO ledger (login, amount, reason, job, created_at, spent) VALUES ",
                     _LEDGER_VALUES, 5, debits)
        conn.execute(ADD_TO_BALANCE, (plan.login, -used, -used))
        calling = tuple(job.calling(*calls[job.id]) for job in due if job.id in calls)
    acceptance = Acceptance(outcome, ids, used, available, tuple(refused), status, note, calling)
    for reply in status_mail.after_commit(plan, acceptance, evaluated):
        queue_reply(conn, reply, now)
    return acceptance


@dataclass(frozen=True)
class Ranks:
    """What a commit's new jobs and debits continue from, read with the rest (``reads_sql``):
    the newest rank of each number (of the account) that has jobs, the account's newest
    rank, its running spend, and the id the first new job takes."""

    number: dict[str, int]
    login: int
    spent: int
    next_id: int = 1


def _handed_off(due: list[Job], handoff: Handoff) -> dict[int, tuple[str, str]]:
    """The calls ``handoff`` plans for the new ``due`` jobs, as (provider, reference) by job id.

    Those jobs are written ``calling`` (``queued -> claimed -> calling``, the moves a claim
    that records its call makes, checked against the table here): the jobs are new to this
    transaction, so there is no state to compare, and an ``UPDATE`` after the ``INSERT``
    only rewrote the rows and their index entries again.
    """
    check_transition(JobState.QUEUED, JobState.CLAIMED)
    check_transition(JobState.CLAIMED, JobState.CALLING)
    return {i: (name, ref) for job_ids, name, ref in handoff.plan(due) for i in job_ids}


def _insert_jobs(conn: sqlite3.Connection, message: int, login: str, kept: Sequence[NewJob], ids: Sequence[int],
                 ranks: Ranks, calls: dict[int, tuple[str, str]], handoff: Handoff | None, now: float) -> None:
    """Insert ``kept`` as ``ids``, with the next ranks; those ``calls`` names as ``calling``,
    leased to the handoff's owner, their call counted as an attempt."""
    seq, lseq, rows = dict(ranks.number), ranks.login, []
    for j, job_id in zip(kept, ids):
        seq[j.number] = nseq = seq.get(j.number, 0) + 1
        lseq += 1
        call = calls.get(job_id)
        rows += (job_id, message, login, j.number, j.text, j.sender, j.parts, j.cost, j.unicode, j.low_cost,
                 JobState.CALLING.value if call else JobState.QUEUED.value, now,
                 j.send_at if j.send_at is not None else now, now, j.category, nseq, lseq,
                 *((1, *call, now, handoff.owner, now + handoff.lease) if call else _NOT_CALLED))
    _insert_rows(conn, f"INSERT INTO jobs ({_JOB_COLUMNS}) VALUES ", _JOB_VALUES, 23, rows)


#: A new job's attempts, provider, reference, call time, lease owner and end, when no call is made.
_NOT_CALLED = (0, None, None, None, None, None)


def _insert_rows(conn: sqlite3.Connection, insert: str, values: str, width: int, flat: list) -> int:
    """``insert`` + ``values`` once per ``width`` items of ``flat``, in as few statements as
    SQLite's limit on parameters allows; the rowid of the last row."""
    per = max(1, min(_ROWS_PER_INSERT, conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) // width))
    step, last = per * width, 0
    for at in range(0, len(flat), step):
        chunk = flat[at:at + step]
        last = conn.execute(insert + ",".join([values] * (len(chunk) // width)), chunk).lastrowid
    return last


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


#: The id the next new job takes: above every job there is, and above every job ever pruned
#: (``sql_jobs.prune`` keeps the highest in ``meta``): an id is the job's client reference at
#: the providers (``m2s-<id>-<attempt>``) and its key in the ledger, which is kept whole.
NEXT_JOB_ID = ("(MAX(COALESCE((SELECT MAX(id) FROM jobs), 0), "
               "COALESCE((SELECT CAST(value AS INTEGER) FROM meta WHERE key='job_id_floor'), 0)) + 1)")


@lru_cache(maxsize=256)
def reads_sql(numbers: int, keys: int, per_number: bool, sms_per_day: bool, spend_per_day: bool) -> str:
    """Everything an intake commit reads, as one row: duplicate (0/1), balance, the numbers
    opted out of all senders and of this sender (comma-separated), the numbers' ranks, the
    day's SMS and spend, the account's newest rank and its running spend.

    The numbers' ranks are ``number:top`` for each number that has jobs of the account
    (``top``: its newest rank, ``nseq``), comma-separated; with ``per_number`` each is
    ``number:top:first:dropped``, what the hour's count is made of. Every job has its rank
    among the jobs of its (number, account), given at insert, so the hour's count is
    ``top`` less the rank of the hour's first job (``first``, empty when the number had no
    job this hour), plus one, less the failed and cancelled jobs of the hour (``dropped``,
    through their partial index): a few index seeks, however many SMS the number had this
    hour. ``+login`` keeps SQLite on the number's index, not the account's (the whole
    backlog). Each part is worked out once (the count is made in Python): an expression
    used twice would run its subqueries twice.

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
        hour = (" || ':' || COALESCE((SELECT nseq FROM jobs WHERE number=n.number AND created_at>=?3 "
                "AND +login=?1 ORDER BY created_at LIMIT 1), '') || ':' || (SELECT COUNT(*) FROM jobs d "
                "WHERE d.number=n.number AND d.created_at>=?3 AND +d.login=?1 "
                "AND d.state IN ('failed', 'cancelled'))") if per_number else ""
        parts += [
            f"(SELECT group_concat(number) FROM optouts WHERE number IN ({in_numbers}) AND sender='')",
            f"(SELECT group_concat(number) FROM optouts WHERE number IN ({in_numbers}) AND sender=?4 AND ?4<>'')",
            f"(WITH n(number) AS (VALUES {', '.join(f'(?{5 + i})' for i in range(numbers))}) "
            "SELECT group_concat(n.number || ':' || (SELECT MAX(nseq) FROM jobs WHERE number=n.number "
            f"AND login=?1){hour}) FROM n)",
        ]
    else:
        parts += ["NULL", "NULL", "NULL"]
    parts.append(f"({DAY_COUNT_SQL})" if sms_per_day else "0")
    parts.append(f"({DAY_SPEND_SQL})" if spend_per_day else "0")
    parts.append("COALESCE((SELECT MAX(lseq) FROM jobs WHERE login=?1), 0)" if numbers else "0")
    parts.append(SPENT_SO_FAR if numbers else "0")
    parts.append(f"{NEXT_JOB_ID}" if numbers else "1")
    return "SELECT " + ", ".join(parts)


def _read(conn: sqlite3.Connection, plan: Plan, keys: list[str], now: float) -> tuple[bool, int, Counts, Ranks]:
    """Whether the mail is a duplicate, the account's balance (0 without an account: no row
    matches a NULL login), what the rules need to know about its numbers and account, and
    the ranks its jobs continue from: one statement."""
    limits, login = plan.limits, plan.login
    numbers = sorted({job.number for job in plan.jobs})
    sender = (plan.sender or "").lower()
    sql = reads_sql(len(numbers), len(keys), bool(numbers and limits.per_number_per_hour),
                    bool(numbers and limits.sms_per_day), bool(numbers and limits.spend_per_day))
    # SQLite counts the parameters up to the highest one used: without numbers nor keys, ?1
    args = (login, now - 86400, now - 3600, sender, *numbers, *keys) if numbers or keys else (login,)
    duplicate, available, opted_out, opted_out_sender, seen, sms_today, spent_today, lseq, spent, next_id = (
        conn.execute(sql, args).fetchone())
    optouts = frozenset(
        [(number, "") for number in (opted_out.split(",") if opted_out else ())]
        + [(number, sender) for number in (opted_out_sender.split(",") if opted_out_sender else ())])
    tops, per_number = {}, {}
    for item in seen.split(",") if seen else ():
        number, top, *hour = item.split(":")
        tops[number] = int(top)
        if hour and hour[0]:
            count = int(top) - int(hour[0]) + 1 - int(hour[1])
            if count:
                per_number[number] = count
    counts = Counts(optouts=optouts, per_number_hour=per_number, sms_today=sms_today, spent_today=spent_today)
    return bool(duplicate), available, counts, Ranks(tops, lseq, spent, next_id)
