"""Read-only queries for the operator and the webhooks (run on the read connection).

- ``job_history``: everything the store knows about one SMS job (``mail2sms queue show``).
- ``find_job``: the job a provider's delivery report is about, by its message id or by
  the client reference recorded before the call.

Status mails are not linked to jobs by a column: one is the mail's when it went to the
mail's reply address and answers its Message-ID (``In-Reply-To``), which is how every
status mail the bridge composes is threaded.
"""

from __future__ import annotations

import email
import email.policy
import sqlite3
from typing import Any

from bridge.model import Job
from bridge.store.sql import JOB_SELECT, THREAD_SELECT, job_of

#: At most this many replies to the mail's address are looked at for its own.
_REPLY_SCAN = 500


def job_history(conn: sqlite3.Connection, job_id: int) -> dict[str, Any] | None:
    """The job, its mail, its sibling jobs, its credit movements and its mail's replies."""
    row = conn.execute(f"{JOB_SELECT} WHERE j.id=?", (job_id,)).fetchone()
    if row is None:
        return None
    job = job_of(row)
    mail = dict(conn.execute(
        "SELECT id, message_id, login, reply_to, summary, outcome, received_at FROM messages WHERE id=?",
        (row["message"],)).fetchone())
    siblings = [r[0] for r in conn.execute(
        "SELECT id FROM jobs WHERE message=? AND id<>? ORDER BY id", (row["message"], job_id))]
    ledger = [dict(r) for r in conn.execute(
        "SELECT amount, reason, created_at FROM ledger WHERE job=? ORDER BY id", (job_id,))]
    return {
        "job": job,
        "updated_at": row["updated_at"],
        "mail": mail,
        "siblings": siblings,
        "ledger": ledger,
        "replies": _replies_of(conn, mail),
    }


def _replies_of(conn: sqlite3.Connection, mail: dict[str, Any]) -> list[dict[str, Any]]:
    """Status mails to the mail's reply address that answer its Message-ID, oldest first."""
    if not mail["reply_to"] or not mail["message_id"]:
        return []
    rows = conn.execute(
        "SELECT id, to_addr, code, state, attempts, last_error, created_at, message FROM replies "
        "WHERE to_addr=? AND created_at>=? ORDER BY id LIMIT ?",
        (mail["reply_to"].lower(), mail["received_at"], _REPLY_SCAN),
    ).fetchall()
    return answering(rows, mail["message_id"])


def answering(rows: Any, message_id: str) -> list[dict[str, Any]]:
    """The reply rows whose mail answers ``message_id`` (``In-Reply-To``), without the mail."""
    wanted = _bare(message_id)
    found = []
    for r in rows:
        parsed = email.message_from_bytes(bytes(r["message"]), policy=email.policy.default)
        if _bare(str(parsed.get("In-Reply-To", ""))) == wanted:
            found.append({k: r[k] for k in r.keys() if k != "message"})
    return found


def _bare(message_id: str) -> str:
    return "".join(message_id.split()).strip("<>").lower()


def find_job(conn: sqlite3.Connection, provider: str, message_id: str | None,
             client_ref: str | None) -> Job | None:
    """The newest job sent through ``provider`` with this provider message id, else client reference.

    A reference names one call: with a bulk provider it is shared by every job of that
    call, so only the message id tells them apart (the ``http`` provider sends one number
    per call).
    """
    for column, value in (("provider_message_id", message_id), ("client_ref", client_ref)):
        if not value:
            continue
        row = conn.execute(
            f"{THREAD_SELECT} WHERE j.{column}=? AND j.provider=? ORDER BY j.id DESC LIMIT 1", (value, provider)
        ).fetchone()
        if row is not None:
            return job_of(row)
    return None
