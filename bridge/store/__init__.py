"""The durable store: the bridge's only state, behind the ``Store`` protocol.

``open_store(config)`` opens the backend the ``store:`` URL names (``sqlite://`` today).
"""

from __future__ import annotations

from bridge.store.protocol import Store
from bridge.store.sqlite import SqliteStore

__all__ = ["Store", "SqliteStore", "open_store"]


async def open_store(config) -> Store:
    """Open (creating and migrating) the store of ``config.store``."""
    return await SqliteStore.open(config.sqlite_path())
