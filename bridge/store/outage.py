"""Riding out a store outage: background loops wait for a shared server to come back.

A PostgreSQL server can go away for a while (a restart, a failover, the network) and come
back; the bridge must not give up meanwhile. ``riding_out(store, stopping)`` wraps a
background loop (or one step of a periodic loop): on ``StoreError`` it logs
``store_unavailable``, waits until the store answers again (``ping``, with backoff), logs
``store_available`` and runs it again, so the supervisor never counts an outage as a
failing loop. Meanwhile SMTP answers ``451 4.3.0`` on its own (every commit raises
``StoreError``), IMAP pollers leave mail in the mailbox, and the dispatcher claims nothing.

Used for PostgreSQL only: a SQLite file that fails stays failed, and the supervisor's
"cannot recover, exit 1" is the right answer there.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import structlog

from bridge.errors import StoreError

log = structlog.get_logger("bridge.store")
T = TypeVar("T")


async def wait_until_available(store, stopping: asyncio.Event, first: float = 0.5, most: float = 10.0) -> None:
    """Return once ``store.ping()`` succeeds (or ``stopping`` is set), trying with backoff."""
    delay = first
    while not stopping.is_set():
        try:
            await store.ping()
            return
        except StoreError:
            pass
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stopping.wait(), delay)
        delay = min(delay * 2, most)


def riding_out(store, stopping: asyncio.Event, pause: float = 0.5,
               most: float = 30.0) -> Callable[[Callable[[], Awaitable[T]]], Callable[[], Awaitable[T | None]]]:
    """A wrapper for loops that waits out ``StoreError`` instead of failing the loop.

    A loop that keeps raising ``StoreError`` while the store answers ``ping`` (not an
    outage but a persistent fault) is re-run after a pause doubling up to ``most``.
    """

    def wrap(loop: Callable[[], Awaitable[T]]) -> Callable[[], Awaitable[T | None]]:
        async def run() -> T | None:
            delay = pause
            while not stopping.is_set():
                started = time.monotonic()
                try:
                    return await loop()
                except StoreError as exc:
                    log.warning("store_unavailable", error=str(exc))
                await wait_until_available(store, stopping)
                if time.monotonic() - started > 60:
                    delay = pause  # it had been working: this is a new outage
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(stopping.wait(), delay)
                delay = min(delay * 2, most)
                if not stopping.is_set():
                    log.info("store_available")
            return None

        return run

    return wrap
