"""Stand-ins for SMS provider HTTP APIs, for tests: no mocks, only scripted answers.

- ``Answers``: a ``httpx.MockTransport`` handler that records requests and plays scripted
  outcomes (an ``httpx.Response`` or an httpx exception class to raise).
- ``FakeHttpServer``: a real HTTP/1.1 server on 127.0.0.1 (a thread), recording each request
  and answering from a queue of ``Reply`` (status, JSON or raw body, headers, a delay, or
  ``drop`` = read the request then close without answering); an optional ``router`` answers
  side requests (a token, the server clock) before the queue is consulted.
- ``closed_port()``: a loopback port with nothing listening (connection refused).
"""

from __future__ import annotations

import json
import socket
import threading
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx


class Answers:
    """A MockTransport handler: records requests, plays outcomes in order (the last repeats)."""

    def __init__(self, *outcomes: httpx.Response | type[Exception]) -> None:
        self.outcomes = list(outcomes)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        outcome = self.outcomes.pop(0) if len(self.outcomes) > 1 else self.outcomes[0]
        if isinstance(outcome, type) and issubclass(outcome, Exception):
            raise outcome("scripted failure", request=request)
        return outcome

    def client(self) -> httpx.AsyncClient:
        """An AsyncClient whose every request is answered by this handler."""
        return httpx.AsyncClient(transport=httpx.MockTransport(self))


@dataclass(frozen=True)
class Reply:
    """One scripted answer of ``FakeHttpServer``."""

    status: int = 200
    json: Any = None
    body: bytes | str | None = None          # raw body, used when ``json`` is None
    headers: Mapping[str, str] = field(default_factory=dict)
    delay: float = 0.0                        # seconds to wait before answering
    drop: bool = False                        # close the connection without answering


@dataclass(frozen=True)
class Recorded:
    """One request the fake server received."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]                   # lower-case names
    body: bytes

    def json(self) -> Any:
        """The body parsed as JSON."""
        return json.loads(self.body)


class FakeHttpServer:
    """A scripted HTTP server on 127.0.0.1; use as a context manager."""

    def __init__(self, *replies: Reply, router: Callable[[Recorded], Reply | None] | None = None) -> None:
        self.requests: list[Recorded] = []
        self.router = router
        self._replies: deque[Reply] = deque(replies)
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._server.daemon_threads = True
        self._server.fake = self  # type: ignore[attr-defined]
        self._server.handle_error = lambda request, address: None  # client gone: expected
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        """Base URL, without a trailing slash."""
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def reply(self, *replies: Reply) -> None:
        """Queue more answers."""
        with self._lock:
            self._replies.extend(replies)

    def start(self) -> FakeHttpServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()  # cut short any scripted delay
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> FakeHttpServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _next(self, recorded: Recorded) -> Reply:
        with self._lock:
            self.requests.append(recorded)
            routed = self.router(recorded) if self.router else None
            if routed is not None:
                return routed
            if self._replies:
                return self._replies.popleft()
        return Reply(status=418, json={"error": "no scripted reply left"})


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _serve(self) -> None:
        fake: FakeHttpServer = self.server.fake  # type: ignore[attr-defined]
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length) if length else b""
        parts = urlsplit(self.path)
        reply = fake._next(
            Recorded(
                method=self.command,
                path=parts.path,
                query=parse_qs(parts.query),
                headers={k.lower(): v for k, v in self.headers.items()},
                body=body,
            )
        )
        if reply.delay:
            fake._stopping.wait(reply.delay)
        if reply.drop:
            self.close_connection = True
            return
        if reply.json is not None:
            payload, content_type = json.dumps(reply.json).encode(), "application/json"
        else:
            raw = reply.body or b""
            payload = raw.encode() if isinstance(raw, str) else raw
            content_type = "text/plain; charset=utf-8"
        self.send_response(reply.status)
        headers = {"Content-Type": content_type, **reply.headers}
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_POST = do_PUT = do_DELETE = _serve

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib name
        """Keep test output quiet."""


def closed_port() -> int:
    """A loopback TCP port nobody listens on (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def raised_by(make: Callable[[httpx.AsyncClient], Any], sms: Any, *outcomes: Any) -> Exception:
    """What ``make(client).send(sms)`` raises when the API answers ``outcomes`` in order."""
    async with Answers(*outcomes).client() as client:
        try:
            await make(client).send(sms)
        except Exception as exc:  # noqa: BLE001 - the caller asserts on the type
            return exc
    raise AssertionError("send() raised nothing")


async def requests_of(make: Callable[[httpx.AsyncClient], Any], sms: Any, *outcomes: Any) -> list[httpx.Request]:
    """The requests ``make(client).send(sms)`` made while the API answered ``outcomes``."""
    answers = Answers(*outcomes)
    async with answers.client() as client:
        await make(client).send(sms)
    return answers.requests
