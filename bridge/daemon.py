"""The daemon: store, providers, dispatcher, replies and listeners in one event loop.

``Bridge`` wires the parts together and is what tests start in-process; ``serve`` adds
signals (SIGTERM/SIGINT stop it gracefully), systemd notification and the exit code.

Every background loop runs under one ``Supervisor``. If one cannot recover, the bridge
refuses new mail (SMTP ``451 4.3.0``, IMAP leaves it in the mailbox) and ``serve`` stops
and exits 1, so systemd restarts it. Shutdown: stop intake, give in-flight provider calls
``dispatcher.grace_period``, cancel what is left (calls on the wire become ``unknown``),
and give every loop one more grace period before cancelling it.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import signal
import sys
import time
from collections.abc import Callable

import httpx
import structlog

from bridge.config import Config
from bridge.dispatcher import Dispatcher
from bridge.errors import StoreError
from bridge.imap import MailboxPoller
from bridge.intake import Intake
from bridge.metrics import Metrics
from bridge.notify import sd_notify
from bridge.numbers import normalise
from bridge.callbacks import callback_urls
from bridge.providers.base import Provider
from bridge.providers.pool import provider_client
from bridge.providers.registry import build_provider
from bridge.recovery import Recovery
from bridge.replies import ReplySender
from bridge.front import Fronts
from bridge.smtp import start_smtp
from bridge.store import Store, is_postgres, open_store
from bridge.store.outage import riding_out
from bridge.supervise import Supervisor
from bridge.web import HttpListener

log = structlog.get_logger("bridge.daemon")


class Bridge:
    """Every running part of the bridge; ``start()`` then ``stop()``."""

    def __init__(self, config: Config, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.clock = clock
        self.stopping = asyncio.Event()
        self.supervisor = Supervisor(self.stopping)
        self.store: Store | None = None
        self.providers: dict[str, Provider] = {}
        self.dispatcher: Dispatcher | None = None
        self.intake: Intake | None = None
        self.servers: list[asyncio.AbstractServer] = []
        self.fronts: Fronts | None = None               # smtp.processes above 1
        self.metrics = Metrics(config.providers, config.accounts,
                               mailboxes=[name for name, box in config.imap.items() if box.push_secret])
        self.web: HttpListener | None = None
        self.pollers: dict[str, MailboxPoller] = {}     # by imap.<name>
        self._http: httpx.AsyncClient | None = None
        self._watch: asyncio.Task | None = None

    @property
    def smtp_port(self) -> int:
        """The port the plain SMTP listener is bound to (useful with ``listen: ...:0``)."""
        return self.servers[0].sockets[0].getsockname()[1]

    async def start(self) -> None:
        """Open the store, build providers, start the supervised loops and the listeners."""
        config = self.config
        self.store = await open_store(config)
        await self.store.open_accounts({a.login: a.credits for a in config.accounts.values()}, self.clock())
        self._http = provider_client(per_origin=config.dispatcher.concurrency)
        self.providers = {
            name: build_provider(name, settings, self._http) for name, settings in config.providers.items()
        }
        for name, provider in self.providers.items():
            provider.callbacks = callback_urls(config, name)
        dispatcher = self.dispatcher = Dispatcher(config, self.store, self.providers, self.clock,
                                                  metrics=self.metrics)
        recovery = Recovery(config, self.store, self.providers, dispatcher.owner, self.clock, dispatcher.wake,
                            metrics=self.metrics)
        await recovery.sweep()  # leases of a dead predecessor on this host end now
        await dispatcher.load_windows()
        self.intake = Intake(config, self.store, self.clock, commit=dispatcher.commit, metrics=self.metrics)
        replies = ReplySender(config.replies, self.store, self.clock, metrics=self.metrics)
        run = self.supervisor
        settings = config.dispatcher
        # A shared server comes back after an outage: its loops wait for it (store.outage).
        patient = riding_out(self.store, self.stopping) if is_postgres(config.store) else (lambda loop: loop)
        run.start("dispatcher", patient(lambda: dispatcher.run(self.stopping)))
        run.every("sweep", settings.sweep_interval, patient(recovery.sweep))
        run.every("reconciler", settings.reconcile_interval, patient(recovery.reconcile))
        run.every("replies", 1.0, patient(replies.send_due))
        run.start("store_listen", lambda: self.store.listen(dispatcher.wake, self.stopping))  # other instances' jobs
        for name, mailbox in config.imap.items():
            poller = self.pollers[name] = MailboxPoller(name, mailbox, self.intake, self.store, self.clock)
            run.start(f"imap:{name}", lambda poller=poller: poller.run(self.stopping))
        self._watch = asyncio.create_task(self._refuse_when_failed(), name="watch")
        shared = config.smtp.processes > 1
        self.servers = await start_smtp(config.smtp, self.intake, shared=shared, serving=not shared)
        if shared:  # bound here (a busy address is named here), listening once every front does
            if config.path is None:
                raise OSError("smtp.processes above 1 needs the daemon started from a config file")
            self.fronts = Fronts(config.smtp.processes - 1, config.path, self.intake)
            await self.fronts.start()
            for server in self.servers:
                await server.start_serving()
        if config.http.listen is not None:
            self.web = HttpListener(config.http, self)
            await self.web.start()
        log.info("bridge_started", accounts=len(config.accounts), providers=list(self.providers),
                 imap=list(config.imap), lease_owner=dispatcher.owner,
                 event_loop=type(asyncio.get_running_loop()).__module__.split(".")[0])

    async def _refuse_when_failed(self) -> None:
        await self.supervisor.failed.wait()
        if self.intake is not None:
            self.intake.refuse(f"a background loop failed: {self.supervisor.reason}")

    async def stop(self) -> None:
        """Stop accepting, let in-flight work finish (grace period), close everything."""
        if self.intake is not None:
            self.intake.refuse("shutting down")
        for server in self.servers:
            server.close()
        for server in self.servers:
            await server.wait_closed()
        if self.fronts is not None:
            await self.fronts.stop()
        if self.web is not None:
            await self.web.stop()
        self.stopping.set()
        grace = self.config.dispatcher.grace_period
        await self.supervisor.join(grace)
        if self.dispatcher is not None:
            await self.dispatcher.shutdown()
        if self._watch is not None:
            self._watch.cancel()
        for provider in self.providers.values():
            await provider.aclose()
        if self._http is not None:
            await self._http.aclose()
        if self.store is not None:
            await self.store.close()
        log.info("bridge_stopped")


def _freeze_startup_heap(config: Config) -> None:
    """Keep what startup built out of the cyclic garbage collector's walks.

    A full collection walks every object the collector tracks; once the daemon runs, most
    of them are what imports, the config and the providers built, and the phone-number
    metadata (loaded on first use, so loaded here first). Each such collection held the
    event loop ~30 ms, about every 2,500 mails at full speed, which is where the tail of
    the end of DATA -> provider latency came from. ``gc.freeze`` moves them to a
    generation that is never collected: a full collection then takes under 1 ms.
    """
    with contextlib.suppress(ValueError):
        normalise("0612121212", config.region)
    gc.collect()
    gc.freeze()


#: How long a thread may hold the GIL while another waits for it (Python's default: 5 ms).
SWITCH_INTERVAL = 0.001


def _share_the_gil() -> None:
    """Hand the GIL to the store's writer thread sooner.

    The writer lets go of the GIL while SQLite works (each statement, the fsync of COMMIT)
    and needs it back between statements; the event loop, busy with SMTP sessions, keeps it
    until the switch interval forces it to let go. Every SMTP session waiting for its 250
    waits for that commit, so the interval was in each mail's time. At 1 ms, intake with a
    connection per mail took 3-5 % more mails a second (``bench/README.md``).
    """
    sys.setswitchinterval(SWITCH_INTERVAL)


async def serve(config: Config) -> int:
    """Run until SIGTERM or SIGINT (exit 0) or a loop that cannot recover (exit 1)."""
    bridge = Bridge(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await bridge.start()
    except (OSError, StoreError) as exc:
        log.error("startup_failed", error=str(exc))
        await bridge.stop()
        return 1
    _freeze_startup_heap(config)
    _share_the_gil()
    sd_notify("READY=1\nSTATUS=accepting mail")
    stopped = asyncio.ensure_future(stop.wait())
    failed = asyncio.ensure_future(bridge.supervisor.failed.wait())
    await asyncio.wait({stopped, failed}, return_when=asyncio.FIRST_COMPLETED)
    stopped.cancel()
    failed.cancel()
    code = 1 if bridge.supervisor.failed.is_set() else 0
    sd_notify("STOPPING=1\nSTATUS=" + ("failed: " + str(bridge.supervisor.reason) if code else "stopping"))
    log.info("shutdown_requested", reason=bridge.supervisor.reason or "signal")
    await bridge.stop()
    return code
