"""PostgreSQL transaction bodies of the webhooks (the same semantics as ``sql_twoway``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import asyncpg

from bridge.model import CALL_OUTCOME_SOURCES, Job, JobState, NewReply
from bridge.store.pg_sql import THREAD_SELECT, Params, queue_reply, transition, xact_lock
from bridge.store.sql import job_of
from bridge.store.sql_twoway import ANSWERABLE, OptoutChange


async def report(conn: asyncpg.Connection, job_id: int, state: JobState, error: str | None,
                 provider_message_id: str | None, detail: str, reply: NewReply | None, now: float) -> bool:
    """Apply a delivery report (``delivered``/``undelivered``); False when the job is past it."""
    p = Params()
    sets = (f", provider_message_id=COALESCE({p(provider_message_id)}::text, provider_message_id), "
            f"last_error={p(error)}::text, lease_owner=NULL, lease_until=NULL")
    if not await transition(conn, [job_id], state, CALL_OUTCOME_SOURCES[state], now, sets=sets, p=p):
        return False
    await add_event(conn, job_id, "report", detail, now)
    if reply is not None:
        await queue_reply(conn, reply, now)
    return True


async def inbound(conn: asyncpg.Connection, key: str | None, job_id: int | None, number: str, detail: str,
                  optout: OptoutChange, reply: NewReply | None, now: float) -> bool:
    """Record an inbound SMS, change the opt-outs, queue the mail; False if ``key`` was seen."""
    if not await add_event(conn, job_id, "inbound", detail, now, key):
        return False
    if optout == "add":
        await conn.execute("INSERT INTO optouts VALUES ($1, '', 'sms', $2) ON CONFLICT DO NOTHING", number, now)
    elif optout == "remove":
        await conn.execute("DELETE FROM optouts WHERE number=$1", number)
    if reply is not None:
        await queue_reply(conn, reply, now)
    return True


async def record_calls(conn: asyncpg.Connection, ref: str, rows: Sequence[tuple[float, str, int]]) -> None:
    """The ``sql_twoway.call_events`` rows of the call ``ref``, in the caller's transaction."""
    if rows:
        await conn.executemany(
            "INSERT INTO events (job, at, kind, detail) SELECT id, $1, 'call', "
            "'call ' || $2 || ' to ' || COALESCE(provider, '?') || ': ' || $3 FROM jobs WHERE id=$4",
            [(at, ref, detail[:900], job) for at, detail, job in rows])


async def inbound_part(conn: asyncpg.Connection, prefix: str, index: int, total: int, text: str,
                       now: float) -> list[str] | None:
    """Keep one part of a long inbound SMS (see ``sql_twoway.inbound_part``).

    Parts posted at once to two bridges take turns on an advisory lock, so the last one
    always sees the others committed (under READ COMMITTED each would miss the other).
    """
    await xact_lock(conn, "mail2sms:part", prefix)
    await add_event(conn, None, "part", text, now, f"{prefix}:{index}")
    keys = [f"{prefix}:{i}" for i in range(1, total + 1)]
    found = {r["key"]: r["detail"] for r in await conn.fetch("SELECT key, detail FROM events WHERE key = ANY($1::text[])",
                                                                keys)}
    return [found[k] for k in keys] if len(found) == total else None


async def add_event(conn: asyncpg.Connection, job_id: int | None, kind: str, detail: str, now: float,
                    key: str | None = None) -> bool:
    """One line of a job's history; False when ``key`` is already there."""
    status = await conn.execute(
        "INSERT INTO events (job, at, kind, detail, key) VALUES ($1, $2, $3, $4, $5) ON CONFLICT (key) DO NOTHING",
        job_id, now, kind, detail[:1000], key)
    return status.endswith(" 1")


async def origin(conn: asyncpg.Connection, provider: str, number: str, in_reply_to: str | None,
                 since: float) -> Job | None:
    """The SMS an inbound one answers (see ``sql_twoway.origin``)."""
    if in_reply_to:
        row = await conn.fetchrow(f"{THREAD_SELECT} WHERE j.provider_message_id=$1 AND j.provider=$2 "
                                  "ORDER BY j.id DESC LIMIT 1", in_reply_to, provider)
        if row is not None:
            return job_of(row)
    row = await conn.fetchrow(
        f"{THREAD_SELECT} WHERE j.number=$1 AND j.created_at>=$2 AND j.provider=$3 AND j.state = ANY($4::text[]) "
        "ORDER BY j.id DESC LIMIT 1", number, since, provider, list(ANSWERABLE))
    return job_of(row) if row is not None else None


async def events(conn: asyncpg.Connection, job_id: int) -> list[dict[str, Any]]:
    """A job's events, oldest first."""
    return [dict(r) for r in await conn.fetch("SELECT at, kind, detail FROM events WHERE job=$1 ORDER BY id", job_id)]


async def prune(conn: asyncpg.Connection, before: float) -> int:
    """Forget events (and the webhook keys among them) older than ``before``."""
    status = await conn.execute("DELETE FROM events WHERE at<$1", before)
    return int(status.rsplit(" ", 1)[-1])
