"""SQLite transaction bodies of the webhooks: delivery reports and inbound SMS.

Each webhook is one transaction: the job's state change (a compare-and-set through the
transition table), the line in ``events`` that ``queue show`` prints, the opt-out change
and the mail to the original sender all commit together or not at all. An inbound SMS the
provider delivers twice is recognised by its key (``inbound:<provider>:<id>``) and dropped.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Any, Literal

from bridge.model import CALL_OUTCOME_SOURCES, Job, JobState, NewReply, Settlement
from bridge.store.sql import THREAD_SELECT, job_of, marks, queue_reply, transition

#: States of a job that went out (or may have): an SMS reply can answer it.
ANSWERABLE = ("calling", "sent", "delivered", "undelivered", "unknown")

OptoutChange = Literal["add", "remove"] | None


def report(conn: sqlite3.Connection, job_id: int, state: JobState, error: str | None,
           provider_message_id: str | None, detail: str, reply: NewReply | None, now: float) -> bool:
    """Apply a delivery report (``delivered``/``undelivered``); False when the job is past it."""
    if not transition(conn, [job_id], state, CALL_OUTCOME_SOURCES[state], now):
        return False
    conn.execute(
        "UPDATE jobs SET provider_message_id=COALESCE(?, provider_message_id), last_error=?, "
        "lease_owner=NULL, lease_until=NULL WHERE id=?",
        (provider_message_id, error, job_id),
    )
    add_event(conn, job_id, "report", detail, now)
    if reply is not None:
        queue_reply(conn, reply, now)
    return True


def inbound(conn: sqlite3.Connection, key: str | None, job_id: int | None, number: str, detail: str,
            optout: OptoutChange, reply: NewReply | None, now: float) -> bool:
    """Record an inbound SMS, change the opt-outs, queue the mail; False if ``key`` was seen."""
    if not add_event(conn, job_id, "inbound", detail, now, key):
        return False
    if optout == "add":
        conn.execute("INSERT OR IGNORE INTO optouts VALUES (?, '', 'sms', ?)", (number, now))
    elif optout == "remove":
        conn.execute("DELETE FROM optouts WHERE number=?", (number,))
    if reply is not None:
        queue_reply(conn, reply, now)
    return True


#: How a call's outcome reads in a job's history (``sent`` is on the job row itself).
CALL_OUTCOMES = {
    JobState.CLAIMED: "not sent, next provider",
    JobState.QUEUED: "not sent, retry later",
    JobState.UNKNOWN: "outcome unknown",
    JobState.FAILED: "refused",
    JobState.DELIVERED: "delivered",
    JobState.UNDELIVERED: "undelivered",
}


def call_events(items: Sequence[Settlement], refused: Sequence[int], now: float) -> list[tuple[float, str, int]]:
    """(at, outcome, job id) for each applied outcome of a call that is not a plain ``sent``.

    Written with the settle, in its transaction: ``queue show`` then lists every call a job
    went through (a successful one is the job's own provider, reference and time). Nothing
    is written on the happy path.
    """
    skip = set(refused)
    return [(now, CALL_OUTCOMES[i.state] + (f" ({i.error})" if i.error else ""), i.job_id)
            for i in items if i.state in CALL_OUTCOMES and i.job_id not in skip]


def record_calls(conn: sqlite3.Connection, ref: str, rows: Sequence[tuple[float, str, int]]) -> None:
    """The ``call_events`` rows of the call ``ref``, in the caller's transaction."""
    if rows:
        conn.executemany(
            "INSERT INTO events (job, at, kind, detail) SELECT id, ?, 'call', "
            "'call ' || ? || ' to ' || COALESCE(provider, '?') || ': ' || ? FROM jobs WHERE id=?",
            [(at, ref, detail[:900], job) for at, detail, job in rows])


def inbound_part(conn: sqlite3.Connection, prefix: str, index: int, total: int, text: str,
                 now: float) -> list[str] | None:
    """Keep part ``index`` of ``total`` (key ``<prefix>:<index>``); all the texts in order once
    every part is there, else None. Idempotent: a part posted twice is kept once."""
    add_event(conn, None, "part", text, now, f"{prefix}:{index}")
    keys = [f"{prefix}:{i}" for i in range(1, total + 1)]
    found = dict(conn.execute(f"SELECT key, detail FROM events WHERE key IN ({marks(keys)})", keys).fetchall())
    return [found[k] for k in keys] if len(found) == total else None


def add_event(conn: sqlite3.Connection, job_id: int | None, kind: str, detail: str, now: float,
              key: str | None = None) -> bool:
    """One line of a job's history; False when ``key`` is already there."""
    return conn.execute(
        "INSERT INTO events (job, at, kind, detail, key) VALUES (?, ?, ?, ?, ?) ON CONFLICT(key) DO NOTHING",
        (job_id, now, kind, detail[:1000], key),
    ).rowcount == 1


def origin(conn: sqlite3.Connection, provider: str, number: str, in_reply_to: str | None,
           since: float) -> Job | None:
    """The SMS an inbound one answers: the one the provider names, else the newest to ``number``
    through ``provider`` since ``since``."""
    if in_reply_to:
        row = conn.execute(f"{THREAD_SELECT} WHERE j.provider_message_id=? AND j.provider=? ORDER BY j.id DESC "
                           "LIMIT 1", (in_reply_to, provider)).fetchone()
        if row is not None:
            return job_of(row)
    row = conn.execute(
        f"{THREAD_SELECT} WHERE j.number=? AND j.created_at>=? AND j.provider=? AND j.state IN ({marks(ANSWERABLE)}) "
        "ORDER BY j.id DESC LIMIT 1", (number, since, provider, *ANSWERABLE)).fetchone()
    return job_of(row) if row is not None else None


def events(conn: sqlite3.Connection, job_id: int) -> list[dict[str, Any]]:
    """A job's events, oldest first."""
    return [dict(r) for r in conn.execute("SELECT at, kind, detail FROM events WHERE job=? ORDER BY id", (job_id,))]


def prune(conn: sqlite3.Connection, before: float) -> int:
    """Forget events (and the webhook keys among them) older than ``before``."""
    return conn.execute("DELETE FROM events WHERE at<?", (before,)).rowcount


__all__: Sequence[str] = ("report", "inbound", "add_event", "origin", "events", "prune", "ANSWERABLE")
