"""The SQLite backend of the ``Store`` protocol (WAL, ``synchronous=FULL``).

Writes go through one ``Writer`` thread that group-commits; reads use a second connection
(WAL lets it run beside the writer). The transaction bodies live in ``sql_intake`` and
``sql_jobs``; this class only moves them to the writer and back.

Tables: ``messages`` (one per mail, by idempotency key, with ``message_keys``), ``jobs``
(one SMS to one number, see ``bridge.model`` for its states), ``ledger`` and ``balances``
(every credit movement and its running sum), ``replies`` (numbered statuses to mail),
``mailboxes`` (IMAP cursors), ``optouts``.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar

from bridge.errors import StoreError
from bridge.model import Acceptance, Job, JobState, NewReply, Plan, Reply, ReplyState, Settlement
from bridge.store import sql_history, sql_intake, sql_jobs, sql_twoway
from bridge.store.protocol import CallPlan, Handoff, MailboxLock
from bridge.store.schema import connect, migrate
from bridge.store.sql import JOB_SELECT, balance, job_of, move, queue_reply
from bridge.store.writer import Writer, resolve

T = TypeVar("T")


class SqliteStore:
    """The SQLite store. Open with ``await SqliteStore.open(path)``; close with ``close()``."""

    def __init__(self, path: Path, writer: Writer, reader: sqlite3.Connection) -> None:
        self.path = path
        self._writer = writer
        self._reader = reader
        self._read_lock = threading.Lock()
        self._closed = False
        # plain sent outcomes waiting for the end of their loop's turn (see settle_call)
        self._sent: dict[asyncio.AbstractEventLoop, list[tuple[str, list[Settlement], float, asyncio.Future]]] = {}

    @classmethod
    async def open(cls, path: str | Path) -> "SqliteStore":
        """Open (creating and migrating as needed) the store at ``path``."""
        path = Path(path)

        def setup() -> SqliteStore:
            path.parent.mkdir(parents=True, exist_ok=True)
            conn = connect(path)
            try:
                migrate(conn)
            finally:
                conn.close()
            writer = Writer(lambda: connect(path))
            writer.start()
            return cls(path, writer, connect(path))

        try:
            return await asyncio.to_thread(setup)
        except (sqlite3.Error, OSError) as exc:
            raise StoreError(f"cannot open {path}: {exc}") from None

    async def close(self) -> None:
        """Finish queued writes and close both connections (a second call does nothing)."""
        if self._closed:
            return
        self._write_sent(asyncio.get_running_loop())  # settles queued this turn go before the writer stops
        self._closed = True
        self._writer.stop()
        await asyncio.to_thread(self._writer.join)
        await asyncio.to_thread(self._close_reader)

    def _close_reader(self) -> None:
        # Under the read lock: closing a connection another thread is reading on crashes
        # the process (sqlite3 does not guard it).
        with self._read_lock:
            self._reader.close()

    async def write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn`` in a transaction; return once it is committed to disk."""
        if self._closed or not self._writer.is_alive():
            raise StoreError("store is closed")
        future = asyncio.get_running_loop().create_future()
        self._writer.submit(fn, future)
        try:
            # A cancelled caller cancels only its wait: the writer runs and commits ``fn``
            # all the same and skips the cancelled future (no shield needed for that).
            return await future
        except sqlite3.Error as exc:
            raise StoreError(str(exc)) from None

    async def read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn`` on the read connection in a thread."""
        if self._closed:
            raise StoreError("store is closed")

        def locked() -> T:
            with self._read_lock:
                return fn(self._reader)

        try:
            return await asyncio.to_thread(locked)
        except sqlite3.Error as exc:
            raise StoreError(str(exc)) from None

    async def ping(self) -> None:
        """Raise ``StoreError`` unless the store answers a read."""
        await self.read(lambda c: c.execute("SELECT 1").fetchone())

    # --- accounts and credit -----------------------------------------------------------

    async def open_accounts(self, opening: Mapping[str, int], now: float) -> None:
        """Give each account its opening balance, once (a later config change is ignored)."""

        def apply(conn: sqlite3.Connection) -> None:
            for login, credits in opening.items():
                if conn.execute("SELECT 1 FROM balances WHERE login=?", (login,)).fetchone():
                    continue
                conn.execute("INSERT INTO balances VALUES (?, 0)", (login,))
                move(conn, login, credits, "opening", None, now)

        await self.write(apply)

    async def credit(self, login: str, amount: int, reason: str, now: float) -> int:
        """Add ``amount`` (negative to remove) to ``login``; return the new balance."""

        def apply(conn: sqlite3.Connection) -> int:
            conn.execute("INSERT OR IGNORE INTO balances VALUES (?, 0)", (login,))
            move(conn, login, amount, reason, None, now)
            return balance(conn, login)

        return await self.write(apply)

    async def balances(self) -> dict[str, int]:
        """Every account's balance."""
        rows = await self.read(lambda c: c.execute("SELECT login, balance FROM balances").fetchall())
        return {r["login"]: r["balance"] for r in rows}

    async def ledger(self, login: str) -> list[dict[str, Any]]:
        """Every credit movement of ``login``, oldest first."""
        rows = await self.read(
            lambda c: c.execute(
                "SELECT amount, reason, job, created_at FROM ledger WHERE login=? ORDER BY id", (login,)
            ).fetchall()
        )
        return [dict(r) for r in rows]

    # --- intake ------------------------------------------------------------------------

    async def commit(self, plan: Plan, now: float, handoff: Handoff | None = None) -> Acceptance:
        """Apply intake's plan: dedupe, rules, credit, jobs and debits, replies, and the calls
        ``handoff`` plans; one transaction."""
        return await self.write(lambda conn: sql_intake.commit(conn, plan, now, handoff))

    # --- the job life cycle (see bridge.model) ----------------------------------------

    async def claim(self, owner: str, now: float, limit: int, lease: float, only: Sequence[int] = (),
                    plan: CallPlan | None = None) -> list[Job]:
        """Take up to ``limit`` due queued jobs (of ``only``, if given) under a lease; record
        the calls of ``plan`` in the same write."""
        return await self.write(lambda c: sql_jobs.claim(c, owner, now, limit, now + lease, list(only), plan))

    async def start_call(self, owner: str, ids: Sequence[int], provider: str, ref: str, now: float,
                         lease: float) -> list[int]:
        """Record a call before it is made; return the ids still leased to ``owner``."""
        return await self.write(lambda c: sql_jobs.start_call(c, owner, list(ids), provider, ref, now, now + lease))

    async def settle_call(self, ref: str, items: Sequence[Settlement], now: float, lease: float = 0.0) -> list[int]:
        """Write the outcomes of the call ``ref`` in one transaction; return the ids refused.

        Plain ``sent`` outcomes (``sql_jobs.plain_sent``: the usual answer) of every call
        settled in the same turn of the event loop share one write and one statement
        (``sql_jobs.settle_sent``); each call still gets its own refused ids. A claim
        starts its calls together, and a bulk of them end together.
        """
        items = list(items)
        if sql_jobs.plain_sent(items):
            return await self._settle_sent(ref, items, now)

        def settle(c: sqlite3.Connection) -> list[int]:
            refused = sql_jobs.settle_call(c, ref, items, now, now + lease)
            sql_twoway.record_calls(c, ref, sql_twoway.call_events(items, refused, now))
            return refused
        return await self.write(settle)

    async def _settle_sent(self, ref: str, items: list[Settlement], now: float) -> list[int]:
        """``settle_call`` of plain ``sent`` outcomes: queued for ``_write_sent`` at the end
        of this turn of the loop. A cancelled caller cancels only its wait, as with ``write``."""
        if self._closed or not self._writer.is_alive():
            raise StoreError("store is closed")
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        queued = self._sent.get(loop)
        if queued is None:
            queued = self._sent[loop] = []
            loop.call_soon(self._write_sent, loop)
        queued.append((ref, items, now, future))
        try:
            return await future
        except sqlite3.Error as exc:
            raise StoreError(str(exc)) from None

    def _write_sent(self, loop: asyncio.AbstractEventLoop) -> None:
        """One write for the plain ``sent`` outcomes queued so far in ``loop``."""
        calls = self._sent.pop(loop, None)
        if not calls:
            return
        futures = [future for *_, future in calls]
        if self._closed or not self._writer.is_alive():  # a write queued now would never run
            resolve([(future, False, StoreError("store is closed")) for future in futures])
            return

        def spread(done: asyncio.Future) -> None:  # each caller's share of the one write
            error = done.exception()
            shares = done.result() if error is None else [error] * len(futures)
            resolve([(future, error is None, share) for future, share in zip(futures, shares)])

        done = loop.create_future()
        done.add_done_callback(spread)
        self._writer.submit(lambda c: sql_jobs.settle_sent(c, [(r, i, n) for r, i, n, _ in calls]), done)

    async def settle_claimed(self, owner: str, items: Sequence[Settlement], now: float) -> list[int]:
        """Outcomes decided before any call (deferred, refused); return the ids refused."""
        return await self.write(lambda c: sql_jobs.settle_claimed(c, owner, list(items), now))

    async def sweep(self, now: float, dead_owners: Sequence[str] = ()) -> tuple[list[int], list[int]]:
        """Expired leases: claimed -> queued, calling -> unknown; (requeued, unknown) ids."""
        return await self.write(lambda c: sql_jobs.sweep(c, now, list(dead_owners)))

    async def lease_owners(self) -> list[str]:
        """The owners of every lease currently held."""
        rows = await self.read(lambda c: c.execute(
            "SELECT DISTINCT lease_owner FROM jobs WHERE state IN ('claimed', 'calling') "
            "AND lease_owner IS NOT NULL").fetchall())
        return [r[0] for r in rows]

    async def defer_logins(self, logins: Sequence[str], until: float, reason: str, now: float) -> int:
        """Push every due queued job of these accounts to ``until`` in one write."""
        return await self.write(lambda c: sql_jobs.defer_logins(c, list(logins), until, reason, now))

    async def next_due(self) -> float | None:
        """When the next queued job is due (epoch seconds), or None."""
        row = await self.read(
            lambda c: c.execute("SELECT MIN(next_attempt_at) FROM jobs WHERE state='queued'").fetchone()
        )
        return row[0]

    async def unknown_jobs(self, called_before: float, limit: int, after_id: int = 0) -> list[Job]:
        """``unknown`` jobs (of id > ``after_id``) whose call is older than ``called_before``, by id."""
        rows = await self.read(lambda c: c.execute(
            f"{JOB_SELECT} WHERE j.state='unknown' AND COALESCE(j.called_at, 0)<? AND j.id>? ORDER BY j.id LIMIT ?",
            (called_before, after_id, limit)).fetchall())
        return [job_of(r) for r in rows]

    async def sent_times(self, since: float) -> dict[str, list[float]]:
        """When each account's calls were made since ``since`` (rebuilds rate windows)."""
        rows = await self.read(
            lambda c: c.execute(
                "SELECT login, called_at FROM jobs WHERE called_at>=? ORDER BY called_at", (since,)
            ).fetchall()
        )
        times: dict[str, list[float]] = {}
        for login, when in rows:
            times.setdefault(login, []).append(when)
        return times

    async def requeue(self, job_id: int, now: float) -> bool:
        """Operator: send a ``failed`` or ``unknown`` job again (re-debiting a refund)."""
        return await self.write(lambda c: sql_jobs.requeue(c, job_id, now))

    async def cancel(self, job_id: int, now: float) -> bool:
        """Operator: a ``queued`` job is not sent; its credit is refunded."""
        return await self.write(lambda c: sql_jobs.cancel(c, job_id, now))

    async def prune(self, before: float) -> dict[str, int]:
        """Delete finished jobs, sent replies and their mails older than ``before``."""
        return await self.write(lambda c: {**sql_jobs.prune(c, before), "events": sql_twoway.prune(c, before)})

    async def jobs(self, state: str | None = None, limit: int = 50) -> list[Job]:
        """Jobs, newest first, optionally in one state."""
        where, args = ("WHERE j.state=?", (state,)) if state else ("", ())
        rows = await self.read(
            lambda c: c.execute(f"{JOB_SELECT} {where} ORDER BY j.id DESC LIMIT ?", (*args, limit)).fetchall()
        )
        return [job_of(r) for r in rows]

    async def job(self, job_id: int) -> Job | None:
        """One job by id."""
        row = await self.read(lambda c: c.execute(f"{JOB_SELECT} WHERE j.id=?", (job_id,)).fetchone())
        return job_of(row) if row else None

    async def count_jobs(self) -> dict[str, int]:
        """How many jobs are in each state."""
        rows = await self.read(lambda c: c.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state").fetchall())
        return {r[0]: r[1] for r in rows}

    async def job_history(self, job_id: int) -> dict[str, Any] | None:
        """Everything known about one job (see ``sql_history.job_history``), or None."""
        def history(c: sqlite3.Connection) -> dict[str, Any] | None:
            found = sql_history.job_history(c, job_id)
            return None if found is None else {**found, "events": sql_twoway.events(c, job_id)}
        return await self.read(history)

    async def find_job(self, provider: str, message_id: str | None = None,
                       client_ref: str | None = None) -> Job | None:
        """The job ``provider`` knows by ``message_id`` (else by our ``client_ref``), or None."""
        return await self.read(lambda c: sql_history.find_job(c, provider, message_id, client_ref))

    # --- webhooks ----------------------------------------------------------------------

    async def report_delivery(self, job_id: int, state: JobState, error: str | None,
                              provider_message_id: str | None, detail: str, reply: NewReply | None,
                              now: float) -> bool:
        """A delivery report, its event and its mail in one transaction (see ``Store``)."""
        return await self.write(lambda c: sql_twoway.report(c, job_id, state, error, provider_message_id,
                                                            detail, reply, now))

    async def record_inbound(self, key: str | None, job_id: int | None, number: str, detail: str,
                             optout: Literal["add", "remove"] | None, reply: NewReply | None, now: float) -> bool:
        """An inbound SMS, its opt-out change and its mail in one transaction (see ``Store``)."""
        return await self.write(lambda c: sql_twoway.inbound(c, key, job_id, number, detail, optout, reply, now))

    async def inbound_part(self, prefix: str, index: int, total: int, text: str, now: float) -> list[str] | None:
        """One part of a long inbound SMS; all their texts once complete (see ``Store``)."""
        return await self.write(lambda c: sql_twoway.inbound_part(c, prefix, index, total, text, now))

    async def find_origin(self, provider: str, number: str, in_reply_to: str | None, since: float) -> Job | None:
        """The SMS an inbound one answers (see ``sql_twoway.origin``)."""
        return await self.read(lambda c: sql_twoway.origin(c, provider, number, in_reply_to, since))

    # --- replies -----------------------------------------------------------------------

    async def queue_reply(self, reply: NewReply, now: float) -> int | None:
        """Queue a reply outside intake (None when the address's hourly cap is reached)."""
        return await self.write(lambda c: queue_reply(c, reply, now))

    async def claim_replies(self, now: float, limit: int) -> list[Reply]:
        """Due queued replies (sending one twice is harmless, so no lease is taken)."""
        rows = await self.read(
            lambda c: c.execute(
                "SELECT * FROM replies WHERE state='queued' AND next_attempt_at<=? "
                "ORDER BY next_attempt_at LIMIT ?",
                (now, limit),
            ).fetchall()
        )
        return [
            Reply(r["id"], r["to_addr"], r["code"], bytes(r["message"]), r["attempts"], r["created_at"])
            for r in rows
        ]

    async def retry_reply(self, reply_id: int, now: float) -> bool:
        """Operator: a ``failed`` status mail goes back to the queue; False if it had not failed."""
        return await self.write(lambda c: c.execute(
            "UPDATE replies SET state='queued', next_attempt_at=?, created_at=? WHERE id=? AND state='failed'",
            (now, now, reply_id)).rowcount == 1)

    async def finish_reply(self, reply_id: int, state: str, error: str | None, when: float, now: float) -> None:
        """Record a reply's outcome: ``sent``, ``failed``, or ``queued`` again at ``when``."""
        await self.write(
            lambda c: c.execute(
                "UPDATE replies SET state=?, attempts=attempts+1, last_error=?, next_attempt_at=? WHERE id=?",
                (ReplyState(state).value, error, when, reply_id),
            )
        )

    async def count_replies(self, state: str) -> int:
        """How many replies are in ``state`` (queued, sent, failed)."""
        row = await self.read(lambda c: c.execute("SELECT COUNT(*) FROM replies WHERE state=?", (state,)).fetchone())
        return row[0]

    async def replies(self, state: str | None = None) -> list[dict[str, Any]]:
        """Replies (for tests and the operator), oldest first."""
        where, args = ("WHERE state=?", (state,)) if state else ("", ())
        rows = await self.read(
            lambda c: c.execute(
                f"SELECT id, to_addr, code, state, attempts, last_error, created_at FROM replies {where} ORDER BY id",
                args,
            ).fetchall()
        )
        return [dict(r) for r in rows]

    # --- IMAP mailboxes ----------------------------------------------------------------

    async def mailbox_state(self, name: str) -> tuple[int, int] | None:
        """(UIDVALIDITY, last UID processed) of mailbox ``name``, or None if never seen."""
        row = await self.read(
            lambda c: c.execute("SELECT uidvalidity, last_uid FROM mailboxes WHERE name=?", (name,)).fetchone()
        )
        return (row[0], row[1]) if row else None

    async def set_mailbox_state(self, name: str, uidvalidity: int, last_uid: int) -> None:
        """Remember how far mailbox ``name`` was processed (a UIDVALIDITY change resets it)."""
        await self.write(
            lambda c: c.execute(
                "INSERT INTO mailboxes VALUES (?, ?, ?) ON CONFLICT(name) DO UPDATE SET "
                "uidvalidity=excluded.uidvalidity, last_uid=CASE WHEN mailboxes.uidvalidity="
                "excluded.uidvalidity THEN MAX(mailboxes.last_uid, excluded.last_uid) "
                "ELSE excluded.last_uid END",
                (name, uidvalidity, last_uid),
            )
        )

    # --- opt-outs ----------------------------------------------------------------------

    async def optout_add(self, number: str, sender: str | None, source: str, now: float) -> bool:
        """Suppress ``number`` (for ``sender`` only, or globally); False if it already was."""
        return await self.write(
            lambda c: c.execute(
                "INSERT OR IGNORE INTO optouts VALUES (?, ?, ?, ?)", (number, (sender or "").lower(), source, now)
            ).rowcount == 1
        )

    async def optout_remove(self, number: str, sender: str | None) -> bool:
        """Lift a suppression; False if there was none."""
        return await self.write(
            lambda c: c.execute(
                "DELETE FROM optouts WHERE number=? AND sender=?", (number, (sender or "").lower())
            ).rowcount == 1
        )

    async def optouts(self) -> list[dict[str, Any]]:
        """Every suppression, oldest first."""
        rows = await self.read(
            lambda c: c.execute("SELECT number, sender, source, created_at FROM optouts ORDER BY created_at").fetchall()
        )
        return [dict(r) for r in rows]

    # --- several instances (one SQLite file has one bridge) ----------------------------

    async def listen(self, on_wake: Callable[[], None], stop: asyncio.Event) -> None:
        """Nothing to listen to: intake wakes the one dispatcher itself. Waits for ``stop``."""
        await stop.wait()

    @contextlib.asynccontextmanager
    async def mailbox_lock(self, name: str) -> AsyncIterator[MailboxLock]:
        """Always granted: one SQLite file serves one bridge."""
        yield MailboxLock(True)

