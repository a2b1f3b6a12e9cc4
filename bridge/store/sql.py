"""Shared pieces of the SQLite transaction bodies: row mapping, the state CAS, the ledger."""

from __future__ import annotations

import sqlite3
from collections.abc import Collection, Iterable, Mapping, Sequence
from functools import lru_cache
from typing import Any

import structlog

from bridge.model import IllegalTransition, Job, JobState, NewJob, NewReply, Plan, check_transition
from bridge.status_mail import reply_cap_keys

log = structlog.get_logger("bridge.store")

#: A job with its mail's Message-ID and reply address, the jobs table as ``{j}`` and its
#: mail as ``m``: the columns in ``Job``'s field order up to ``called_at`` (``job_of`` reads
#: them by position: a lookup by name scans every column's name), then the mail's id and
#: ``updated_at`` for the history; a query may add the mail's subject as column 23.
JOB_COLUMNS = (
    "{j}.id, {j}.login, {j}.number, {j}.text, {j}.sender, {j}.parts, {j}.cost, {j}.unicode, {j}.low_cost, "
    "{j}.state, {j}.attempts, {j}.created_at, {j}.next_attempt_at, {j}.provider, {j}.provider_message_id, "
    "{j}.last_error, m.message_id AS mail_message_id, m.reply_to AS mail_reply_to, {j}.category, "
    "{j}.client_ref, {j}.called_at, {j}.message, {j}.updated_at"
)
JOB_SELECT = f"SELECT {JOB_COLUMNS.format(j='j')} FROM jobs j JOIN messages m ON m.id = j.message"
#: ``JOB_SELECT`` with the mail's (redacted) subject, for mails in the thread (webhooks);
#: claims do not read it.
THREAD_SELECT = JOB_SELECT.replace(" FROM jobs", ", m.summary AS mail_summary FROM jobs", 1)
_SUBJECT = 23  # where THREAD_SELECT puts it
_STATES = {state.value: state for state in JobState}


def job_of(row: sqlite3.Row) -> Job:
    """A ``Job`` from a row of ``JOB_COLUMNS`` (``JOB_SELECT``, ``THREAD_SELECT``), SQLite's or
    PostgreSQL's."""
    return Job.of((*row[:7], bool(row[7]), bool(row[8]), _STATES[row[9]], *row[10:21],
                   None, row[_SUBJECT] if len(row) > _SUBJECT else None))  # suppressed, subject


def due_jobs(plan: Plan, kept: Sequence[NewJob], ids: Sequence[int], now: float) -> list[Job]:
    """The jobs an intake commit has just written (``kept``, with their ``ids``) that are due
    now, as a claim would read them (SQLite's or PostgreSQL's): what a handoff is offered."""
    return [Job.of((i, plan.login, j.number, j.text, j.sender, j.parts, j.cost, bool(j.unicode), bool(j.low_cost),
                    JobState.QUEUED, 0, now, now, None, None, None, plan.message_id, plan.reply_to, j.category,
                    None, None, None, None))
            for j, i in zip(kept, ids) if j.send_at is None or j.send_at <= now]


def marks(values: Sequence[Any]) -> str:
    """``?,?,?`` for ``values``."""
    return ",".join("?" * len(values))


def transition(
    conn: sqlite3.Connection,
    ids: Iterable[int],
    target: JobState,
    sources: JobState | frozenset[JobState],
    now: float,
    where: str = "",
    where_args: Sequence[Any] = (),
    sets: str = "",
    set_args: Sequence[Any] = (),
    via: JobState | None = None,
    each: Mapping[int, Sequence[Any]] | None = None,
    each_sets: Sequence[str] = (),
    each_where: Sequence[str] = (),
) -> set[int]:
    """Compare-and-set: the ids of ``ids`` that were in ``sources`` (and matched ``where``).

    Raises ``IllegalTransition`` when a source -> target is not in the table. Moves the
    matching jobs to ``target`` in one ``UPDATE``, with the assignments of ``sets``
    (``", column=?"``, values in ``set_args``), and returns their ids; the others are left
    alone for the caller to report. One id (a one-number call, a report) is told by the
    statement's row count; more by ``RETURNING id``, which costs SQLite a temporary table
    per statement (measured: 14.5 against 8.1 us for a one-row update).

    With ``via``, two moves of the table in one write, source -> ``via`` -> target (a
    claim that records its call): both are checked, the compare is on ``sources``, and the
    state in between is never committed.

    With ``each``, every job has values of its own (``each[id]``): first one for each
    assignment of ``each_sets``, then one for each condition of ``each_where`` (``{}``
    stands for the job's value; an ``updated_at`` of its own replaces ``now``). Jobs of
    several calls, each with its provider and reference, are still one ``UPDATE`` (joined
    to the values), not one per call.
    """
    ids = list(ids)
    try:
        if via is not None:
            sources = check_transition(sources, via)
            check_transition(via, target)
        else:
            sources = check_transition(sources, target)
    except IllegalTransition as exc:
        log.error("illegal_transition", error=str(exc), job_ids=ids[:20])
        raise
    if not ids:
        return set()
    states = [s.value for s in sources]
    stamp = "" if each_sets and any(s.startswith("updated_at=") for s in each_sets) else ", updated_at=?"
    stamped = (now,) if stamp else ()
    if each is not None and len(ids) > 1:
        return _transition_each(conn, ids, target, states, (*stamped, *set_args), where, where_args,
                                stamp + sets, each, each_sets, each_where)
    if each is not None:  # one job: its values are plain parameters
        values = each[ids[0]]
        sets += "".join(", " + s.format("?") for s in each_sets)
        set_args = (*set_args, *values[:len(each_sets)])
        where += "".join(" AND " + w.format("?") for w in each_where)
        where_args = (*where_args, *values[len(each_sets):])
    update = (f"UPDATE jobs SET state=?{stamp}{sets} WHERE id IN ({marks(ids)}) "
              f"AND state IN ({marks(states)}){where}")
    args = (target.value, *stamped, *set_args, *ids, *states, *where_args)
    if len(ids) == 1:
        return set(ids) if conn.execute(update, args).rowcount else set()
    return {row[0] for row in conn.execute(update + " RETURNING id", args)}


#: Jobs per statement of ``_transition_each``.
_EACH_PER_STATEMENT = 500


def _transition_each(conn: sqlite3.Connection, ids: list[int], target: JobState, states: list[str],
                     set_args: Sequence[Any], where: str, where_args: Sequence[Any], sets: str,
                     each: Mapping[int, Sequence[Any]], each_sets: Sequence[str], each_where: Sequence[str]) -> set[int]:
    """``transition`` of several jobs with values of their own: ``UPDATE ... FROM (VALUES ...)``."""
    matched: set[int] = set()
    for at in range(0, len(ids), _EACH_PER_STATEMENT):
        chunk = ids[at:at + _EACH_PER_STATEMENT]
        update = _each_sql(len(chunk), len(states), sets, where, tuple(each_sets), tuple(each_where))
        values = [x for i in chunk for x in (i, *each[i])]
        matched.update([row[0] for row in conn.execute(update, (target.value, *set_args, *values, *states,
                                                                *where_args))])
    return matched


@lru_cache(maxsize=256)
def _each_sql(rows: int, states: int, sets: str, where: str, each_sets: tuple[str, ...],
              each_where: tuple[str, ...]) -> str:
    """The statement of ``_transition_each`` for ``rows`` jobs."""
    width = 1 + len(each_sets) + len(each_where)
    value = iter(f"v.column{n}" for n in range(2, width + 1))
    assign = "".join(", " + s.format(next(value)) for s in each_sets)
    match = "".join(" AND jobs." + w.format(next(value)) for w in each_where)
    values = ",".join([f"({marks(range(width))})"] * rows)
    return (f"UPDATE jobs SET state=?{sets}{assign} FROM (VALUES {values}) AS v "
            f"WHERE jobs.id=v.column1{match} AND state IN ({marks(range(states))}){where} RETURNING jobs.id")


def charges(conn: sqlite3.Connection, ids: Collection[int]) -> dict[int, tuple[str, int]]:
    """(login, cost) of each of ``ids``: what a refund or a new debit of these jobs moves."""
    if not ids:
        return {}
    ids = list(ids)
    return {row[0]: (row[1], row[2]) for row in
            conn.execute(f"SELECT id, login, cost FROM jobs WHERE id IN ({marks(ids)})", ids)}


def balance(conn: sqlite3.Connection, login: str) -> int:
    """The balance of ``login`` (0 when unknown)."""
    row = conn.execute("SELECT balance FROM balances WHERE login=?", (login,)).fetchone()
    return row[0] if row else 0


#: The account's spend so far, debits less refunds: the running total its newest debit or
#: refund carries (parameter ``?1``: the login).
SPENT_SO_FAR = ("COALESCE((SELECT spent FROM ledger WHERE login=?1 AND reason IN ('debit', 'refund') "
                "ORDER BY id DESC LIMIT 1), 0)")
#: One ledger row (login, amount, reason, job, created_at). A debit or refund also carries
#: the running spend, which the daily spend cap reads (``sql_intake.DAY_SPEND_SQL``).
INSERT_LEDGER = ("INSERT INTO ledger (login, amount, reason, job, created_at, spent) VALUES (?1, ?2, ?3, ?4, ?5, "
                 f"CASE WHEN ?3 IN ('debit', 'refund') THEN {SPENT_SO_FAR} - ?2 END)")
#: The account's running balance moved by an amount (login, amount, amount).
ADD_TO_BALANCE = "INSERT INTO balances VALUES (?, ?) ON CONFLICT(login) DO UPDATE SET balance=balance+?"


def move(conn: sqlite3.Connection, login: str, amount: int, reason: str, job: int | None, now: float) -> None:
    """One ledger movement and the running balance, in the caller's transaction."""
    conn.execute(INSERT_LEDGER, (login, amount, reason, job, now))
    conn.execute(ADD_TO_BALANCE, (login, amount, amount))


def cap_checks(reply: NewReply) -> tuple[str, str | None, list[tuple[str, str, int]]]:
    """(mailbox key, domain key, the caps to count: (column, key, cap)) of ``reply``.

    The mailbox folds ``+tags`` (``reply_cap_keys``); the key ``""`` is the global cap
    (every reply). Both backends count these before they queue a reply.
    """
    keys = reply_cap_keys(reply.to)
    mailbox, domain = keys[0], (keys[1] if len(keys) > 1 else None)
    checks = [(column, key, cap) for column, key, cap in (("cap_mailbox", mailbox, reply.max_per_hour),
                                                          ("cap_domain", domain, reply.max_per_domain_per_hour),
                                                          ("cap_total", "", reply.max_total_per_hour))
              if cap and key is not None]
    return mailbox, domain, checks


def queue_reply(conn: sqlite3.Connection, reply: NewReply, now: float) -> int | None:
    """Queue ``reply`` unless its mailbox, its domain, or all of them had their hourly share.

    The mailbox folds ``+tags`` (``reply_cap_keys``), so ``target+1@``, ``target+2@`` ...
    share one count. Counted inside the transaction, so concurrent mails cannot overshoot.
    """
    mailbox, domain, checks = cap_checks(reply)
    for column, key, cap in checks:
        where, args = (f"{column}=? AND ", (key,)) if key else ("", ())
        (recent,) = conn.execute(
            f"SELECT COUNT(*) FROM replies WHERE {where}created_at>=?", (*args, now - 3600)
        ).fetchone()
        if recent >= cap:
            log.info("reply_capped", cap=column.removeprefix("cap_"), to=reply.to[:100], code=reply.code)
            return None
    return conn.execute(
        "INSERT INTO replies (to_addr, code, message, state, created_at, next_attempt_at, cap_mailbox, cap_domain) "
        "VALUES (?, ?, ?, 'queued', ?, ?, ?, ?)",
        (reply.to.lower(), reply.code, reply.message, now, now, mailbox, domain),
    ).lastrowid
