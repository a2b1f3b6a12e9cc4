"""The PostgreSQL backend of the ``Store`` protocol: several bridges, one queue.

asyncpg with its pool: every method runs in one transaction on a pooled connection. A
driver failure of any kind (server gone, connection reset, timeout) becomes a
``StoreError``, so SMTP answers ``451`` and the loops retry; the pool drops broken
connections and opens new ones, so the store works again by itself once the server is
back. Writes are shielded from the caller's cancellation (as SQLite's writer does): a
shutdown cannot abandon a transaction halfway and lose track of whether it committed.

The transaction bodies live in ``pg_intake`` and ``pg_jobs``; the schema in ``pg_schema``.
The tables and their columns are those of the SQLite backend. Cross-instance pieces:
``listen`` (``LISTEN``/``NOTIFY`` wake-ups when jobs are committed) and ``mailbox_lock``
(a session advisory lock: one poller per IMAP mailbox).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, Literal, TypeVar

import asyncpg
import structlog

from bridge.errors import StoreError
from bridge.model import Acceptance, Job, JobState, NewReply, Plan, Reply, ReplyState, Settlement
from bridge.store import pg_history, pg_instances, pg_intake, pg_jobs, pg_twoway, sql_twoway
from bridge.store.pg_schema import migrate
from bridge.store.pg_sql import (ACQUIRE_TIMEOUT, COMMAND_TIMEOUT, CONNECT_TIMEOUT, DRIVER_ERRORS, JOB_SELECT,
                                 POOL_SIZE, describe as _describe, move, queue_reply)
from bridge.store.protocol import CallPlan, Handoff, MailboxLock
from bridge.store.sql import job_of

log = structlog.get_logger("bridge.store")
T = TypeVar("T")

REPLY_LEASE = 300.0        # a claimed reply is not handed to another instance for this long


class PostgresStore:
    """The PostgreSQL store. Open with ``await PostgresStore.open(url)``; close with ``close()``."""

    def __init__(self, url: str, pool: asyncpg.Pool, schema: str) -> None:
        self.url = url
        self.schema = schema
        self.channel = f"mail2sms_jobs:{schema}"   # NOTIFY is per database; one channel per schema
        self._pool = pool
        self._writes: set[asyncio.Task] = set()
        self._closed = False

    @classmethod
    async def open(cls, url: str) -> "PostgresStore":
        """Connect to ``url`` (``postgresql://user@host:port/db``), migrating the schema as needed.

        Query parameters other than libpq's connection options are session settings, so
        ``?search_path=mail2sms`` keeps the bridge's tables in schema ``mail2sms``.

        The sessions use generic plans (``plan_cache_mode``, unless the URL sets it). Every
        statement of the bridge finds rows by key through an index, whatever its parameters;
        PostgreSQL would plan the intake's counts again at every execution (each has a
        ``created_at >= $n`` whose selectivity it re-estimates): 0.3 ms of planning for a
        0.05 ms statement, in the commit every mail of the account waits for.
        """
        settings = {} if "plan_cache_mode=" in url else {"plan_cache_mode": "force_generic_plan"}
        try:
            pool = await asyncpg.create_pool(
                url, min_size=0, max_size=POOL_SIZE, timeout=CONNECT_TIMEOUT, reset=_keep_session,
                command_timeout=COMMAND_TIMEOUT, max_inactive_connection_lifetime=300, server_settings=settings)
        except DRIVER_ERRORS as exc:
            raise StoreError(f"cannot open the PostgreSQL store: {_describe(exc)}") from None
        try:
            async with pool.acquire(timeout=ACQUIRE_TIMEOUT) as conn:
                await migrate(conn)
                schema = await conn.fetchval("SELECT current_schema()")
        except BaseException as exc:
            await _close_pool(pool)
            if isinstance(exc, DRIVER_ERRORS):
                raise StoreError(f"cannot open the PostgreSQL store: {_describe(exc)}") from None
            raise
        if schema is None:
            await _close_pool(pool)
            raise StoreError("no schema of the search_path exists in that database")
        return cls(url, pool, schema)

    async def close(self) -> None:
        """Let writes in flight finish, then close the pool (a second call does nothing)."""
        if self._closed:
            return
        self._closed = True
        if self._writes:
            await asyncio.wait(set(self._writes), timeout=COMMAND_TIMEOUT)
        await _close_pool(self._pool)

    # --- running transactions --------------------------------------------------------------

    async def write(self, fn: Callable[[asyncpg.Connection], Awaitable[T]], single: bool = False) -> T:
        """Run ``fn`` in a transaction; return once it is committed.

        ``single``: ``fn`` runs one statement, which is a transaction by itself (no
        ``BEGIN``/``COMMIT``: two round trips fewer). The transaction runs in its own task:
        a cancelled caller does not cut it short. A deadlock or serialization failure
        (another instance won a race) is retried.
        """
        if self._closed:
            raise StoreError("store is closed")
        task = asyncio.ensure_future(self._transaction(fn, single))
        self._writes.add(task)
        task.add_done_callback(_forget(self._writes))
        try:
            return await asyncio.shield(task)
        except DRIVER_ERRORS as exc:
            raise StoreError(_describe(exc)) from None

    async def _transaction(self, fn: Callable[[asyncpg.Connection], Awaitable[T]], single: bool) -> T:
        for attempt in range(5):
            try:
                async with self._pool.acquire(timeout=ACQUIRE_TIMEOUT) as conn:
                    if single:
                        return await fn(conn)
                    async with conn.transaction():
                        return await fn(conn)
            except asyncpg.TransactionRollbackError as exc:
                if attempt == 4:
                    raise
                log.info("store_retry", error=str(exc), attempt=attempt + 1)
        raise AssertionError("unreachable")

    async def read(self, fn: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        """Run ``fn`` on a pooled connection (one statement: its own snapshot)."""
        if self._closed:
            raise StoreError("store is closed")
        try:
            async with self._pool.acquire(timeout=ACQUIRE_TIMEOUT) as conn:
                return await fn(conn)
        except DRIVER_ERRORS as exc:
            raise StoreError(_describe(exc)) from None

    async def _fetch(self, query: str, *args: Any) -> list[asyncpg.Record]:
        return await self.read(lambda c: c.fetch(query, *args))

    async def _fetchval(self, query: str, *args: Any) -> Any:
        return await self.read(lambda c: c.fetchval(query, *args))

    async def ping(self) -> None:
        """Raise ``StoreError`` unless the server answers."""
        await self._fetchval("SELECT 1")

    # --- accounts and credit ---------------------------------------------------------------

    async def open_accounts(self, opening: Mapping[str, int], now: float) -> None:
        """Give each account its opening balance, once (also when instances start together)."""

        async def apply(conn: asyncpg.Connection) -> None:
            for login, credits in opening.items():
                if await conn.fetchval("INSERT INTO balances VALUES ($1, 0) ON CONFLICT (login) DO NOTHING "
                                       "RETURNING login", login):
                    await move(conn, login, credits, "opening", None, now)

        await self.write(apply)

    async def credit(self, login: str, amount: int, reason: str, now: float) -> int:
        """Add ``amount`` (negative to remove) to ``login``; return the new balance."""
        return await self.write(lambda c: move(c, login, amount, reason, None, now))

    async def balances(self) -> dict[str, int]:
        """Every account's balance."""
        return {r["login"]: r["balance"] for r in await self._fetch("SELECT login, balance FROM balances")}

    async def ledger(self, login: str) -> list[dict[str, Any]]:
        """Every credit movement of ``login``, oldest first."""
        rows = await self._fetch(
            "SELECT amount, reason, job, created_at FROM ledger WHERE login=$1 ORDER BY id", login)
        return [dict(r) for r in rows]

    # --- intake ----------------------------------------------------------------------------

    async def commit(self, plan: Plan, now: float, handoff: Handoff | None = None) -> Acceptance:
        """Apply intake's plan: dedupe, rules, credit, jobs and debits, replies, and the calls
        ``handoff`` plans; one transaction."""
        try:
            return await self.write(lambda c: pg_intake.commit(c, plan, float(now), self.channel, handoff))
        except pg_intake.Duplicate:
            return Acceptance("duplicate")

    # --- the job life cycle (see bridge.model) ---------------------------------------------

    async def claim(self, owner: str, now: float, limit: int, lease: float, only: Sequence[int] = (),
                    plan: CallPlan | None = None) -> list[Job]:
        """Take up to ``limit`` due queued jobs (of ``only``, if given) under a lease; record
        the calls of ``plan`` in the same transaction."""
        return await self.write(lambda c: pg_jobs.claim(c, owner, now, limit, now + lease, list(only), plan),
                                plan is None)

    async def start_call(self, owner: str, ids: Sequence[int], provider: str, ref: str, now: float,
                         lease: float) -> list[int]:
        """Record a call before it is made; return the ids still leased to ``owner``."""
        return await self.write(lambda c: pg_jobs.start_call(c, owner, list(ids), provider, ref, now, now + lease),
                                single=True)

    async def settle_call(self, ref: str, items: Sequence[Settlement], now: float, lease: float = 0.0) -> list[int]:
        """Write the outcomes of the call ``ref`` in one transaction; return the ids refused."""
        async def settle(c: asyncpg.Connection) -> list[int]:
            refused = await pg_jobs.settle_call(c, ref, list(items), now, now + lease)
            await pg_twoway.record_calls(c, ref, sql_twoway.call_events(items, refused, now))
            return refused
        # a plain success is one statement (no history row to add): no BEGIN/COMMIT round trips
        quiet = not sql_twoway.call_events(items, (), now)
        return await self.write(settle, single=quiet and pg_jobs.one_statement(items))

    async def settle_claimed(self, owner: str, items: Sequence[Settlement], now: float) -> list[int]:
        """Outcomes decided before any call (deferred, refused); return the ids refused."""
        return await self.write(lambda c: pg_jobs.settle_claimed(c, owner, list(items), now),
                                single=pg_jobs.one_statement(items))

    async def sweep(self, now: float, dead_owners: Sequence[str] = ()) -> tuple[list[int], list[int]]:
        """Expired leases: claimed -> queued, calling -> unknown; (requeued, unknown) ids."""
        return await self.write(lambda c: pg_jobs.sweep(c, now, list(dead_owners)))

    async def lease_owners(self) -> list[str]:
        """The owners of every lease currently held."""
        rows = await self._fetch("SELECT DISTINCT lease_owner FROM jobs WHERE state IN ('claimed', 'calling') "
                                 "AND lease_owner IS NOT NULL ORDER BY lease_owner")
        return [r[0] for r in rows]

    async def defer_logins(self, logins: Sequence[str], until: float, reason: str, now: float) -> int:
        """Push every due queued job of these accounts to ``until`` in one write."""
        return await self.write(lambda c: pg_jobs.defer_logins(c, list(logins), until, reason, now), True)

    async def next_due(self) -> float | None:
        """When the next queued job is due (epoch seconds), or None."""
        return await self._fetchval("SELECT MIN(next_attempt_at) FROM jobs WHERE state='queued'")

    async def unknown_jobs(self, called_before: float, limit: int, after_id: int = 0) -> list[Job]:
        """``unknown`` jobs (of id > ``after_id``) whose call is older than ``called_before``, by id."""
        rows = await self._fetch(
            f"{JOB_SELECT} WHERE j.state='unknown' AND COALESCE(j.called_at, 0)<$1 AND j.id>$2 "
            "ORDER BY j.id LIMIT $3", float(called_before), after_id, limit)
        return [job_of(r) for r in rows]

    async def sent_times(self, since: float) -> dict[str, list[float]]:
        """When each account's calls were made since ``since`` (rebuilds rate windows)."""
        rows = await self._fetch(
            "SELECT login, called_at FROM jobs WHERE called_at>=$1 ORDER BY called_at", float(since))
        times: dict[str, list[float]] = {}
        for row in rows:
            times.setdefault(row["login"], []).append(row["called_at"])
        return times

    async def requeue(self, job_id: int, now: float) -> bool:
        """Operator: send a ``failed`` or ``unknown`` job again (re-debiting a refund)."""
        return await self.write(lambda c: pg_jobs.requeue(c, job_id, now, self.channel))

    async def cancel(self, job_id: int, now: float) -> bool:
        """Operator: a ``queued`` job is not sent; its credit is refunded."""
        return await self.write(lambda c: pg_jobs.cancel(c, job_id, now))

    async def prune(self, before: float) -> dict[str, int]:
        """Delete finished jobs, sent replies and their mails older than ``before``."""
        async def prune(c: asyncpg.Connection) -> dict[str, int]:
            return {**await pg_jobs.prune(c, before), "events": await pg_twoway.prune(c, before)}
        return await self.write(prune)

    async def job_history(self, job_id: int) -> dict[str, Any] | None:
        """Everything known about one job (see ``pg_history.job_history``), or None."""
        async def history(c: asyncpg.Connection) -> dict[str, Any] | None:
            found = await pg_history.job_history(c, job_id)
            return None if found is None else {**found, "events": await pg_twoway.events(c, job_id)}
        return await self.read(history)

    async def find_job(self, provider: str, message_id: str | None = None,
                       client_ref: str | None = None) -> Job | None:
        """The job ``provider`` knows by ``message_id`` (else by our ``client_ref``), or None."""
        return await self.read(lambda c: pg_history.find_job(c, provider, message_id, client_ref))

    async def report_delivery(self, job_id: int, state: JobState, error: str | None,
                              provider_message_id: str | None, detail: str, reply: NewReply | None,
                              now: float) -> bool:
        """A delivery report, its event and its mail in one transaction (see ``Store``)."""
        return await self.write(lambda c: pg_twoway.report(c, job_id, state, error, provider_message_id,
                                                           detail, reply, now))

    async def record_inbound(self, key: str | None, job_id: int | None, number: str, detail: str,
                             optout: Literal["add", "remove"] | None, reply: NewReply | None, now: float) -> bool:
        """An inbound SMS, its opt-out change and its mail in one transaction (see ``Store``)."""
        return await self.write(lambda c: pg_twoway.inbound(c, key, job_id, number, detail, optout, reply, now))

    async def inbound_part(self, prefix: str, index: int, total: int, text: str, now: float) -> list[str] | None:
        """One part of a long inbound SMS; all their texts once complete (see ``Store``)."""
        return await self.write(lambda c: pg_twoway.inbound_part(c, prefix, index, total, text, now))

    async def find_origin(self, provider: str, number: str, in_reply_to: str | None, since: float) -> Job | None:
        """The SMS an inbound one answers (see ``sql_twoway.origin``)."""
        return await self.read(lambda c: pg_twoway.origin(c, provider, number, in_reply_to, since))

    async def jobs(self, state: str | None = None, limit: int = 50) -> list[Job]:
        """Jobs, newest first, optionally in one state."""
        if state:
            rows = await self._fetch(f"{JOB_SELECT} WHERE j.state=$1 ORDER BY j.id DESC LIMIT $2", state, limit)
        else:
            rows = await self._fetch(f"{JOB_SELECT} ORDER BY j.id DESC LIMIT $1", limit)
        return [job_of(r) for r in rows]

    async def job(self, job_id: int) -> Job | None:
        """One job by id."""
        rows = await self._fetch(f"{JOB_SELECT} WHERE j.id=$1", job_id)
        return job_of(rows[0]) if rows else None

    async def count_jobs(self) -> dict[str, int]:
        """How many jobs are in each state."""
        return {r[0]: r[1] for r in await self._fetch("SELECT state, COUNT(*) FROM jobs GROUP BY state")}

    # --- replies ---------------------------------------------------------------------------

    async def queue_reply(self, reply: NewReply, now: float) -> int | None:
        """Queue a reply outside intake (None when the address's hourly cap is reached)."""
        return await self.write(lambda c: queue_reply(c, reply, now))

    async def claim_replies(self, now: float, limit: int) -> list[Reply]:
        """Due queued replies, each handed to one instance only.

        A claimed reply's next attempt moves ``REPLY_LEASE`` ahead, so another instance
        does not send it too; ``finish_reply`` then records what happened. If this
        instance dies first, the reply is sent after the lease.
        """
        rows = await self.write(lambda c: c.fetch(
            "UPDATE replies r SET next_attempt_at=$2 FROM (SELECT id FROM replies WHERE state='queued' "
            "AND next_attempt_at<=$1 ORDER BY next_attempt_at, id LIMIT $3 FOR UPDATE SKIP LOCKED) due "
            "WHERE r.id = due.id RETURNING r.*", float(now), float(now) + REPLY_LEASE, limit), single=True)
        rows = sorted(rows, key=lambda r: r["id"])
        return [Reply(r["id"], r["to_addr"], r["code"], bytes(r["message"]), r["attempts"], r["created_at"])
                for r in rows]

    async def retry_reply(self, reply_id: int, now: float) -> bool:
        """Operator: a ``failed`` status mail goes back to the queue; False if it had not failed."""
        status = await self.write(lambda c: c.execute(
            "UPDATE replies SET state='queued', next_attempt_at=$1, created_at=$1 WHERE id=$2 AND state='failed'",
            float(now), reply_id), single=True)
        return status.endswith(" 1")

    async def finish_reply(self, reply_id: int, state: str, error: str | None, when: float, now: float) -> None:
        """Record a reply's outcome: ``sent``, ``failed``, or ``queued`` again at ``when``."""
        await self.write(lambda c: c.execute(
            "UPDATE replies SET state=$1, attempts=attempts+1, last_error=$2, next_attempt_at=$3 WHERE id=$4",
            ReplyState(state).value, error, float(when), reply_id), single=True)

    async def count_replies(self, state: str) -> int:
        """How many replies are in ``state`` (queued, sent, failed)."""
        return await self._fetchval("SELECT COUNT(*) FROM replies WHERE state=$1", state)

    async def replies(self, state: str | None = None) -> list[dict[str, Any]]:
        """Replies (for tests and the operator), oldest first."""
        columns = "SELECT id, to_addr, code, state, attempts, last_error, created_at FROM replies"
        if state:
            rows = await self._fetch(f"{columns} WHERE state=$1 ORDER BY id", state)
        else:
            rows = await self._fetch(f"{columns} ORDER BY id")
        return [dict(r) for r in rows]

    # --- IMAP mailboxes --------------------------------------------------------------------

    async def mailbox_state(self, name: str) -> tuple[int, int] | None:
        """(UIDVALIDITY, last UID processed) of mailbox ``name``, or None if never seen."""
        rows = await self._fetch("SELECT uidvalidity, last_uid FROM mailboxes WHERE name=$1", name)
        return (rows[0][0], rows[0][1]) if rows else None

    async def set_mailbox_state(self, name: str, uidvalidity: int, last_uid: int) -> None:
        """Remember how far mailbox ``name`` was processed (a UIDVALIDITY change resets it)."""
        await self.write(lambda c: c.execute(
            "INSERT INTO mailboxes VALUES ($1, $2, $3) ON CONFLICT (name) DO UPDATE SET "
            "uidvalidity=excluded.uidvalidity, last_uid=CASE WHEN mailboxes.uidvalidity=excluded.uidvalidity "
            "THEN GREATEST(mailboxes.last_uid, excluded.last_uid) ELSE excluded.last_uid END",
            name, uidvalidity, last_uid), single=True)

    # --- opt-outs --------------------------------------------------------------------------

    async def optout_add(self, number: str, sender: str | None, source: str, now: float) -> bool:
        """Suppress ``number`` (for ``sender`` only, or globally); False if it already was."""
        added = await self.write(lambda c: c.fetchval(
            "INSERT INTO optouts VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING RETURNING number",
            number, (sender or "").lower(), source, float(now)), single=True)
        return added is not None

    async def optout_remove(self, number: str, sender: str | None) -> bool:
        """Lift a suppression; False if there was none."""
        removed = await self.write(lambda c: c.fetchval(
            "DELETE FROM optouts WHERE number=$1 AND sender=$2 RETURNING number", number, (sender or "").lower()),
            single=True)
        return removed is not None

    async def optouts(self) -> list[dict[str, Any]]:
        """Every suppression, oldest first."""
        rows = await self._fetch("SELECT number, sender, source, created_at FROM optouts "
                                 "ORDER BY created_at, number, sender")
        return [dict(r) for r in rows]

    # --- several instances (pg_instances) ------------------------------------------------

    async def listen(self, on_wake: Callable[[], None], stop: asyncio.Event) -> None:
        """Call ``on_wake`` whenever any instance commits jobs (``LISTEN``), until ``stop``."""
        await pg_instances.listen(self.url, self.channel, on_wake, stop)

    def mailbox_lock(self, name: str) -> AbstractAsyncContextManager[MailboxLock]:
        """Try to become the one instance polling mailbox ``name``, for the duration of the block."""
        return pg_instances.mailbox_lock(self.url, name)


async def _keep_session(conn: asyncpg.Connection) -> None:
    """A pooled connection needs no reset query when it goes back (one round trip saved per
    call): the store never changes session state on one. ``LISTEN`` and session advisory
    locks live on connections of their own (``pg_instances``); an open transaction is
    still rolled back by the pool itself."""


def _forget(tasks: set[asyncio.Task]) -> Callable[[asyncio.Task], None]:
    def done(task: asyncio.Task) -> None:
        tasks.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved: a cancelled caller's failed write is not "never retrieved"
    return done


async def _close_pool(pool: asyncpg.Pool) -> None:
    try:
        await asyncio.wait_for(pool.close(), COMMAND_TIMEOUT)
    except (*DRIVER_ERRORS,):
        pool.terminate()
