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
3. The counts (one statement, so its snapshot is taken after the lock), ``rules.screen``
   (pure), then one statement for the message, its jobs, ledger rows, the new balance and
   a ``NOTIFY`` that wakes every instance's dispatcher once the transaction commits; the
   replies, if any.

Each statement is a round trip taken while the account is locked, so there are few.
"""

from __future__ import annotations

import asyncpg

from bridge import rules, status_mail
from bridge.model import Acceptance, Counts, NewJob, Plan
from bridge.store.pg_jobs import hand_off
from bridge.store.pg_sql import Params, queue_reply, spent_so_far
from bridge.store.protocol import Handoff
from bridge.store.sql import due_jobs


class Duplicate(Exception):
    """Raised inside the transaction to roll back a mail whose key was already taken."""


async def commit(conn: asyncpg.Connection, plan: Plan, now: float, channel: str,
                 handoff: Handoff | None = None) -> Acceptance:
    """Apply intake's ``plan`` in the caller's transaction; raises ``Duplicate`` to roll it back.
    With ``handoff``, the calls it plans for the new due jobs are recorded too (one more
    statement per call; ``Acceptance.calling``).

    Four statements besides ``BEGIN`` and ``COMMIT`` (each is a round trip, and every
    commit of one account waits for the previous one to finish): the keys, the lock, the
    counts (a statement of their own, so their snapshot is taken after the lock), the writes.
    """
    message = None
    keys = sorted({k for k in (plan.key, *plan.extra_keys) if k})
    if keys:
        message, taken = await conn.fetchrow(
            "WITH m AS (SELECT nextval(pg_get_serial_sequence('messages', 'id')) AS id), "
            "k AS (INSERT INTO message_keys (key, message) SELECT key, m.id FROM unnest($1::text[]) AS key, m "
            "ON CONFLICT (key) DO NOTHING RETURNING key) "
            "SELECT (SELECT id FROM m), (SELECT COUNT(*) FROM k)", keys)
        if taken < len(keys):
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
    ids = await _write(conn, message, plan, outcome, kept, used, now, channel)
    calling = await hand_off(conn, due_jobs(plan, kept, ids, now), handoff, now) if handoff is not None and ids else ()
    acceptance = Acceptance(outcome, ids, used, available, tuple(refused), status, note, calling)
    for reply in status_mail.after_commit(plan, acceptance, evaluated):
        await queue_reply(conn, reply, now)
    return acceptance


async def _write(conn: asyncpg.Connection, message: int | None, plan: Plan, outcome: str, kept: list[NewJob],
                 used: int, now: float, channel: str) -> tuple[int, ...]:
    """The message, its jobs, their debits, the balance and the wake-up: one statement.

    Job ids are drawn in the order of ``kept`` (``ORDER BY`` ordinality), and the debits
    in the order of the job ids, as the SQLite backend writes them. Each job takes the next
    ranks of its (number, account) and of its account, each debit the account's running
    spend: what the caps count by (``_counts``). The account's row is locked by now, so no
    other instance is handing out the same ranks.
    """
    message_row = ("INSERT INTO messages (id, key, message_id, login, reply_to, summary, outcome, received_at) "
                   "VALUES (COALESCE($1::bigint, nextval(pg_get_serial_sequence('messages', 'id'))), "
                   "$2, $3, $4, $5, $6, $7, $8) RETURNING id")
    args = [message, plan.key, plan.message_id, plan.login, plan.reply_to, plan.summary, outcome, now]
    if not kept:
        await conn.execute(message_row, *args)
        return ()
    rows = await conn.fetch(
        f"WITH msg AS ({message_row}), "
        "j AS (INSERT INTO jobs (message, login, number, text, sender, parts, cost, unicode, low_cost, state, "
        "created_at, next_attempt_at, updated_at, category, nseq, lseq) "
        "SELECT (SELECT id FROM msg), $4, n, t, s, p, c, u, l, 'queued', $8, a, $8, g, "
        "COALESCE((SELECT MAX(nseq) FROM jobs WHERE number = x.n AND login = $4), 0) "
        "+ row_number() OVER (PARTITION BY n ORDER BY o), "
        "COALESCE((SELECT MAX(lseq) FROM jobs WHERE login = $4), 0) + o FROM unnest($9::text[], "
        "$10::text[], $11::text[], $12::int[], $13::int[], $14::bool[], $15::bool[], $16::float8[], $17::text[]) "
        "WITH ORDINALITY AS x(n, t, s, p, c, u, l, a, g, o) ORDER BY o RETURNING id, cost), "
        "d AS (INSERT INTO ledger (login, amount, reason, job, created_at, spent) "
        f"SELECT $4, -cost, 'debit', id, $8, {spent_so_far('$4')} + SUM(cost) OVER (ORDER BY id) FROM j ORDER BY id), "
        "b AS (UPDATE balances SET balance = balance - $18 WHERE login = $4) "
        "SELECT j.id FROM j, (SELECT pg_notify($19, '')) AS wake ORDER BY j.id",
        *args,
        [j.number for j in kept], [j.text for j in kept], [j.sender for j in kept], [j.parts for j in kept],
        [j.cost for j in kept], [bool(j.unicode) for j in kept], [bool(j.low_cost) for j in kept],
        [float(j.send_at) if j.send_at is not None else float(now) for j in kept], [j.category for j in kept],
        used, channel)
    return tuple(row["id"] for row in rows)


async def _lock_balance(conn: asyncpg.Connection, login: str, create: bool) -> int:
    """Lock the account's balances row for this transaction; its balance (0 when none)."""
    if create:
        return await conn.fetchval(
            "INSERT INTO balances VALUES ($1, 0) ON CONFLICT (login) DO UPDATE "
            "SET balance = balances.balance RETURNING balance", login)
    return await conn.fetchval("SELECT balance FROM balances WHERE login=$1 FOR UPDATE", login) or 0


async def _counts(conn: asyncpg.Connection, plan: Plan, now: float) -> Counts:
    """What the rules need to know about this mail's numbers and account: one statement."""
    if not plan.jobs:
        return Counts()
    sql, args = counts_sql(plan, now)
    row = list(await conn.fetchrow(sql, *args))
    limits = plan.limits
    optouts = frozenset(tuple(item.split("\x1f", 1)) for item in row.pop(0) or ())
    per_number: dict[str, int] = {}
    for item in (row.pop(0) or ()) if limits.per_number_per_hour else ():
        number, count = item.split("\x1f")
        per_number[number] = int(count)
    sms_today = row.pop(0) if limits.sms_per_day else 0
    spent_today = row.pop(0) if limits.spend_per_day else 0
    return Counts(optouts=optouts, per_number_hour=per_number, sms_today=sms_today, spent_today=spent_today)


def counts_sql(plan: Plan, now: float) -> tuple[str, list]:
    """The statement ``_counts`` runs for ``plan`` (a mail with jobs), and its arguments:
    the opt-outs, then the hourly counts per number, the day's SMS and the day's spend,
    each only when its cap is set."""
    p = Params()
    numbers = p(sorted({job.number for job in plan.jobs}))
    limits, dropped = plan.limits, "state IN ('failed', 'cancelled')"
    columns = [f"(SELECT array_agg(number || E'\\x1f' || sender) FROM optouts WHERE number = ANY({numbers}::text[]) "
               f"AND sender = ANY({p(['', (plan.sender or '').lower()])}::text[]))"]
    login = p(plan.login) if limits.per_number_per_hour or limits.sms_per_day or limits.spend_per_day else ""
    if limits.per_number_per_hour:
        # by rank (see ``_write``): the newest job's less the hour's first job's, plus one,
        # less the hour's failed or cancelled jobs; numbers without a job this hour left out
        hour = p(now - 3600)
        columns.append(
            f"(SELECT array_agg(u.n || E'\\x1f' || k.c) FROM unnest({numbers}::text[]) AS u(n), LATERAL (SELECT "
            f"(SELECT MAX(nseq) FROM jobs WHERE number = u.n AND login = {login}) - (SELECT nseq FROM jobs "
            f"WHERE number = u.n AND created_at >= {hour}::float8 AND login = {login} ORDER BY created_at, nseq "
            f"LIMIT 1) + 1 - (SELECT COUNT(*) FROM jobs WHERE number = u.n AND created_at >= {hour}::float8 "
            f"AND login = {login} AND {dropped}) AS c) AS k WHERE k.c > 0)")
    day = p(now - 86400) if limits.sms_per_day or limits.spend_per_day else ""
    if limits.sms_per_day:
        columns.append(f"(SELECT COALESCE((SELECT MAX(lseq) FROM jobs WHERE login = {login}) - (SELECT lseq "
                       f"FROM jobs WHERE login = {login} AND created_at >= {day}::float8 ORDER BY created_at, lseq "
                       f"LIMIT 1) + 1, 0) - (SELECT COUNT(*) FROM jobs WHERE login = {login} "
                       f"AND created_at >= {day}::float8 AND {dropped}))")
    if limits.spend_per_day:
        columns.append(f"(SELECT {spent_so_far(login)} - COALESCE((SELECT spent FROM ledger "
                       f"WHERE login = {login} AND created_at < {day}::float8 AND reason IN ('debit', 'refund') "
                       f"ORDER BY created_at DESC, id DESC LIMIT 1), 0))")
    return f"SELECT {', '.join(columns)}", p.args
