"""Shared pieces of the PostgreSQL transaction bodies: parameters, the state CAS, the ledger.

The same semantics as ``sql.py`` for SQLite: every state change is one ``UPDATE ... WHERE
state = ANY(sources)`` checked against ``model.TRANSITIONS`` first. Under PostgreSQL's
READ COMMITTED an ``UPDATE`` that finds a row locked by another instance waits for it and
then re-checks its ``WHERE`` on the committed row, so two instances can never both move a
job out of the same state.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

import asyncpg
import structlog

from bridge.model import IllegalTransition, JobState, NewReply, check_transition
from bridge.store.sql import JOB_SELECT, THREAD_SELECT, cap_checks

log = structlog.get_logger("bridge.store")

__all__ = ["JOB_SELECT", "THREAD_SELECT", "DRIVER_ERRORS", "Params", "describe", "transition", "move", "spent_so_far",
           "queue_reply", "xact_lock"]

#: Everything the driver (or the network under it) raises.
DRIVER_ERRORS = (asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError, OSError,
                 asyncio.TimeoutError)
CONNECT_TIMEOUT = 5.0      # seconds to open a connection: SMTP answers 451 rather than hang
ACQUIRE_TIMEOUT = 10.0     # seconds to wait for a free pooled connection
COMMAND_TIMEOUT = 30.0     # seconds for any one statement
POOL_SIZE = 10


def describe(exc: BaseException) -> str:
    """A one-line reason for a driver failure (never the connection URL: it may hold a password)."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class Params:
    """Collects query arguments and names them ``$1``, ``$2``, ... as they are used."""

    def __init__(self) -> None:
        self.args: list[Any] = []

    def __call__(self, value: Any) -> str:
        """The placeholder for ``value``."""
        self.args.append(value)
        return f"${len(self.args)}"


async def transition(
    conn: asyncpg.Connection,
    ids: Iterable[int] | None,
    target: JobState,
    sources: JobState | frozenset[JobState],
    now: float,
    where: dict[str, Any] | None = None,
    sets: str = "",
    p: Params | None = None,
    via: JobState | None = None,
) -> dict[int, asyncpg.Record]:
    """Compare-and-set: move the jobs of ``ids`` (every job if None) that are in ``sources``
    and whose columns equal ``where`` to ``target``; return their (id, login, cost, provider).

    ``sets`` adds assignments to the same ``UPDATE`` (its placeholders come from ``p``).
    Raises ``IllegalTransition`` (and changes nothing) when a source -> target is not in
    the table. Jobs that did not match are left alone for the caller to report. With
    ``via``, two moves in one write, source -> ``via`` -> target, both checked (as SQLite's
    ``transition``).
    """
    id_list = None if ids is None else list(ids)
    try:
        if via is not None:
            sources = check_transition(sources, via)
            check_transition(via, target)
        else:
            sources = check_transition(sources, target)
    except IllegalTransition as exc:
        log.error("illegal_transition", error=str(exc), job_ids=(id_list or [])[:20])
        raise
    if id_list is not None and not id_list:
        return {}
    p = p or Params()
    clauses = [f"state = ANY({p(sorted(s.value for s in sources))}::text[])"]
    if id_list is not None:
        clauses.append(f"id = ANY({p(id_list)}::bigint[])")
    for column, value in (where or {}).items():
        clauses.append(f"{column} = {p(value)}")
    rows = await conn.fetch(
        f"UPDATE jobs SET state={p(target.value)}, updated_at={p(now)}::float8{sets} "
        f"WHERE {' AND '.join(clauses)} RETURNING id, login, cost, provider",
        *p.args,
    )
    return {row["id"]: row for row in rows}


def spent_so_far(login: str) -> str:
    """The account's spend so far, debits less refunds: the running total its newest debit or
    refund carries (``login``: the placeholder of the login)."""
    return (f"COALESCE((SELECT spent FROM ledger WHERE login = {login} AND reason IN ('debit', 'refund') "
            "ORDER BY id DESC LIMIT 1), 0)")


async def move(conn: asyncpg.Connection, login: str, amount: int, reason: str, job: int | None,
               now: float) -> int:
    """One ledger movement and the running balance, in the caller's transaction; the new balance.

    The balance first: that takes the account's row lock, so the ledger row's running spend
    (debits and refunds) is read, in a statement of its own, after every earlier movement of
    the account has committed (see ``pg_intake``).
    """
    balance = await conn.fetchval(
        "INSERT INTO balances VALUES ($1, $2) ON CONFLICT (login) DO UPDATE "
        "SET balance = balances.balance + excluded.balance RETURNING balance",
        login, amount,
    )
    await conn.execute(
        "INSERT INTO ledger (login, amount, reason, job, created_at, spent) VALUES ($1::text, $2::int, $3::text, "
        f"$4, $5, CASE WHEN $3::text IN ('debit', 'refund') THEN {spent_so_far('$1::text')} - $2::int END)",
        login, amount, reason, job, now,
    )
    return balance


async def xact_lock(conn: asyncpg.Connection, *name: str) -> None:
    """Take the transaction-level advisory lock named ``name`` (within this schema)."""
    await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended($1 || current_schema(), 0))",
                       ":".join(name) + ":")


async def queue_reply(conn: asyncpg.Connection, reply: NewReply, now: float) -> int | None:
    """Queue ``reply`` unless its mailbox, its domain, or all of them had their hourly share.

    The caps are ``sql.cap_checks``'s. Each count and the insert
    run under an advisory lock on the key, so mails to two accounts (or on two instances)
    cannot overshoot a cap together.
    """
    mailbox, domain, checks = cap_checks(reply)
    for column, key, cap in checks:
        await xact_lock(conn, "mail2sms:reply", key or "*")
        if key:
            recent = await conn.fetchval(
                f"SELECT COUNT(*) FROM replies WHERE {column}=$1 AND created_at>=$2", key, now - 3600)
        else:
            recent = await conn.fetchval("SELECT COUNT(*) FROM replies WHERE created_at>=$1", now - 3600)
        if recent >= cap:
            log.info("reply_capped", cap=column.removeprefix("cap_"), to=reply.to[:100], code=reply.code)
            return None
    return await conn.fetchval(
        "INSERT INTO replies (to_addr, code, message, state, created_at, next_attempt_at, cap_mailbox, cap_domain) "
        "VALUES ($1, $2, $3, 'queued', $4, $4, $5, $6) RETURNING id",
        reply.to.lower(), reply.code, reply.message, float(now), mailbox, domain)
