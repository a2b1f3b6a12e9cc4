"""The durable store: the bridge's only state, behind the ``Store`` protocol.

``open_store(config)`` opens the backend the ``store:`` URL names: ``sqlite://PATH`` (one
bridge) or ``postgresql://USER@HOST/DATABASE`` (several bridges sharing one queue).
"""

from __future__ import annotations

from bridge.errors import StoreError
from bridge.store.protocol import MailboxLock, Store
from bridge.store.sqlite import SqliteStore

__all__ = ["MailboxLock", "Store", "SqliteStore", "open_store", "open_url", "is_postgres"]


def is_postgres(url: str) -> bool:
    """Whether ``url`` names a PostgreSQL store."""
    return url.startswith(("postgresql://", "postgres://"))


async def open_url(url: str) -> Store:
    """Open (creating and migrating) the store at ``url``; a relative SQLite path is from the cwd."""
    if is_postgres(url):
        from bridge.store.postgres import PostgresStore  # the driver is loaded only when used

        return await PostgresStore.open(url)
    if url.startswith("sqlite://"):
        return await SqliteStore.open(url.removeprefix("sqlite://"))
    raise StoreError(f"unknown store URL (sqlite:// or postgresql://): {url.split('://')[0]}://...")


async def open_store(config) -> Store:
    """Open (creating and migrating) the store of ``config.store``."""
    if is_postgres(config.store):
        return await open_url(config.store)
    return await SqliteStore.open(config.sqlite_path())
