"""The HTTP listener inside the daemon (``http.listen``; off by default).

aiohttp's server runs in the daemon's own event loop (``AppRunner`` + ``TCPSite``, no
thread, no second loop, no signal handlers of its own). Routes:

- ``GET /healthz``: 200 while the process runs.
- ``GET /readyz``: 200 when ready, else 503 and what is wrong (see ``bridge.health``).
- ``GET /metrics``: Prometheus text format (see ``bridge.metrics``).
- ``GET|POST /dlr/<provider>/<secret>`` and ``/inbound/<provider>/<secret>``: delivery
  reports and SMS replies of the providers in ``http.callbacks`` (see ``bridge.callbacks``).
- ``PUT|POST /imap/<name>/<secret>``: a push from the IMAP server (Dovecot's
  ``push_notification``) for a mailbox with ``push_secret``: its poller looks now. The
  body is not read (any push means "look"). 200 ``woken``, or ``standby`` when another
  bridge polls that mailbox (or this one is reconnecting); 403 for a wrong secret, 404
  for a mailbox without ``push_secret``.

Anything else is 404 (405 for a known path with another method). Every answer is a short
JSON body (``/metrics`` aside): never a traceback, never a listing. A request declaring
more than ``http.max_body`` bytes is answered 413 before its body is read, and a body
read later is capped at the same size; handling one request takes at most
``http.timeout`` seconds (then 503). A connection that has not sent a whole request head
within ``KEEPALIVE`` seconds of opening (or of its previous answer) is closed, which also
bounds clients that send their headers a byte at a time.
"""

from __future__ import annotations

import asyncio
import hmac
import uuid
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import structlog
from aiohttp import web

from bridge.sections import HttpConfig
from bridge.callbacks import Webhooks
from bridge.health import ReadinessCheck
from bridge.metrics import CONTENT_TYPE

if TYPE_CHECKING:
    from bridge.daemon import Bridge

log = structlog.get_logger("bridge.web")
KEEPALIVE = 15.0   # seconds a connection may stay without a complete request head
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class HttpListener:
    """The HTTP side of one bridge: ``start()``, ``port``, ``stop()``."""

    def __init__(self, config: HttpConfig, bridge: Bridge, keepalive: float = KEEPALIVE) -> None:
        self.config = config
        self.bridge = bridge
        self.keepalive = keepalive
        self.readiness = ReadinessCheck(bridge)
        self.routes: list[web.RouteDef] = [
            web.get("/healthz", self.healthz),
            web.get("/readyz", self.readyz),
            web.get("/metrics", self.metrics),
        ]
        if config.callbacks:
            hooks = Webhooks(bridge.config, lambda: bridge.providers, lambda: bridge.store, bridge.metrics,
                             bridge.clock)
            self.routes += hooks.routes()
        if any(mailbox.push_secret for mailbox in bridge.config.imap.values()):
            self.routes += [method("/imap/{name}/{secret}", self.imap_push) for method in (web.put, web.post)]
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None

    @property
    def port(self) -> int:
        """The port bound (useful with ``listen: 127.0.0.1:0``)."""
        return self._runner.addresses[0][1]

    async def start(self) -> None:
        """Bind ``http.listen`` and serve in this event loop."""
        app = web.Application(
            client_max_size=self.config.max_body,
            middlewares=[self._guard],
            # debug off whatever the loop says: aiohttp would put tracebacks in error pages.
            handler_args={"debug": False, "keepalive_timeout": self.keepalive, "max_field_size": 8190,
                          "max_headers": 64},
        )
        app.add_routes(self.routes)
        app.on_response_prepare.append(_plain_server_header)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=2.0)
        await self._runner.setup()
        listen = self.config.listen
        self._site = web.TCPSite(self._runner, listen.host, listen.port)
        await self._site.start()
        log.info("http_listening", address=f"{listen.host}:{self.port}")

    async def stop(self) -> None:
        """Close the listener and its connections."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # --- middleware: size cap, timeout, errors as short JSON ---------------------------

    @web.middleware
    async def _guard(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.content_length is not None and request.content_length > self.config.max_body:
            return _error(413, f"request body larger than {self.config.max_body} bytes")
        try:
            return await asyncio.wait_for(handler(request), self.config.timeout)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            answer = _error(exc.status, exc.reason)
            if "Allow" in exc.headers:
                answer.headers["Allow"] = exc.headers["Allow"]
            return answer
        except asyncio.TimeoutError:
            log.warning("http_timeout", route=_route(request), timeout=self.config.timeout)
            return _error(503, "request took too long")
        except Exception as exc:  # a bug: log it with an id, never show it
            error_id = uuid.uuid4().hex[:12]
            log.error("http_handler_failed", route=_route(request), error_id=error_id, exc_info=exc)
            return _error(500, f"internal error (error id {error_id})")

    # --- routes ------------------------------------------------------------------------

    async def healthz(self, request: web.Request) -> web.Response:
        """The process runs and its loop answers."""
        return web.json_response({"status": "alive"})

    async def readyz(self, request: web.Request) -> web.Response:
        """200 when the bridge can take and send mail now; 503 with the problems otherwise."""
        verdict = await self.readiness.check()
        if verdict.ready:
            return web.json_response({"status": "ready"})
        return web.json_response({"status": "not ready", "problems": verdict.problems}, status=503)

    async def metrics(self, request: web.Request) -> web.Response:
        """Every metric of this bridge, the store-backed ones refreshed (cached briefly)."""
        bridge = self.bridge
        verdict = await self.readiness.check()
        breakers = bridge.dispatcher.breakers if bridge.dispatcher is not None else {}
        await bridge.metrics.refresh(bridge.store, breakers, verdict.loops, verdict.ready, bridge.clock())
        return web.Response(body=bridge.metrics.render(), headers={"Content-Type": CONTENT_TYPE})

    async def imap_push(self, request: web.Request) -> web.Response:
        """Wake the poller of ``imap.<name>`` (see the module docstring)."""
        name = request.match_info["name"]
        mailbox = self.bridge.config.imap.get(name)
        if mailbox is None or mailbox.push_secret is None:
            raise web.HTTPNotFound()
        if not hmac.compare_digest(request.match_info["secret"].encode(), mailbox.push_secret.encode()):
            log.warning("imap_push_forbidden", imap=name, peer=request.remote)
            self.bridge.metrics.imap_push(name, "forbidden")
            return _error(403, "forbidden")
        poller = self.bridge.pollers.get(name)
        result = "woken" if poller is not None and poller.wake() else "standby"
        self.bridge.metrics.imap_push(name, result)
        return web.json_response({"result": result})


async def _plain_server_header(request: web.Request, response: web.StreamResponse) -> None:
    response.headers["Server"] = "mail2sms"


def _route(request: web.Request) -> str:
    """The route's pattern (``/dlr/{provider}/{secret}``), never the path: it may hold a secret."""
    info = request.match_info.route.resource
    return info.canonical if info is not None else "(no route)"


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)
