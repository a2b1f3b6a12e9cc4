"""The intake commit on PostgreSQL: dedupe, rules, credit, jobs, replies in one transaction.

Race-free across instances, in this order (the same order everywhere, so no deadlock):

1. **Idempotency keys first**, sorted: ``INSERT ... ON CONFLICT DO NOTHING`` into
   ``message_keys``. A concurrent transaction inserting the same key makes this one wait
   until it commits; then the key is taken and this mail is a ``duplicate`` (its whole
   transaction is rolled back). Never an error, never two messages.
2. **The account's ``balances`` row, locked** (``INSERT ... ON CONFLICT DO UPDATE`` takes
   the row lock and reads the latest committed balance). Every commit of one account
   queues here, on whichever instance it runs: the caps (per number per hour, SMS and
   credits per day) and the credit are all per account, so the counts read after the lock
   include every job committed before it. A row lock rather than ``SERIALIZABLE``: no
   retries under load, and refunds and manual credits (which update the same row) are
   ordered with the commits for free.
3. The counts, ``rules.screen`` (pure), the message, its jobs, ledger rows and the new
   balance, the replies, and a ``NOTIFY`` that wakes every instance's dispatcher once the
   transaction commits.
"""

from __future__ import annotations

import asyncpg

from bridge import rules, status_mail
from bridge.model import Acceptance, Counts, NewJob, Plan
from bridge.store.pg_sql import queue_reply


class Duplicate(Exception):
    """Raised inside the transaction to roll back a mail whose key was already taken."""


async def commit(conn: asyncpg.Connection, plan: Plan, now: float, channel: str) -> Acceptance:
    """Apply intake's ``plan`` in the caller's transaction; raises ``Duplicate`` to roll it back."""
    message = await conn.fetchval("SELECT nextval(pg_get_serial_sequence('messages', 'id'))")
    keys = sorted({k for k in (plan.key, *plan.extra_keys) if k})
    if keys:
        taken = await conn.fetch(
            "INSERT INTO message_keys (key, message) SELECT k, $2 FROM unnest($1::text[]) AS k "
            "ON CONFLICT (key) DO NOTHING RETURNING key", keys, message)
        if len(taken) < len(keys):
            raise Duplicate()
    available = 0
    if plan.login:
        available = await _lock_balance(conn, plan.login, create=bool(plan.jobs))
    kept, refused = rules.screen(plan.jobs, plan.sender, plan.limits, await _counts(conn, plan, now))
    refused = [*plan.refused, *refused]
    used = sum(job.cost for job in kept)
    outcome = "accepted" if kept else "rejected"
    if kept and used > available:
        kept, outcome = [], "insufficient_credit"
    evaluated = bool(plan.jobs or plan.refused)
    status, note = rules.status_of(refused, kept) if evaluated else (0, "")
    await conn.execute(
        "INSERT INTO messages (id, key, message_id, login, reply_to, summary, outcome, received_at) "
        "VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        message, plan.key, plan.message_id, plan.login, plan.reply_to, plan.summary, outcome, now)
    ids: tuple[int, ...] = ()
    if kept:
        ids = await _insert_jobs(conn, message, plan.login, kept, now)
        await conn.execute(
            "INSERT INTO ledger (login, amount, reason, job, created_at) "
            "SELECT $1, -c, 'debit', j, $4 FROM unnest($2::bigint[], $3::int[]) AS u(j, c)",
            plan.login, list(ids), [job.cost for job in kept], now)
        await conn.execute("UPDATE balances SET balance = balance - $2 WHERE login=$1", plan.login, used)
        await conn.execute("SELECT pg_notify($1, '')", channel)
    acceptance = Acceptance(outcome, ids, used, available, tuple(refused), status, note)
    replies = list(plan.replies)
    answer = status_mail.for_acceptance(plan.status, acceptance) if evaluated else None
    if answer is not None:
        replies.append(answer)
    for reply in replies:
        await queue_reply(conn, reply, now)
    return acceptance


async def _lock_balance(conn: asyncpg.Connection, login: str, create: bool) -> int:
    """Lock the account's balances row for this transaction; its balance (0 when none)."""
    if create:
        return await conn.fetchval(
            "INSERT INTO balances VALUES ($1, 0) ON CONFLICT (login) DO UPDATE "
            "SET balance = balances.balance RETURNING balance", login)
    return await conn.fetchval("SELECT balance FROM balances WHERE login=$1 FOR UPDATE", login) or 0


async def _insert_jobs(conn: asyncpg.Connection, message: int, login: str, kept: list[NewJob],
                       now: float) -> tuple[int, ...]:
    """One multi-row insert; the ids in the order of ``kept`` (ids are drawn in that order)."""
    rows = await conn.fetch(
        "INSERT INTO jobs (message, login, number, text, sender, parts, cost, unicode, low_cost, state, "
        "created_at, next_attempt_at, updated_at, category) "
        "SELECT $1, $2, n, t, s, p, c, u, l, 'queued', $3, a, $3, g FROM unnest($4::text[], $5::text[], "
        "$6::text[], $7::int[], $8::int[], $9::bool[], $10::bool[], $11::float8[], $12::text[]) "
        "WITH ORDINALITY AS x(n, t, s, p, c, u, l, a, g, o) ORDER BY o RETURNING id",
        message, login, now,
        [j.number for j in kept], [j.text for j in kept], [j.sender for j in kept], [j.parts for j in kept],
        [j.cost for j in kept], [bool(j.unicode) for j in kept], [bool(j.low_cost) for j in kept],
        [float(j.send_at) if j.send_at is not None else float(now) for j in kept], [j.category for j in kept])
    return tuple(sorted(row["id"] for row in rows))


async def _counts(conn: asyncpg.Connection, plan: Plan, now: float) -> Counts:
    """What the rules need to know about this mail's numbers and account, set-based."""
    if not plan.jobs:
        return Counts()
    numbers = sorted({job.number for job in plan.jobs})
    optouts = frozenset(
        (r["number"], r["sender"]) for r in await conn.fetch(
            "SELECT number, sender FROM optouts WHERE number = ANY($1::text[]) AND sender = ANY($2::text[])",
            numbers, ["", (plan.sender or "").lower()]))
    limits, login = plan.limits, plan.login
    live = "state NOT IN ('failed', 'cancelled')"
    per_number: dict[str, int] = {}
    if limits.per_number_per_hour:
        per_number = {r["number"]: r["count"] for r in await conn.fetch(
            f"SELECT number, COUNT(*) AS count FROM jobs WHERE number = ANY($1::text[]) AND created_at>=$2 "
            f"AND login=$3 AND {live} GROUP BY number", numbers, now - 3600, login)}
    sms_today = spent_today = 0
    if limits.sms_per_day:
        sms_today = await conn.fetchval(
            f"SELECT COUNT(*) FROM jobs WHERE login=$1 AND created_at>=$2 AND {live}", login, now - 86400)
    if limits.spend_per_day:
        spent_today = await conn.fetchval(
            "SELECT -COALESCE(SUM(amount), 0) FROM ledger WHERE login=$1 AND created_at>=$2 "
            "AND reason IN ('debit', 'refund')", login, now - 86400)
    return Counts(optouts=optouts, per_number_hour=per_number, sms_today=sms_today, spent_today=spent_today)
