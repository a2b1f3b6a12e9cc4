"""``mail2sms store migrate`` and ``mail2sms store copy``: move an installation between stores.

``migrate`` brings a store's schema to this bridge's version (what the daemon does at
startup), without starting anything else. ``copy`` moves everything from one store to
another, empty one (SQLite to PostgreSQL, typically): messages and their dedupe keys,
every job with its state, lease and client reference, the ledger and balances, replies,
IMAP cursors and opt-outs. Ids are kept, so client references already sent to providers
(``m2s-<job>-<attempt>``) still reconcile. Stop the bridge first: a job it held under a
lease is copied as held and the sweep of the new store's bridges takes it back when the
lease expires (``claimed`` -> ``queued``, ``calling`` -> ``unknown``), as after a crash.

The copy runs in one transaction on the destination: it lands whole or not at all.
"""

from __future__ import annotations

import argparse
import sqlite3
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from bridge.errors import ConfigError, StoreError
from bridge.store import is_postgres, open_url
from bridge.store.pg_schema import RANK_FILLS as PG_RANK_FILLS
from bridge.store.schema import RANK_FILLS
from bridge.store.sql_intake import NEXT_JOB_ID

#: table -> columns, in an order that satisfies the foreign keys.
TABLES: dict[str, tuple[str, ...]] = {
    "messages": ("id", "key", "message_id", "login", "reply_to", "summary", "outcome", "received_at"),
    "message_keys": ("key", "message"),
    "jobs": ("id", "message", "login", "number", "text", "sender", "parts", "cost", "unicode", "low_cost",
             "category", "state", "attempts", "created_at", "next_attempt_at", "updated_at", "provider",
             "provider_message_id", "last_error", "client_ref", "called_at", "lease_owner", "lease_until"),
    "ledger": ("id", "login", "amount", "reason", "job", "created_at"),
    "balances": ("login", "balance"),
    "replies": ("id", "to_addr", "code", "message", "state", "attempts", "created_at", "next_attempt_at",
                "last_error", "cap_mailbox", "cap_domain"),
    "mailboxes": ("name", "uidvalidity", "last_uid"),
    "optouts": ("number", "sender", "source", "created_at"),
    "events": ("id", "job", "at", "kind", "detail", "key"),
}
_FLOATS = {"received_at", "created_at", "next_attempt_at", "updated_at", "called_at", "lease_until", "at"}
_BOOLS = {"unicode", "low_cost"}
_SERIALS = ("messages", "jobs", "ledger", "replies", "events")
BATCH = 2000


def add_store_verbs(verbs: argparse._SubParsersAction) -> None:
    """The ``store`` verb and its actions, for ``cli.py``."""
    store = verbs.add_parser("store", help="the store itself: migrate it, copy it to another, prune it")
    actions = store.add_subparsers(dest="action", required=True, metavar="ACTION")
    migrate = actions.add_parser("migrate", help="bring the store's schema up to this version, then exit")
    migrate.add_argument("--url", help="the store to migrate (default: the config's store)")
    copy = actions.add_parser("copy", help="copy everything from one store to another, empty one")
    copy.add_argument("--from", dest="source", required=True, help="sqlite:///PATH or postgresql://...")
    copy.add_argument("--to", dest="target", required=True, help="sqlite:///PATH or postgresql://...")
    prune = actions.add_parser("prune", help="delete finished jobs, sent status mails and their mails")
    prune.add_argument("--older-than", required=True, metavar="DURATION",
                       help="e.g. 90d: what finished longer ago than this (the ledger is kept)")


async def run_store_verb(args: argparse.Namespace, load_config: Callable[[], Any]) -> int:
    """Run ``store migrate``, ``copy`` or ``prune``; print what was done; 0 (errors raise)."""
    if args.action == "migrate":
        if args.url:
            store = await open_url(args.url)
        else:
            from bridge.store import open_store

            store = await open_store(load_config())
        await store.close()
        print("store: schema up to date")
        return 0
    if args.action == "prune":
        import time

        from bridge.settings import parse_duration
        from bridge.store import open_store

        try:
            age = parse_duration(args.older_than)
        except ValueError as exc:
            raise ConfigError("--older-than", str(exc)) from None
        store = await open_store(load_config())
        try:
            counts = await store.prune(time.time() - age)
        finally:
            await store.close()
        print(", ".join(f"{n} {what} deleted" for what, n in counts.items()))
        return 0
    counts = await copy_store(args.source, args.target)
    print("copied: " + ", ".join(f"{n} {table}" for table, n in counts.items()))
    return 0


async def copy_store(source: str, target: str) -> dict[str, int]:
    """Copy every row of every table from store ``source`` to the empty store ``target``."""
    for url in (source, target):  # both exist at this bridge's schema version from here on
        await (await open_url(url)).close()
    reader, writer = _Side.of(source), _Side.of(target)
    await reader.connect()
    await writer.connect()
    try:
        if not await writer.empty():
            raise StoreError("the destination store is not empty: copy only into a new store")
        counts = await writer.load(reader)
    finally:
        await reader.close()
        await writer.close()
    return counts


class _Side:
    """One end of a copy: raw access to the tables of a SQLite file or PostgreSQL schema."""

    @staticmethod
    def of(url: str) -> "_Side":
        return _Postgres(url) if is_postgres(url) else _Sqlite(Path(url.removeprefix("sqlite://")))

    async def connect(self) -> None: ...
    async def close(self) -> None: ...
    async def empty(self) -> bool: ...
    def rows(self, table: str, columns: tuple[str, ...]) -> AsyncIterator[list[tuple]]: ...
    async def load(self, source: "_Side") -> dict[str, int]: ...

    async def job_id_floor(self) -> int:
        """The highest job id this store ever gave (pruned jobs included): the copy's new jobs
        start above it, as an id is a job's client reference at the providers."""
        ...


class _Sqlite(_Side):
    def __init__(self, path: Path) -> None:
        self.path = path
        self.conn: sqlite3.Connection | None = None

    async def connect(self) -> None:
        self.conn = sqlite3.connect(self.path, isolation_level=None)

    async def close(self) -> None:
        if self.conn is not None:
            self.conn.close()

    async def empty(self) -> bool:
        return all(self.conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] == 0 for t in TABLES)

    async def rows(self, table: str, columns: tuple[str, ...]) -> AsyncIterator[list[tuple]]:
        cursor = self.conn.execute(f"SELECT {', '.join(columns)} FROM {table}")
        while batch := cursor.fetchmany(BATCH):
            yield batch

    async def job_id_floor(self) -> int:
        return self.conn.execute(f"SELECT {NEXT_JOB_ID} - 1").fetchone()[0]

    async def load(self, source: _Side) -> dict[str, int]:
        counts: dict[str, int] = {}
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            for table, columns in TABLES.items():
                counts[table] = 0
                marks = ", ".join("?" * len(columns))
                async for batch in source.rows(table, columns):
                    self.conn.executemany(f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks})", batch)
                    counts[table] += len(batch)
            for fill in RANK_FILLS:  # what the caps count by
                self.conn.execute(fill)
            self.conn.execute("INSERT INTO meta VALUES ('job_id_floor', ?) ON CONFLICT(key) DO UPDATE "
                              "SET value=excluded.value", (await source.job_id_floor(),))
            self.conn.execute("COMMIT")
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        return counts


class _Postgres(_Side):
    def __init__(self, url: str) -> None:
        self.url = url
        self.conn = None

    async def connect(self) -> None:
        import asyncpg

        self.conn = await asyncpg.connect(self.url)

    async def close(self) -> None:
        if self.conn is not None:
            await self.conn.close()

    async def empty(self) -> bool:
        for table in TABLES:
            if await self.conn.fetchval(f"SELECT EXISTS (SELECT 1 FROM {table})"):
                return False
        return True

    async def rows(self, table: str, columns: tuple[str, ...]) -> AsyncIterator[list[tuple]]:
        async with self.conn.transaction():
            cursor = await self.conn.cursor(f"SELECT {', '.join(columns)} FROM {table}")
            while batch := await cursor.fetch(BATCH):
                yield [tuple(row) for row in batch]

    async def load(self, source: _Side) -> dict[str, int]:
        counts: dict[str, int] = {}
        async with self.conn.transaction():
            for table, columns in TABLES.items():
                counts[table] = 0
                async for batch in source.rows(table, columns):
                    records = [tuple(_to_pg(c, v) for c, v in zip(columns, row)) for row in batch]
                    await self.conn.copy_records_to_table(table, records=records, columns=list(columns))
                    counts[table] += len(batch)
            for fill in PG_RANK_FILLS:  # what the caps count by
                await self.conn.execute(fill)
            floor = await source.job_id_floor()
            for table in _SERIALS:  # new rows continue after the copied ids (jobs: after every id given)
                await self.conn.execute(
                    f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                    f"GREATEST(COALESCE((SELECT MAX(id) FROM {table}), 0), $1::bigint) + 1, false)",
                    floor if table == "jobs" else 0)
        return counts

    async def job_id_floor(self) -> int:
        return await self.conn.fetchval(
            "SELECT GREATEST(COALESCE((SELECT MAX(id) FROM jobs), 0), "
            "COALESCE(pg_sequence_last_value(pg_get_serial_sequence('jobs', 'id')), 0))")


def _to_pg(column: str, value: Any) -> Any:
    """SQLite's loose types as PostgreSQL's column types want them."""
    if value is None:
        return None
    if column in _FLOATS:
        return float(value)
    if column in _BOOLS:
        return bool(value)
    if isinstance(value, memoryview):
        return bytes(value)
    return value
