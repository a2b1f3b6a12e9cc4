"""The one thread that writes to SQLite, committing whatever is queued as one group.

The writes queued while the previous commit was being fsynced run together in one
transaction and are acknowledged by one ``COMMIT``: many SMTP sessions committing at
once cost one fsync per batch, not one per mail, and each caller still gets its answer
only after its own data is on disk. Every caller's future is resolved whatever fails: a
write that raises rolls back alone (the batch is then run again with a savepoint around
each write, so a write must act on the database only); a failed ``COMMIT`` (or
``ROLLBACK``) fails the whole batch, and the connection is reopened so the next batch
starts clean.
"""

from __future__ import annotations

import asyncio
import queue
import sqlite3
import threading
from collections.abc import Callable
from typing import Any

import structlog

from bridge.errors import StoreError

log = structlog.get_logger("bridge.store")
MAX_GROUP = 256

Write = Callable[[sqlite3.Connection], Any]
Item = tuple[Write, asyncio.Future]


class Writer(threading.Thread):
    """Runs queued writes in group commits until ``stop()``."""

    def __init__(self, connect: Callable[[], sqlite3.Connection]) -> None:
        super().__init__(name="store-writer", daemon=True)
        self._connect = connect
        self.conn = connect()
        self.items: queue.SimpleQueue[Item | None] = queue.SimpleQueue()

    def submit(self, fn: Write, future: asyncio.Future) -> None:
        """Queue ``fn``; ``future`` gets its result once committed (or its error)."""
        self.items.put((fn, future))

    def stop(self) -> None:
        """Finish what is queued, then end the thread."""
        self.items.put(None)

    def run(self) -> None:
        while True:
            first = self.items.get()
            if first is None:
                self.conn.close()
                return
            batch = [first]
            while len(batch) < MAX_GROUP:
                try:
                    item = self.items.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    self.items.put(None)  # finish this batch, then stop
                    break
                batch.append(item)
            try:
                results = self._commit(batch)
            except BaseException as exc:  # never leave a caller waiting
                log.error("store_batch_failed", error=str(exc))
                results = [(future, False, StoreError(f"commit failed: {exc}")) for _, future in batch]
            _deliver(results)

    def _commit(self, batch: list[Item]) -> list[tuple[asyncio.Future, bool, Any]]:
        """One transaction for the batch. The writes run one after the other as they are; only
        when one raises is the batch rolled back and run again, each write in a savepoint, so
        the others still commit (savepoints on every write cost two statements each)."""
        conn = self.conn
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                results = [(future, True, fn(conn)) for fn, future in batch]
            except Exception as exc:  # one bad write must not sink the others
                conn.execute("ROLLBACK")
                if len(batch) == 1:
                    return [(batch[0][1], False, exc)]
                conn.execute("BEGIN IMMEDIATE")
                results = self._isolated(batch)
            conn.execute("COMMIT")
            return results
        except Exception as exc:
            log.error("store_commit_failed", error=str(exc), writes=len(batch))
            self._abandon()
            error = StoreError(f"commit failed: {exc}")
            return [(future, False, error) for _, future in batch]

    def _isolated(self, batch: list[Item]) -> list[tuple[asyncio.Future, bool, Any]]:
        """The batch again, each write in its own savepoint: one that raises rolls back alone."""
        results: list[tuple[asyncio.Future, bool, Any]] = []
        conn = self.conn
        for i, (fn, future) in enumerate(batch):
            conn.execute(f"SAVEPOINT w{i}")
            try:
                results.append((future, True, fn(conn)))
            except Exception as exc:
                conn.execute(f"ROLLBACK TO w{i}")
                results.append((future, False, exc))
            conn.execute(f"RELEASE w{i}")
        return results

    def _abandon(self) -> None:
        """Roll back; if even that fails, reopen the connection."""
        try:
            if self.conn.in_transaction:
                self.conn.execute("ROLLBACK")
            return
        except Exception as exc:
            log.error("store_rollback_failed", error=str(exc))
        try:
            self.conn.close()
        except Exception:
            pass
        try:
            self.conn = self._connect()
        except Exception as exc:  # the next batch will fail and say so
            log.error("store_reopen_failed", error=str(exc))


def _deliver(results: list[tuple[asyncio.Future, bool, Any]]) -> None:
    """One wake-up per event loop for the whole batch, not one per write."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future, bool, Any]]] = {}
    for item in results:
        by_loop.setdefault(item[0].get_loop(), []).append(item)
    for loop, items in by_loop.items():
        try:
            loop.call_soon_threadsafe(resolve, items)
        except RuntimeError:
            pass  # that loop is closed: nobody is waiting any more


def resolve(items: list[tuple[asyncio.Future, bool, Any]]) -> None:
    """Each ``(future, ok, value)``: its result or its error; a cancelled one is skipped."""
    for future, ok, value in items:
        if future.done():
            continue  # cancelled: the data is committed all the same
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)
