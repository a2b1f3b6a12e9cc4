"""The daemon: store, providers, dispatcher, replies and SMTP listener in one event loop.

``Bridge`` wires the parts together and is what tests start in-process; ``serve`` adds
signals (SIGTERM/SIGINT stop it gracefully) and systemd notification.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Callable

import httpx
import structlog

from bridge.config import Config
from bridge.dispatcher import Dispatcher
from bridge.imap import start_pollers
from bridge.intake import Intake
from bridge.notify import sd_notify
from bridge.providers.base import Provider
from bridge.providers.registry import build_provider
from bridge.replies import ReplySender
from bridge.smtp import start_smtp
from bridge.store import Store

log = structlog.get_logger("bridge.daemon")


class Bridge:
    """Every running part of the bridge; ``start()`` then ``stop()``."""

    def __init__(self, config: Config, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.clock = clock
        self.stopping = asyncio.Event()
        self.store: Store | None = None
        self.providers: dict[str, Provider] = {}
        self.dispatcher: Dispatcher | None = None
        self.intake: Intake | None = None
        self.servers: list[asyncio.AbstractServer] = []
        self._tasks: list[asyncio.Task] = []
        self._http: httpx.AsyncClient | None = None

    @property
    def smtp_port(self) -> int:
        """The port the plain SMTP listener is bound to (useful with ``listen: ...:0``)."""
        return self.servers[0].sockets[0].getsockname()[1]

    async def start(self) -> None:
        """Open the store, recover, build providers, start the workers and the listener."""
        config = self.config
        self.store = await Store.open(config.sqlite_path())
        now = self.clock()
        await self.store.open_accounts({a.login: a.credits for a in config.accounts.values()}, now)
        recovered = await self.store.recover_sending(now)
        if recovered:
            log.warning("jobs_marked_unknown_after_restart", job_ids=recovered)
        self._http = httpx.AsyncClient(
            limits=httpx.Limits(max_connections=100, max_keepalive_connections=20),
            headers={"User-Agent": "mail2sms-bridge"},
        )
        self.providers = {
            name: build_provider(name, settings, self._http) for name, settings in config.providers.items()
        }
        self.dispatcher = Dispatcher(config, self.store, self.providers, self.clock)
        self.intake = Intake(config, self.store, self.clock, on_commit=self.dispatcher.wake)
        replies = ReplySender(config.replies, self.store, self.clock)
        self._tasks = [
            asyncio.create_task(self.dispatcher.run(self.stopping), name="dispatcher"),
            asyncio.create_task(self.dispatcher.run_reconciler(self.stopping), name="reconciler"),
            asyncio.create_task(replies.run(self.stopping), name="replies"),
        ]
        self._tasks += await start_pollers(config, self.intake, self.store, self.stopping, self.clock)
        self.servers = await start_smtp(config.smtp, self.intake)
        log.info(
            "bridge_started", accounts=len(config.accounts), providers=list(self.providers),
            imap=list(config.imap),
        )

    async def stop(self) -> None:
        """Stop accepting, let in-flight work finish (grace period), close everything."""
        for server in self.servers:
            server.close()
        for server in self.servers:
            await server.wait_closed()
        self.stopping.set()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        for provider in self.providers.values():
            await provider.aclose()
        if self._http is not None:
            await self._http.aclose()
        if self.store is not None:
            await self.store.close()
        log.info("bridge_stopped")


async def serve(config: Config) -> int:
    """Run until SIGTERM or SIGINT; return the process exit code."""
    bridge = Bridge(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await bridge.start()
    except OSError as exc:
        log.error("startup_failed", error=str(exc))
        await bridge.stop()
        return 1
    sd_notify("READY=1\nSTATUS=accepting mail")
    await stop.wait()
    sd_notify("STOPPING=1")
    log.info("shutdown_requested")
    await bridge.stop()
    return 0
