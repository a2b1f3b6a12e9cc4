"""The durable store: the bridge's only state (SQLite, WAL, ``synchronous=FULL``).

Every write goes through one writer thread that *group-commits*: the writes queued while
the previous commit was being fsynced run together, each in its own savepoint, and are
acknowledged by one ``COMMIT``. Many SMTP sessions committing at once therefore cost one
fsync per batch, not one per mail, and each caller still gets its answer only after its
own data is on disk. Reads use a second connection (WAL lets it run beside the writer).

What it keeps (schema version in ``meta``, migrated by ``_migrate``):

- ``messages``  one row per accepted or rejected mail, by idempotency key
- ``jobs``      one SMS to one number: queued -> sending -> sent | failed | unknown
- ``ledger``    every credit movement (opening balance, debit, refund, manual credit);
                ``balances`` is its running sum, updated in the same transaction
- ``replies``   numbered statuses to mail back: queued -> sent | failed

The public methods are the whole interface a PostgreSQL backend would implement.
"""

from __future__ import annotations

import asyncio
import queue
import sqlite3
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, TypeVar

from bridge.errors import StoreError

T = TypeVar("T")
SCHEMA_VERSION = 2
_MAX_GROUP = 256


class JobState(str, Enum):
    """Where an SMS job is; ``TERMINAL`` states never change by themselves."""

    QUEUED = "queued"
    SENDING = "sending"
    SENT = "sent"
    FAILED = "failed"
    UNKNOWN = "unknown"


TERMINAL = frozenset({JobState.SENT, JobState.FAILED, JobState.UNKNOWN})


@dataclass(frozen=True)
class NewJob:
    """An SMS job to create at intake."""

    number: str
    text: str
    sender: str | None
    parts: int
    cost: int
    unicode: bool = False
    low_cost: bool = False
    send_at: float | None = None              # epoch seconds; None: now
    category: str = "transactional"           # or "marketing" (quiet hours, STOP)


@dataclass(frozen=True)
class NewReply:
    """A numbered status to mail back."""

    to: str
    code: int
    message: bytes                             # the whole RFC 5322 message
    max_per_hour: int = 0                      # drop it past this many to ``to`` (0: no cap)


@dataclass(frozen=True)
class Job:
    """An SMS job as stored."""

    id: int
    login: str
    number: str
    text: str
    sender: str | None
    parts: int
    cost: int
    unicode: bool
    low_cost: bool
    state: JobState
    attempts: int
    created_at: float
    next_attempt_at: float
    provider: str | None = None
    provider_message_id: str | None = None
    last_error: str | None = None
    message_id: str | None = None              # the mail's Message-ID, for replies
    reply_to: str | None = None                # where the sender's statuses go
    category: str = "transactional"
    suppressed: str | None = None              # set at claim: the number opted out since


@dataclass(frozen=True)
class Reply:
    """A reply as stored."""

    id: int
    to: str
    code: int
    message: bytes
    attempts: int
    created_at: float


@dataclass(frozen=True)
class Refusal:
    """A number of the mail that gets no SMS, with the status that explains why."""

    number: str
    code: int                                  # 113 invalid, 125 opted out, 126 country, 127 cap
    reason: str


@dataclass(frozen=True)
class Limits:
    """Anti-pumping caps checked inside the commit (None: no cap)."""

    per_number_per_hour: int | None = None
    sms_per_day: int | None = None
    spend_per_day: int | None = None


@dataclass(frozen=True)
class Acceptance:
    """What ``accept`` did: ``accepted``, ``rejected``, ``duplicate`` or ``insufficient_credit``."""

    outcome: str
    job_ids: tuple[int, ...] = ()
    used: int = 0
    available: int = 0
    refused: tuple[Refusal, ...] = ()


@dataclass(frozen=True)
class Incoming:
    """One mail to commit at intake: its jobs, or just its replies when rejected."""

    key: str | None                            # idempotency key; None: never deduplicated
    login: str | None
    message_id: str | None
    reply_to: str | None
    summary: str                               # redacted subject, for the operator
    jobs: Sequence[NewJob] = ()
    replies: Sequence[NewReply] = ()
    extra_keys: tuple[str, ...] = ()           # more keys meaning "the same mail" (IMAP UID)
    refused: tuple[Refusal, ...] = ()          # numbers refused before the commit
    sender: str | None = None                  # the SMS sender, for per-sender opt-outs
    limits: Limits = Limits()
    # Builds the replies once the outcome is known (credit, opt-outs and caps are only
    # known inside the transaction).
    on_outcome: Callable[[Acceptance], Sequence[NewReply]] | None = field(default=None, repr=False)


_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE messages (
    id INTEGER PRIMARY KEY,
    key TEXT UNIQUE,
    message_id TEXT,
    login TEXT,
    reply_to TEXT,
    summary TEXT NOT NULL,
    outcome TEXT NOT NULL,
    received_at REAL NOT NULL
);
CREATE TABLE jobs (
    id INTEGER PRIMARY KEY,
    message INTEGER NOT NULL REFERENCES messages(id),
    login TEXT NOT NULL,
    number TEXT NOT NULL,
    text TEXT NOT NULL,
    sender TEXT,
    parts INTEGER NOT NULL,
    cost INTEGER NOT NULL,
    unicode INTEGER NOT NULL,
    low_cost INTEGER NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    next_attempt_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    provider TEXT,
    provider_message_id TEXT,
    last_error TEXT
);
CREATE INDEX jobs_due ON jobs(state, next_attempt_at);
CREATE TABLE ledger (
    id INTEGER PRIMARY KEY,
    login TEXT NOT NULL,
    amount INTEGER NOT NULL,
    reason TEXT NOT NULL,
    job INTEGER,
    created_at REAL NOT NULL
);
CREATE INDEX ledger_login ON ledger(login);
CREATE TABLE balances (login TEXT PRIMARY KEY, balance INTEGER NOT NULL);
CREATE TABLE replies (
    id INTEGER PRIMARY KEY,
    to_addr TEXT NOT NULL,
    code INTEGER NOT NULL,
    message BLOB NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    next_attempt_at REAL NOT NULL,
    last_error TEXT
);
CREATE INDEX replies_due ON replies(state, next_attempt_at);
CREATE INDEX replies_to ON replies(to_addr, created_at);
"""

_V2 = """
CREATE TABLE message_keys (key TEXT PRIMARY KEY, message INTEGER NOT NULL REFERENCES messages(id));
INSERT INTO message_keys (key, message) SELECT key, id FROM messages WHERE key IS NOT NULL;
CREATE TABLE mailboxes (name TEXT PRIMARY KEY, uidvalidity INTEGER NOT NULL, last_uid INTEGER NOT NULL);
CREATE TABLE optouts (
    number TEXT NOT NULL,
    sender TEXT NOT NULL DEFAULT '',
    source TEXT NOT NULL,
    created_at REAL NOT NULL,
    PRIMARY KEY (number, sender)
);
ALTER TABLE jobs ADD COLUMN category TEXT NOT NULL DEFAULT 'transactional';
CREATE INDEX jobs_number_created ON jobs(number, created_at);
CREATE INDEX jobs_login_created ON jobs(login, created_at)
"""

#: version -> SQL that brings the previous version up to it.
_MIGRATIONS: dict[int, str] = {1: _SCHEMA, 2: _V2}


def _connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")   # the promise: 250 only after fsync
    conn.execute("PRAGMA foreign_keys=ON")
    return conn


def _migrate(conn: sqlite3.Connection) -> None:
    conn.execute("BEGIN IMMEDIATE")
    try:
        has_meta = conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type='table' AND name='meta'"
        ).fetchone()
        version = 0
        if has_meta:
            version = int(conn.execute("SELECT value FROM meta WHERE key='schema'").fetchone()[0])
        if version > SCHEMA_VERSION:
            raise StoreError(f"store schema {version} is newer than this bridge ({SCHEMA_VERSION})")
        for target in range(version + 1, SCHEMA_VERSION + 1):
            for statement in _MIGRATIONS[target].split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute("INSERT OR REPLACE INTO meta VALUES ('schema', ?)", (str(target),))
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


class _Writer(threading.Thread):
    """The one thread that writes; group-commits whatever is queued."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        super().__init__(name="store-writer", daemon=True)
        self.conn = conn
        self.jobs: queue.SimpleQueue[tuple[Callable[[sqlite3.Connection], Any], asyncio.Future] | None] = (
            queue.SimpleQueue()
        )

    def run(self) -> None:
        while True:
            first = self.jobs.get()
            if first is None:
                return
            batch = [first]
            while len(batch) < _MAX_GROUP:
                try:
                    item = self.jobs.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    self.jobs.put(None)  # finish this batch, then stop
                    break
                batch.append(item)
            self._commit(batch)

    def _commit(self, batch: list[tuple[Callable[[sqlite3.Connection], Any], asyncio.Future]]) -> None:
        results: list[tuple[asyncio.Future, bool, Any]] = []
        try:
            self.conn.execute("BEGIN IMMEDIATE")
            for i, (fn, future) in enumerate(batch):
                self.conn.execute(f"SAVEPOINT w{i}")
                try:
                    results.append((future, True, fn(self.conn)))
                    self.conn.execute(f"RELEASE w{i}")
                except Exception as exc:  # one bad write must not sink the others
                    self.conn.execute(f"ROLLBACK TO w{i}")
                    self.conn.execute(f"RELEASE w{i}")
                    results.append((future, False, exc))
            self.conn.execute("COMMIT")
        except Exception as exc:
            if self.conn.in_transaction:
                self.conn.execute("ROLLBACK")
            error = StoreError(f"commit failed: {exc}")
            results = [(future, False, error) for _, future in batch]
        # One wake-up per event loop for the whole batch, not one per write.
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future, bool, Any]]] = {}
        for item in results:
            by_loop.setdefault(item[0].get_loop(), []).append(item)
        for loop, items in by_loop.items():
            try:
                loop.call_soon_threadsafe(_resolve, items)
            except RuntimeError:
                pass  # that loop is closed: nobody is waiting any more


def _resolve(items: list[tuple[asyncio.Future, bool, Any]]) -> None:
    for future, ok, value in items:
        if future.cancelled():
            continue  # the data is committed all the same
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)


class Store:
    """The SQLite store. Open with ``await Store.open(path)``; close with ``close()``."""

    def __init__(self, path: Path, writer: _Writer, reader: sqlite3.Connection) -> None:
        self.path = path
        self._writer = writer
        self._reader = reader
        self._read_lock = threading.Lock()
        self._closed = False

    @classmethod
    async def open(cls, path: str | Path) -> "Store":
        """Open (creating and migrating as needed) the store at ``path``."""
        path = Path(path)

        def setup() -> Store:
            path.parent.mkdir(parents=True, exist_ok=True)
            conn = _connect(path)
            _migrate(conn)
            writer = _Writer(conn)
            writer.start()
            return cls(path, writer, _connect(path))

        try:
            return await asyncio.to_thread(setup)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open {path}: {exc}") from None

    async def close(self) -> None:
        """Finish queued writes and close both connections (a second call does nothing)."""
        if self._closed:
            return
        self._closed = True
        self._writer.jobs.put(None)
        await asyncio.to_thread(self._writer.join)
        self._writer.conn.close()
        self._reader.close()

    async def write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn`` in a transaction; return once it is committed to disk."""
        if self._closed or not self._writer.is_alive():
            raise StoreError("store is closed")
        future = asyncio.get_running_loop().create_future()
        self._writer.jobs.put((fn, future))
        try:
            # shield: a cancelled caller must not lose track of a write that may commit.
            return await asyncio.shield(future)
        except sqlite3.Error as exc:
            raise StoreError(str(exc)) from None

    async def read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn`` on the read connection in a thread."""

        def locked() -> T:
            with self._read_lock:
                return fn(self._reader)

        try:
            return await asyncio.to_thread(locked)
        except sqlite3.Error as exc:
            raise StoreError(str(exc)) from None

    # --- accounts and credit -----------------------------------------------------------

    async def open_accounts(self, opening: Mapping[str, int], now: float) -> None:
        """Give each account its opening balance, once (a later config change is ignored)."""

        def apply(conn: sqlite3.Connection) -> None:
            for login, credits in opening.items():
                if conn.execute("SELECT 1 FROM balances WHERE login=?", (login,)).fetchone():
                    continue
                conn.execute("INSERT INTO balances VALUES (?, 0)", (login,))
                _move(conn, login, credits, "opening", None, now)

        await self.write(apply)

    async def credit(self, login: str, amount: int, reason: str, now: float) -> int:
        """Add ``amount`` (negative to remove) to ``login``; return the new balance."""

        def apply(conn: sqlite3.Connection) -> int:
            conn.execute("INSERT OR IGNORE INTO balances VALUES (?, 0)", (login,))
            _move(conn, login, amount, reason, None, now)
            return _balance(conn, login)

        return await self.write(apply)

    async def balances(self) -> dict[str, int]:
        """Every account's balance."""
        rows = await self.read(lambda c: c.execute("SELECT login, balance FROM balances").fetchall())
        return {r["login"]: r["balance"] for r in rows}

    async def ledger(self, login: str) -> list[dict[str, Any]]:
        """Every credit movement of ``login``, oldest first."""
        rows = await self.read(
            lambda c: c.execute(
                "SELECT amount, reason, job, created_at FROM ledger WHERE login=? ORDER BY id",
                (login,),
            ).fetchall()
        )
        return [dict(r) for r in rows]

    # --- intake ------------------------------------------------------------------------

    async def accept(self, incoming: Incoming, now: float) -> Acceptance:
        """Commit one mail: dedupe, check credit, create jobs and debit, queue replies."""
        return await self.write(lambda conn: _accept(conn, incoming, now))

    async def seen(self, key: str) -> bool:
        """True when a mail with this idempotency key was already committed."""
        row = await self.read(lambda c: c.execute("SELECT 1 FROM message_keys WHERE key=?", (key,)).fetchone())
        return row is not None

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
        """Suppress ``number`` (for ``sender`` only, or globally); False if it already was.

        ``source`` says who asked: ``cli``, ``import``, or later ``sms`` for inbound STOP.
        """
        return await self.write(
            lambda c: c.execute(
                "INSERT OR IGNORE INTO optouts VALUES (?, ?, ?, ?)",
                (number, (sender or "").lower(), source, now),
            ).rowcount == 1
        )

    async def optout_remove(self, number: str, sender: str | None) -> bool:
        """Lift a suppression (inbound START/REABO later); False if there was none."""
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


    # --- dispatcher --------------------------------------------------------------------

    async def claim_jobs(self, now: float, limit: int, only: Sequence[int] = ()) -> list[Job]:
        """Move up to ``limit`` due queued jobs (of ``only``, if given) to ``sending``."""
        among = f" AND j.id IN ({','.join('?' * len(only))})" if only else ""

        def claim(conn: sqlite3.Connection) -> list[Job]:
            rows = conn.execute(
                f"{_JOB_SELECT} WHERE j.state='queued' AND j.next_attempt_at<=?{among} "
                "ORDER BY j.next_attempt_at, j.id LIMIT ?",
                (now, *only, limit),
            ).fetchall()
            ids = [r["id"] for r in rows]
            conn.executemany(
                "UPDATE jobs SET state='sending', attempts=attempts+1, updated_at=? WHERE id=?",
                [(now, i) for i in ids],
            )
            # Opt-outs are looked up here, in the claim's transaction, rather than with one
            # more round trip per job in the dispatcher.
            return [
                _job(r, state=JobState.SENDING, attempts=r["attempts"] + 1,
                     suppressed=_opted_out(conn, r["number"], r["sender"]))
                for r in rows
            ]

        return await self.write(claim)

    async def next_due(self) -> float | None:
        """When the next queued job is due (epoch seconds), or None."""
        row = await self.read(
            lambda c: c.execute("SELECT MIN(next_attempt_at) FROM jobs WHERE state='queued'").fetchone()
        )
        return row[0]

    async def mark_sent(self, job_id: int, provider: str, provider_id: str | None, now: float) -> None:
        """The provider accepted the job (or reconciliation found it did)."""
        await self.write(
            lambda c: c.execute(
                "UPDATE jobs SET state='sent', provider=?, provider_message_id=?, last_error=NULL, "
                "updated_at=? WHERE id=? AND state IN ('sending', 'unknown')",
                (provider, provider_id, now, job_id),
            )
        )

    async def defer(self, job_id: int, when: float, reason: str, now: float) -> None:
        """Not tried (rate limit, quiet hours): back to the queue, the attempt not counted."""
        await self.write(
            lambda c: c.execute(
                "UPDATE jobs SET state='queued', attempts=MAX(attempts-1, 0), next_attempt_at=?, "
                "last_error=?, updated_at=? WHERE id=? AND state='sending'",
                (when, reason, now, job_id),
            )
        )

    async def sent_times(self, since: float) -> dict[str, list[float]]:
        """When each account's jobs were sent since ``since`` (rebuilds rate windows)."""
        rows = await self.read(
            lambda c: c.execute(
                "SELECT login, updated_at FROM jobs WHERE state='sent' AND updated_at>=? "
                "ORDER BY updated_at",
                (since,),
            ).fetchall()
        )
        times: dict[str, list[float]] = {}
        for login, when in rows:
            times.setdefault(login, []).append(when)
        return times

    async def mark_retry(self, job_id: int, error: str, when: float, now: float) -> None:
        """Not delivered for sure; try again at ``when``."""
        await self.write(
            lambda c: c.execute(
                "UPDATE jobs SET state='queued', next_attempt_at=?, last_error=?, updated_at=? "
                "WHERE id=? AND state='sending'",
                (when, error, now, job_id),
            )
        )

    async def mark_unknown(
        self, job_id: int, provider: str | None, error: str, now: float, provider_id: str | None = None
    ) -> None:
        """The provider may have accepted it: never re-sent without an operator."""
        await self.write(
            lambda c: c.execute(
                "UPDATE jobs SET state='unknown', provider=?, provider_message_id=?, last_error=?, "
                "updated_at=? WHERE id=? AND state='sending'",
                (provider, provider_id, error, now, job_id),
            )
        )

    async def mark_failed(
        self, job_id: int, error: str, now: float, reply: NewReply | None = None
    ) -> None:
        """Refused for good: refund its cost and queue ``reply`` in the same transaction."""

        def fail(conn: sqlite3.Connection) -> None:
            row = conn.execute(
                "SELECT login, cost FROM jobs WHERE id=? AND state IN ('sending','queued','unknown')",
                (job_id,),
            ).fetchone()
            if row is None:
                return
            conn.execute(
                "UPDATE jobs SET state='failed', last_error=?, updated_at=? WHERE id=?",
                (error, now, job_id),
            )
            _move(conn, row["login"], row["cost"], "refund", job_id, now)
            if reply is not None:
                _queue_reply(conn, reply, now)

        await self.write(fail)

    async def recover_sending(self, now: float) -> list[int]:
        """After a crash: jobs left in ``sending`` may have gone out; mark them ``unknown``."""

        def recover(conn: sqlite3.Connection) -> list[int]:
            ids = [r[0] for r in conn.execute("SELECT id FROM jobs WHERE state='sending'")]
            conn.execute(
                "UPDATE jobs SET state='unknown', updated_at=?, last_error=? WHERE state='sending'",
                (now, "interrupted while sending (bridge restarted); not re-sent"),
            )
            return ids

        return await self.write(recover)

    async def requeue(self, job_id: int, now: float) -> bool:
        """Operator: send a ``failed`` or ``unknown`` job again (re-debiting a refund)."""

        def retry(conn: sqlite3.Connection) -> bool:
            row = conn.execute("SELECT login, cost, state FROM jobs WHERE id=?", (job_id,)).fetchone()
            if row is None or row["state"] not in ("failed", "unknown"):
                return False
            if row["state"] == "failed":
                _move(conn, row["login"], -row["cost"], "debit", job_id, now)
            conn.execute(
                "UPDATE jobs SET state='queued', next_attempt_at=?, updated_at=? WHERE id=?",
                (now, now, job_id),
            )
            return True

        return await self.write(retry)

    async def jobs(self, state: str | None = None, limit: int = 50) -> list[Job]:
        """Jobs, newest first, optionally in one state."""
        where, args = ("WHERE j.state=?", (state,)) if state else ("", ())
        rows = await self.read(
            lambda c: c.execute(f"{_JOB_SELECT} {where} ORDER BY j.id DESC LIMIT ?", (*args, limit)).fetchall()
        )
        return [_job(r) for r in rows]

    async def job(self, job_id: int) -> Job | None:
        """One job by id."""
        row = await self.read(lambda c: c.execute(f"{_JOB_SELECT} WHERE j.id=?", (job_id,)).fetchone())
        return _job(row) if row else None

    async def count_jobs(self) -> dict[str, int]:
        """How many jobs are in each state."""
        rows = await self.read(lambda c: c.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state").fetchall())
        return {r[0]: r[1] for r in rows}

    # --- replies -----------------------------------------------------------------------

    async def queue_reply(self, reply: NewReply, now: float) -> int | None:
        """Queue a reply outside intake (dispatcher outcomes)."""
        return await self.write(lambda c: _queue_reply(c, reply, now))

    async def replies_since(self, to: str, since: float) -> int:
        """How many replies were queued for ``to`` since ``since`` (rate limit)."""
        row = await self.read(
            lambda c: c.execute(
                "SELECT COUNT(*) FROM replies WHERE to_addr=? AND created_at>=?", (to.lower(), since)
            ).fetchone()
        )
        return row[0]

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

    async def finish_reply(self, reply_id: int, state: str, error: str | None, when: float, now: float) -> None:
        """Record a reply's outcome: ``sent``, ``failed``, or ``queued`` again at ``when``."""
        await self.write(
            lambda c: c.execute(
                "UPDATE replies SET state=?, attempts=attempts+1, last_error=?, next_attempt_at=? "
                "WHERE id=?",
                (state, error, when, reply_id),
            )
        )

    async def replies(self, state: str | None = None) -> list[dict[str, Any]]:
        """Replies (for tests and the operator), oldest first."""
        where, args = ("WHERE state=?", (state,)) if state else ("", ())
        rows = await self.read(
            lambda c: c.execute(
                f"SELECT id, to_addr, code, state, attempts, last_error FROM replies {where} ORDER BY id",
                args,
            ).fetchall()
        )
        return [dict(r) for r in rows]


# --- transaction bodies (run on the writer thread) -------------------------------------

_JOB_SELECT = (
    "SELECT j.*, m.message_id AS mail_message_id, m.reply_to AS mail_reply_to "
    "FROM jobs j JOIN messages m ON m.id = j.message"
)


def _job(row: sqlite3.Row, **override: Any) -> Job:
    values = dict(
        id=row["id"],
        login=row["login"],
        number=row["number"],
        text=row["text"],
        sender=row["sender"],
        parts=row["parts"],
        cost=row["cost"],
        unicode=bool(row["unicode"]),
        low_cost=bool(row["low_cost"]),
        state=JobState(row["state"]),
        attempts=row["attempts"],
        created_at=row["created_at"],
        next_attempt_at=row["next_attempt_at"],
        provider=row["provider"],
        provider_message_id=row["provider_message_id"],
        last_error=row["last_error"],
        message_id=row["mail_message_id"],
        reply_to=row["mail_reply_to"],
        category=row["category"],
    )
    values.update(override)
    return Job(**values)


def _balance(conn: sqlite3.Connection, login: str) -> int:
    row = conn.execute("SELECT balance FROM balances WHERE login=?", (login,)).fetchone()
    return row[0] if row else 0


def _move(conn: sqlite3.Connection, login: str, amount: int, reason: str, job: int | None, now: float) -> None:
    conn.execute(
        "INSERT INTO ledger (login, amount, reason, job, created_at) VALUES (?, ?, ?, ?, ?)",
        (login, amount, reason, job, now),
    )
    conn.execute(
        "INSERT INTO balances VALUES (?, ?) ON CONFLICT(login) DO UPDATE SET balance=balance+?",
        (login, amount, amount),
    )


def _queue_reply(conn: sqlite3.Connection, reply: NewReply, now: float) -> int | None:
    """Queue ``reply`` unless its address had ``max_per_hour`` replies in the last hour.

    Counted inside the transaction, so concurrent mails cannot overshoot the cap.
    """
    if reply.max_per_hour:
        (recent,) = conn.execute(
            "SELECT COUNT(*) FROM replies WHERE to_addr=? AND created_at>=?",
            (reply.to.lower(), now - 3600),
        ).fetchone()
        if recent >= reply.max_per_hour:
            return None
    return conn.execute(
        "INSERT INTO replies (to_addr, code, message, state, created_at, next_attempt_at) "
        "VALUES (?, ?, ?, 'queued', ?, ?)",
        (reply.to.lower(), reply.code, reply.message, now, now),
    ).lastrowid


def _accept(conn: sqlite3.Connection, incoming: Incoming, now: float) -> Acceptance:
    keys = [k for k in (incoming.key, *incoming.extra_keys) if k]
    for key in keys:
        if conn.execute("SELECT 1 FROM message_keys WHERE key=?", (key,)).fetchone():
            return Acceptance("duplicate")
    jobs, refused = _screen(conn, incoming, now)
    used = sum(job.cost for job in jobs)
    available = _balance(conn, incoming.login) if incoming.login else 0
    outcome = "accepted" if jobs else "rejected"
    if jobs and used > available:
        jobs, outcome = [], "insufficient_credit"
    message = conn.execute(
        "INSERT INTO messages (key, message_id, login, reply_to, summary, outcome, received_at) "
        "VALUES (?, ?, ?, ?, ?, ?, ?)",
        (incoming.key, incoming.message_id, incoming.login, incoming.reply_to, incoming.summary, outcome, now),
    ).lastrowid
    conn.executemany("INSERT OR IGNORE INTO message_keys VALUES (?, ?)", [(k, message) for k in keys])
    ids = []
    for job in jobs:
        due = job.send_at if job.send_at is not None else now
        job_id = conn.execute(
            "INSERT INTO jobs (message, login, number, text, sender, parts, cost, unicode, low_cost, "
            "state, created_at, next_attempt_at, updated_at, category) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 'queued', ?, ?, ?, ?)",
            (message, incoming.login, job.number, job.text, job.sender, job.parts, job.cost,
             job.unicode, job.low_cost, now, due, now, job.category),
        ).lastrowid
        _move(conn, incoming.login, -job.cost, "debit", job_id, now)
        ids.append(job_id)
    acceptance = Acceptance(outcome, tuple(ids), used, available, tuple(refused))
    replies = list(incoming.replies)
    if incoming.on_outcome is not None:
        replies += incoming.on_outcome(acceptance)
    for reply in replies:
        _queue_reply(conn, reply, now)
    return acceptance


def _screen(conn: sqlite3.Connection, incoming: Incoming, now: float) -> tuple[list[NewJob], list[Refusal]]:
    """Drop jobs to opted-out numbers and beyond the anti-pumping caps (never charged)."""
    refused = list(incoming.refused)
    if not incoming.jobs:
        return [], refused
    limits, login = incoming.limits, incoming.login
    day_ago, hour_ago = now - 86400, now - 3600
    sent_today = spent_today = 0
    if limits.sms_per_day:
        (sent_today,) = conn.execute(
            "SELECT COUNT(*) FROM jobs WHERE login=? AND created_at>=? AND state!='failed'", (login, day_ago)
        ).fetchone()
    if limits.spend_per_day:
        (spent_today,) = conn.execute(
            "SELECT -COALESCE(SUM(amount), 0) FROM ledger WHERE login=? AND created_at>=? "
            "AND reason IN ('debit', 'refund')",
            (login, day_ago),
        ).fetchone()
    kept: list[NewJob] = []
    for job in incoming.jobs:
        reason = _opted_out(conn, job.number, incoming.sender)
        code = 125
        if reason is None:
            code, reason = 127, _over_cap(conn, incoming, job, kept, hour_ago, sent_today, spent_today)
        if reason:
            refused.append(Refusal(job.number, code, reason))
            continue
        kept.append(job)
    return kept, refused


def _opted_out(conn: sqlite3.Connection, number: str, sender: str | None) -> str | None:
    row = conn.execute(
        "SELECT sender FROM optouts WHERE number=? AND sender IN ('', ?) ORDER BY sender LIMIT 1",
        (number, (sender or "").lower()),
    ).fetchone()
    if row is None:
        return None
    return "opted out (STOP)" if row[0] == "" else f"opted out of sender {sender}"


def _over_cap(conn, incoming: Incoming, job: NewJob, kept: list[NewJob], hour_ago: float,
              sent_today: int, spent_today: int) -> str | None:
    limits = incoming.limits
    if limits.per_number_per_hour:
        (recent,) = conn.execute(
            "SELECT COUNT(*) FROM jobs WHERE login=? AND number=? AND created_at>=? AND state!='failed'",
            (incoming.login, job.number, hour_ago),
        ).fetchone()
        recent += sum(1 for k in kept if k.number == job.number)
        if recent >= limits.per_number_per_hour:
            return f"at most {limits.per_number_per_hour} SMS per hour to one number"
    if limits.sms_per_day and sent_today + len(kept) >= limits.sms_per_day:
        return f"at most {limits.sms_per_day} SMS per day for this account"
    if limits.spend_per_day and spent_today + sum(k.cost for k in kept) + job.cost > limits.spend_per_day:
        return f"at most {limits.spend_per_day} credits per day for this account"
    return None

