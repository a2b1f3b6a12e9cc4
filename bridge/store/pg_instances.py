"""What several bridges on one PostgreSQL coordinate through, besides the tables.

- ``listen``: ``LISTEN`` on the schema's channel; every commit that creates jobs sends a
  ``NOTIFY`` (``pg_intake``), so any instance's dispatcher claims them at once.
- ``mailbox_lock``: a session advisory lock per IMAP mailbox, so one instance polls it.

Both hold a connection of their own, outside the pool: a pooled connection is reset when
it goes back (``UNLISTEN *``, ``pg_advisory_unlock_all()``), and a lock must live exactly
as long as its session, so that a dead instance's lock goes with it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

import asyncpg
import structlog

from bridge.errors import StoreError
from bridge.store.pg_sql import COMMAND_TIMEOUT, CONNECT_TIMEOUT, DRIVER_ERRORS, describe
from bridge.store.protocol import MailboxLock
from bridge.supervise import first_of

log = structlog.get_logger("bridge.store")
PING_EVERY = 10.0   # seconds: how soon a silently dead listening connection is noticed


async def listen(url: str, channel: str, on_wake: Callable[[], None], stop: asyncio.Event) -> None:
    """Call ``on_wake`` on every notification of ``channel`` until ``stop`` is set.

    When the connection breaks, it reconnects with backoff (it never raises for a
    connection problem) and calls ``on_wake`` once more, since notifications sent
    meanwhile are lost.
    """
    delay = 0.5
    while not stop.is_set():
        try:
            await _listen_once(url, channel, on_wake, stop)
            delay = 0.5
        except DRIVER_ERRORS as exc:
            log.warning("store_listen_failed", error=describe(exc), retry_in=delay)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)
            delay = min(delay * 2, 30.0)


async def _listen_once(url: str, channel: str, on_wake: Callable[[], None], stop: asyncio.Event) -> None:
    conn = await asyncpg.connect(url, timeout=CONNECT_TIMEOUT, command_timeout=COMMAND_TIMEOUT)
    lost = asyncio.Event()
    conn.add_termination_listener(lambda _: lost.set())
    try:
        await conn.add_listener(channel, lambda *_: on_wake())
        on_wake()  # whatever was committed while nobody listened
        while not stop.is_set():
            await first_of(stop.wait(), lost.wait(), timeout=PING_EVERY)
            # A session the server ended shows at once (lost); a silently dead link here.
            await conn.fetchval("SELECT 1")
    finally:
        await _close(conn)


@contextlib.asynccontextmanager
async def mailbox_lock(url: str, name: str) -> AsyncIterator[MailboxLock]:
    """Try to become the one instance polling mailbox ``name``, for the duration of the block.

    Yields a falsy lock when another instance holds it. When this process dies,
    PostgreSQL ends its session and another instance gets the lock on its next try;
    ``lost`` is set if the connection breaks while the lock is held.
    """
    try:
        conn = await asyncpg.connect(url, timeout=CONNECT_TIMEOUT, command_timeout=COMMAND_TIMEOUT)
    except DRIVER_ERRORS as exc:
        raise StoreError(describe(exc)) from None
    try:
        try:
            held = await conn.fetchval("SELECT pg_try_advisory_lock(hashtextextended($1 || current_schema(), 0))",
                                       f"mail2sms:mailbox:{name}:")
        except DRIVER_ERRORS as exc:
            raise StoreError(describe(exc)) from None
        lock = MailboxLock(bool(held))
        conn.add_termination_listener(lambda _: lock.lost.set())
        yield lock
    finally:
        await _close(conn)  # ends the session, and so the lock


async def _close(conn: asyncpg.Connection) -> None:
    with contextlib.suppress(*DRIVER_ERRORS):
        await asyncio.wait_for(conn.close(), CONNECT_TIMEOUT)
    conn.terminate()
