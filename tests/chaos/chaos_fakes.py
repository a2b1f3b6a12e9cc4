"""The two servers the daemon talks to in the chaos tests, both real sockets on 127.0.0.1.

- ``FlakyGateway``: an SMS gateway for the generic ``http`` provider. Each POST is given a
  seeded random behaviour (see ``Behaviour``); the SMS it *received* (answered 200, answered
  200 late, or held until the client gave up) are recorded, and ``GET /lookup?ref=...``
  says whether a client reference was received. It also knows which requests were in
  flight at any moment, so a test can say how many calls a SIGKILL interrupted.
- ``StatusRelay``: the SMTP relay the daemon mails numbered statuses through (aiosmtpd in
  its own thread and event loop); it keeps every status mail, parsed.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import json
import random
import re
import select
import threading
import time
from dataclasses import dataclass
from enum import Enum
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from aiosmtpd.smtp import SMTP

# --- the SMS gateway ------------------------------------------------------------------


class Behaviour(str, Enum):
    """What the gateway does with one POST."""

    OK = "ok"                  # 200 {"id": ...} at once: received
    SLOW = "slow"              # 200 {"id": ...} after a delay shorter than the client timeout: received
    TIMEOUT = "timeout"        # received, then never answered until the client hangs up
    RATE_LIMITED = "429"       # 429 with Retry-After: not received
    UNAVAILABLE = "503"        # 503: not received
    REFUSED = "400"            # 400: refused for good, not received

    @property
    def received(self) -> bool:
        """Whether the SMS counts as out (the handset will get it)."""
        return self in (Behaviour.OK, Behaviour.SLOW, Behaviour.TIMEOUT)


#: Share of each behaviour; the rest of the tests only rely on all of them occurring.
DEFAULT_MIX: dict[Behaviour, float] = {
    Behaviour.OK: 0.72,
    Behaviour.SLOW: 0.08,
    Behaviour.TIMEOUT: 0.04,
    Behaviour.RATE_LIMITED: 0.07,
    Behaviour.UNAVAILABLE: 0.07,
    Behaviour.REFUSED: 0.02,
}


@dataclass
class Call:
    """One POST the gateway read."""

    seq: int
    reference: str
    number: str
    text: str
    behaviour: Behaviour
    started: float                      # time.monotonic() when the request was read
    finished: float | None = None       # when the answer was written, or the client hung up
    message_id: str | None = None       # the id given to a received SMS

    def open_at(self, moment: float, settle: float) -> bool:
        """In flight at ``moment``: read before it, and not finished ``settle`` s before it.

        ``settle`` covers an answer already written but not yet read and recorded by the
        client when it died.
        """
        return self.started <= moment and (self.finished is None or self.finished > moment - settle)


class FlakyGateway:
    """The fake SMS gateway; use as a context manager (``with FlakyGateway(seed) as gw``)."""

    def __init__(
        self,
        seed: int,
        mix: dict[Behaviour, float] | None = None,
        slow_delay: tuple[float, float] = (0.2, 0.7),
        hold_limit: float = 30.0,
    ) -> None:
        self._rng = random.Random(seed)
        mix = mix or DEFAULT_MIX
        self._behaviours = list(mix)
        self._weights = [mix[b] for b in self._behaviours]
        self.slow_delay = slow_delay
        self.hold_limit = hold_limit            # a held request is dropped after this anyway
        self.calls: list[Call] = []
        self.lookups = 0
        self._by_reference: dict[str, Call] = {}
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _GatewayHandler, bind_and_activate=False)
        self._server.request_queue_size = 256   # bursts of reconnects after a restart
        self._server.daemon_threads = True
        self._server.allow_reuse_address = True
        self._server.server_bind()
        self._server.server_activate()
        self._server.gateway = self  # type: ignore[attr-defined]
        self._server.handle_error = lambda request, address: None  # a client that vanished
        self._thread = threading.Thread(target=self._server.serve_forever, name="gateway", daemon=True)

    # --- lifecycle

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    @property
    def send_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/send"

    @property
    def lookup_url(self) -> str:
        """The ``reconcile_url`` template for the daemon's ``http`` provider."""
        return f"http://127.0.0.1:{self.port}/lookup?ref={{reference}}"

    def __enter__(self) -> FlakyGateway:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stopping.set()                    # releases held and slow requests
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)

    # --- what tests read

    def received(self) -> list[Call]:
        """Every SMS that went out, in arrival order (a duplicate appears twice)."""
        with self._lock:
            return [c for c in self.calls if c.behaviour.received]

    def in_flight(self, moment: float, settle: float) -> list[Call]:
        """The requests open at ``moment`` (see ``Call.open_at``)."""
        with self._lock:
            return [c for c in self.calls if c.open_at(moment, settle)]

    def counts(self) -> dict[str, int]:
        """How many requests got each behaviour."""
        with self._lock:
            result = {b.value: 0 for b in self._behaviours}
            for call in self.calls:
                result[call.behaviour.value] += 1
            return result

    # --- used by the handler

    def _begin(self, payload: dict[str, Any]) -> Call:
        with self._lock:
            behaviour = self._rng.choices(self._behaviours, self._weights)[0]
            call = Call(
                seq=len(self.calls), reference=str(payload.get("ref", "")),
                number=str(payload.get("to", "")), text=str(payload.get("text", "")),
                behaviour=behaviour, started=time.monotonic(),
            )
            if behaviour.received:
                call.message_id = f"gw-{call.seq}"
                self._by_reference.setdefault(call.reference, call)
            self.calls.append(call)
            return call

    def _slow_delay(self) -> float:
        with self._lock:
            return self._rng.uniform(*self.slow_delay)

    def _finish(self, call: Call) -> None:
        with self._lock:
            call.finished = time.monotonic()

    def _lookup(self, reference: str) -> Call | None:
        with self._lock:
            self.lookups += 1
            return self._by_reference.get(reference)


class _GatewayHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:  # noqa: N802 - stdlib name
        gateway: FlakyGateway = self.server.gateway  # type: ignore[attr-defined]
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        try:
            payload = json.loads(body)
        except ValueError:
            self._answer(400, {"error": "body is not JSON"})
            return
        call = gateway._begin(payload if isinstance(payload, dict) else {})
        try:
            if call.behaviour is Behaviour.TIMEOUT:
                self._hold(gateway)
            elif call.behaviour is Behaviour.RATE_LIMITED:
                self._answer(429, {"error": "slow down"}, {"Retry-After": "1"})
            elif call.behaviour is Behaviour.UNAVAILABLE:
                self._answer(503, {"error": "try later"})
            elif call.behaviour is Behaviour.REFUSED:
                self._answer(400, {"error": "number refused"})
            else:
                if call.behaviour is Behaviour.SLOW:
                    gateway._stopping.wait(gateway._slow_delay())
                self._answer(200, {"id": call.message_id, "status": "accepted"})
        except OSError:
            self.close_connection = True        # the daemon died or gave up mid-answer
        finally:
            gateway._finish(call)

    def do_GET(self) -> None:  # noqa: N802 - stdlib name
        gateway: FlakyGateway = self.server.gateway  # type: ignore[attr-defined]
        parts = urlsplit(self.path)
        if parts.path != "/lookup":
            self._answer(404, {"error": "no such path"})
            return
        reference = (parse_qs(parts.query).get("ref") or [""])[0]
        call = gateway._lookup(reference)
        try:
            if call is None:
                self._answer(404, {"status": "unknown", "error": "no such reference"})
            else:
                self._answer(200, {"status": "sent", "id": call.message_id})
        except OSError:
            self.close_connection = True

    def _answer(self, status: int, payload: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)
        self.wfile.flush()

    def _hold(self, gateway: FlakyGateway) -> None:
        """Say nothing until the client hangs up (its timeout), the test ends, or a cap."""
        self.close_connection = True
        deadline = time.monotonic() + gateway.hold_limit
        sock = self.connection
        while not gateway._stopping.is_set() and time.monotonic() < deadline:
            readable, _, _ = select.select([sock], [], [], 0.2)
            if readable and not sock.recv(4096):
                return                          # EOF: the client gave up

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib name
        """Quiet: thousands of requests per test."""


# --- the reply relay -------------------------------------------------------------------

_STATUS_LINE = re.compile(r"^Status:\s*(\d{3})\s*$", re.MULTILINE)


@dataclass(frozen=True)
class StatusMail:
    """One numbered status the daemon mailed."""

    to: tuple[str, ...]
    code: int | None
    in_reply_to: str
    message_id: str
    body: str


class _RelayHandler:
    def __init__(self) -> None:
        self.mails: list[StatusMail] = []
        self.lock = threading.Lock()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        part = message.get_body(("plain",))
        body = part.get_content() if part is not None else ""
        header = str(message.get("X-Mail2SMS-Status", "")).strip()
        found = _STATUS_LINE.search(body)
        code = int(header) if header.isdigit() else int(found.group(1)) if found else None
        mail = StatusMail(
            to=tuple(envelope.rcpt_tos), code=code,
            in_reply_to=str(message.get("In-Reply-To", "")).strip(),
            message_id=str(message.get("Message-ID", "")).strip(), body=body,
        )
        with self.lock:
            self.mails.append(mail)
        return "250 OK"


class StatusRelay:
    """An aiosmtpd relay on 127.0.0.1 in a thread of its own; use as a context manager."""

    def __init__(self) -> None:
        self._handler = _RelayHandler()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="relay", daemon=True)
        self._server: asyncio.AbstractServer | None = None

    @property
    def port(self) -> int:
        assert self._server is not None
        return self._server.sockets[0].getsockname()[1]

    def mails(self) -> list[StatusMail]:
        with self._handler.lock:
            return list(self._handler.mails)

    def __enter__(self) -> StatusRelay:
        self._thread.start()
        start = self._loop.create_server(lambda: SMTP(self._handler, enable_SMTPUTF8=True), "127.0.0.1", 0)
        self._server = asyncio.run_coroutine_threadsafe(start, self._loop).result(timeout=10)
        return self

    def __exit__(self, *exc_info: object) -> None:
        async def close() -> None:
            if self._server is not None:
                self._server.close()

        try:
            asyncio.run_coroutine_threadsafe(close(), self._loop).result(timeout=10)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
            self._loop.close()
