"""PostgreSQL for the tests: a fresh schema per test on the local server, or a private server.

The local server is ``$MAIL2SMS_TEST_PG`` (default ``postgresql://postgres@127.0.0.1:5432/test``).
When it cannot be reached the test fails (never skips) and says how to start it.

``PrivateServer`` runs Debian's PostgreSQL binaries on a temporary data folder and port of
its own, so a test can stop and start it under the bridge's feet.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import quote

import asyncpg
import pytest

PG_URL = os.environ.get("MAIL2SMS_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
HOW_TO_START = (
    "start it with: pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start "
    "(Debian's postgresql package; trust auth for 127.0.0.1, a database named test), "
    "or point $MAIL2SMS_TEST_PG at another server"
)
PG_BIN = Path(os.environ.get("MAIL2SMS_PG_BIN", "/usr/lib/postgresql/15/bin"))


def with_schema(url: str, schema: str) -> str:
    """``url`` with the session setting ``search_path`` (asyncpg passes unknown options on)."""
    return f"{url}{'&' if '?' in url else '?'}search_path={quote(schema)}"


async def admin_connect(url: str = PG_URL) -> asyncpg.Connection:
    """A connection to the test server, or a test failure saying how to start one."""
    try:
        return await asyncpg.connect(url, timeout=5)
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
        pytest.fail(f"PostgreSQL is not reachable at {url} ({type(exc).__name__}: {exc}); {HOW_TO_START}",
                    pytrace=False)


@contextlib.asynccontextmanager
async def fresh_schema() -> AsyncIterator[str]:
    """The URL of a new, empty schema on the test server; dropped on leaving."""
    schema = f"m2s_test_{uuid.uuid4().hex[:12]}"
    admin = await admin_connect()
    try:
        await admin.execute(f'CREATE SCHEMA "{schema}"')
        yield with_schema(PG_URL, schema)
    finally:
        await admin.execute("SET lock_timeout = '20s'")  # a store a failed test left open must not hang us
        await admin.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        await admin.close()


@pytest.fixture
async def pg_url() -> AsyncIterator[str]:
    """The URL of a fresh, empty schema on the test server, dropped after the test."""
    async with fresh_schema() as url:
        yield url


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class PrivateServer:
    """A PostgreSQL server of our own (``initdb`` in a temporary folder, its own port).

    As root, the binaries run as the ``postgres`` user (PostgreSQL refuses to run as root).
    """

    def __init__(self) -> None:
        if not (PG_BIN / "initdb").exists():
            pytest.fail(f"PostgreSQL's binaries are not in {PG_BIN}: apt-get install postgresql "
                        "(or set $MAIL2SMS_PG_BIN)", pytrace=False)
        self.root = Path(tempfile.mkdtemp(prefix="m2s-pg-"))
        self.data = self.root / "data"
        self.port = free_port()
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres", "postgres")
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "--no-sync", "-E", "UTF8")

    def _run(self, tool: str, *args: str) -> None:
        command = [str(PG_BIN / tool), *args]
        if os.geteuid() == 0:
            command = ["runuser", "-u", "postgres", "--", *command]
        result = subprocess.run(command, capture_output=True, text=True, timeout=120)
        if result.returncode != 0:
            raise RuntimeError(f"{tool} failed: {result.stdout}{result.stderr}")

    def start(self) -> None:
        """Start the server and wait until it accepts connections."""
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run("pg_ctl", "-D", str(self.data), "-o", options, "-l", str(self.root / "log"), "-w", "start")

    def stop(self) -> None:
        """Stop it (fast: sessions are ended, as when a server goes away)."""
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")

    def remove(self) -> None:
        """Stop it if it runs and delete its folder."""
        try:
            self.stop()
        except RuntimeError:
            pass
        shutil.rmtree(self.root, ignore_errors=True)
