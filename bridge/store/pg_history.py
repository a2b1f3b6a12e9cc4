"""Read-only queries for the operator and the webhooks, on PostgreSQL (see ``sql_history``).

- ``job_history``: everything the store knows about one SMS job (``mail2sms queue show``).
- ``find_job``: the job a provider's delivery report is about, by its message id or by
  the client reference recorded before the call.
"""

from __future__ import annotations

from typing import Any

import asyncpg

from bridge.model import Job
from bridge.store.pg_sql import JOB_SELECT, THREAD_SELECT
from bridge.store.sql import job_of
from bridge.store.sql_history import _REPLY_SCAN, answering


async def job_history(conn: asyncpg.Connection, job_id: int) -> dict[str, Any] | None:
    """The job, its mail, its sibling jobs, its credit movements and its mail's replies."""
    row = await conn.fetchrow(f"{JOB_SELECT} WHERE j.id=$1", job_id)
    if row is None:
        return None
    mail = dict(await conn.fetchrow(
        "SELECT id, message_id, login, reply_to, summary, outcome, received_at FROM messages WHERE id=$1",
        row["message"]))
    siblings = [r[0] for r in await conn.fetch(
        "SELECT id FROM jobs WHERE message=$1 AND id<>$2 ORDER BY id", row["message"], job_id)]
    ledger = [dict(r) for r in await conn.fetch(
        "SELECT amount, reason, created_at FROM ledger WHERE job=$1 ORDER BY id", job_id)]
    return {"job": job_of(row), "updated_at": row["updated_at"], "mail": mail, "siblings": siblings,
            "ledger": ledger, "replies": await _replies_of(conn, mail)}


async def _replies_of(conn: asyncpg.Connection, mail: dict[str, Any]) -> list[dict[str, Any]]:
    """Status mails to the mail's reply address that answer its Message-ID, oldest first."""
    if not mail["reply_to"] or not mail["message_id"]:
        return []
    rows = await conn.fetch(
        "SELECT id, to_addr, code, state, attempts, last_error, created_at, message FROM replies "
        "WHERE to_addr=$1 AND created_at>=$2 ORDER BY id LIMIT $3",
        mail["reply_to"].lower(), mail["received_at"], _REPLY_SCAN)
    return answering(rows, mail["message_id"])


async def find_job(conn: asyncpg.Connection, provider: str, message_id: str | None,
                   client_ref: str | None) -> Job | None:
    """The newest job sent through ``provider`` with this provider message id, else client reference."""
    for column, value in (("provider_message_id", message_id), ("client_ref", client_ref)):
        if not value:
            continue
        row = await conn.fetchrow(
            f"{THREAD_SELECT} WHERE j.{column}=$1 AND j.provider=$2 ORDER BY j.id DESC LIMIT 1", value, provider)
        if row is not None:
            return job_of(row)
    return None
