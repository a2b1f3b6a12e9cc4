"""The HTTP listener over real sockets: health, readiness, limits, and answers without internals."""

from __future__ import annotations

import asyncio
import re
import select
import socket
import time

import httpx
import pytest
from aiohttp import web
from conftest import ACCOUNT_KEY, base_settings, compose, make_config, smtp_send

from structlog.testing import capture_logs

from bridge.sections import HttpConfig
from bridge.health import ReadinessCheck
from bridge.web import HttpListener


def break_reads(store) -> None:
    """Close the store's read connection, so every read fails (waiting for a read in flight:
    closing under a reading thread would crash the process)."""
    with store._read_lock:
        store._reader.close()


def http_settings(tmp_path, relay_port: int = 1, **http) -> dict:
    """The test config with the HTTP listener on an ephemeral loopback port."""
    return base_settings(tmp_path, relay_port, http={"listen": "127.0.0.1:0", **http})


@pytest.fixture
async def served(tmp_path, sink, start_bridge):
    """A bridge with its HTTP listener, and an httpx client pointed at it."""
    _, relay_port = sink
    bridge = await start_bridge(make_config(tmp_path, http_settings(tmp_path, relay_port, max_body=2048)))
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{bridge.web.port}", timeout=10) as client:
        yield bridge, client


class TestListener:
    async def test_off_by_default(self, tmp_path, start_bridge):
        """Without http.listen the daemon opens no HTTP port."""
        bridge = await start_bridge(make_config(tmp_path, base_settings(tmp_path)))
        assert bridge.web is None

    async def test_healthz_answers_while_the_process_runs(self, served):
        """/healthz is 200 with a JSON body."""
        _, client = served
        answer = await client.get("/healthz")
        assert answer.status_code == 200 and answer.json() == {"status": "alive"}
        assert answer.headers["Server"] == "mail2sms"  # no versions of the stack

    async def test_unknown_paths_are_404_without_a_listing(self, served):
        """Anything not a route is a short JSON 404: no index, no static files, no internals."""
        _, client = served
        for path in ("/", "/bridge/", "/../config.yaml", "/metrics/", "/static/x"):
            answer = await client.get(path)
            assert answer.status_code == 404, path
            assert answer.json() == {"error": "Not Found"}

    async def test_wrong_method_is_405(self, served):
        """A known path with another method is 405 with its Allow header."""
        _, client = served
        answer = await client.post("/healthz", content=b"x")
        assert answer.status_code == 405 and "GET" in answer.headers["Allow"]

    async def test_oversized_body_is_413_before_it_is_read(self, served):
        """A body above http.max_body is refused with 413, on any path."""
        _, client = served
        for path in ("/healthz", "/nowhere"):
            answer = await client.post(path, content=b"x" * 4096)
            assert answer.status_code == 413
            assert "2048" in answer.json()["error"]

    async def test_oversized_chunked_body_is_413_when_read(self, served):
        """A chunked body (no Content-Length) is cut at http.max_body when a route reads it."""
        bridge, client = served
        listener = HttpListener(bridge.config.http, bridge)

        async def echo(request: web.Request) -> web.Response:
            return web.json_response({"size": len(await request.read())})

        listener.routes.append(web.post("/echo", echo))
        await listener.start()
        try:
            async def chunks():
                for _ in range(8):
                    yield b"y" * 1024

            url = f"http://127.0.0.1:{listener.port}/echo"
            small = await client.post(url, content=b"z" * 100)
            big = await client.post(url, content=chunks())
        finally:
            await listener.stop()
        assert small.status_code == 200 and small.json() == {"size": 100}
        assert big.status_code == 413

    async def test_a_failing_handler_shows_an_error_id_never_a_traceback(self, served):
        """An unexpected exception is a 500 naming an error id; nothing of the exception leaks."""
        bridge, client = served
        listener = HttpListener(bridge.config.http, bridge)

        async def broken(request: web.Request) -> web.Response:
            raise RuntimeError("secret internal detail")

        listener.routes.append(web.get("/broken/{token}", broken))
        await listener.start()
        try:
            with capture_logs() as logs:
                answer = await client.get(f"http://127.0.0.1:{listener.port}/broken/tok-123")
        finally:
            await listener.stop()
        assert answer.status_code == 500
        assert answer.json()["error"].startswith("internal error (error id ")
        assert "secret" not in answer.text and "Traceback" not in answer.text
        [failure] = [e for e in logs if e["event"] == "http_handler_failed"]
        assert answer.json()["error"].endswith(f"{failure['error_id']})")
        assert failure["route"] == "/broken/{token}"     # the pattern: a path may hold a secret

    async def test_a_slow_handler_is_cut_at_the_timeout(self, served):
        """A request that takes longer than http.timeout is answered 503."""
        bridge, client = served
        listener = HttpListener(HttpConfig(listen=bridge.config.http.listen, max_body=2048, timeout=0.2), bridge)

        async def slow(request: web.Request) -> web.Response:
            await asyncio.sleep(30)
            return web.json_response({})

        listener.routes.append(web.get("/slow", slow))
        await listener.start()
        try:
            answer = await client.get(f"http://127.0.0.1:{listener.port}/slow")
        finally:
            await listener.stop()
        assert answer.status_code == 503 and answer.json() == {"error": "request took too long"}

    async def test_a_client_sending_its_headers_slowly_is_disconnected(self, served):
        """A request head still incomplete after the keep-alive delay gets the connection closed."""
        bridge, _ = served
        listener = HttpListener(bridge.config.http, bridge, keepalive=0.5)
        await listener.start()

        def dribble() -> int:
            head = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 200
            with socket.create_connection(("127.0.0.1", listener.port), timeout=10) as conn:
                for sent, byte in enumerate(head):
                    try:
                        conn.sendall(bytes([byte]))
                    except OSError:
                        return sent
                    select.select([conn], [], [], 0.05)   # pace the bytes; wake early on close
                return len(head)

        try:
            sent = await asyncio.to_thread(dribble)
        finally:
            await listener.stop()
        assert sent < 200

    async def test_a_malformed_request_gets_no_traceback(self, served):
        """Garbage instead of HTTP is answered 400 by the server, without internals."""
        bridge, _ = served

        def raw_exchange() -> bytes:
            with socket.create_connection(("127.0.0.1", bridge.web.port), timeout=10) as conn:
                conn.sendall(b"GARBAGE \x00\x01 nonsense\r\n\r\n")
                data = b""
                while chunk := conn.recv(4096):
                    data += chunk
                return data

        answer = await asyncio.to_thread(raw_exchange)
        assert answer.split(b"\r\n")[0].endswith(b" 400 Bad Request")
        assert b"Traceback" not in answer and b".py" not in answer


class TestReadiness:
    async def test_ready_when_everything_runs(self, served):
        """A started bridge is ready."""
        _, client = served
        answer = await client.get("/readyz")
        assert answer.status_code == 200 and answer.json() == {"status": "ready"}

    async def test_unready_when_the_store_does_not_answer(self, served):
        """A store that cannot be read makes /readyz 503, naming the store."""
        bridge, client = served
        break_reads(bridge.store)
        answer = await client.get("/readyz")
        assert answer.status_code == 503
        assert answer.json()["status"] == "not ready" and "store" in answer.json()["problems"]

    async def test_metrics_still_answer_when_the_store_does_not(self, served):
        """/metrics keeps answering (ready 0) while the store is down."""
        bridge, client = served
        break_reads(bridge.store)
        answer = await client.get("/metrics")
        assert answer.status_code == 200 and "\nmail2sms_ready 0.0\n" in answer.text

    async def test_unready_when_a_loop_cannot_recover(self, served):
        """A supervised loop that is given up makes /readyz 503 and SMTP answer 451."""
        bridge, client = served
        bridge.supervisor.max_failures = 1

        async def broken() -> None:
            raise RuntimeError("disk on fire")

        bridge.supervisor.start("broken", broken)
        await asyncio.wait_for(bridge.supervisor.failed.wait(), 10)
        answer = await client.get("/readyz")
        assert answer.status_code == 503
        problems = answer.json()["problems"]
        assert "disk on fire" in problems["supervisor"] and problems["loop:broken"] == "ended"
        code, _ = await smtp_send(bridge.smtp_port, compose(f"arthur45@{ACCOUNT_KEY}|0612121515"))
        assert code == 451

    async def test_unready_when_the_smtp_listener_is_closed(self, served):
        """No bound SMTP listener: not ready."""
        bridge, client = served
        for server in bridge.servers:
            server.close()
        answer = await client.get("/readyz")
        assert answer.status_code == 503 and "smtp" in answer.json()["problems"]

    async def test_a_loop_without_progress_is_late(self, served):
        """A periodic loop with no beat for max(3 x interval, 60 s) makes the bridge unready."""
        bridge, _ = served
        later = ReadinessCheck(bridge, clock=lambda: time.monotonic() + 120)
        verdict = await later.check()
        assert not verdict.ready
        assert re.fullmatch(r"no progress for \d+s \(late after 60s\)", verdict.problems["loop:sweep"])
        assert "loop:replies" in verdict.problems
        now = await ReadinessCheck(bridge).check()
        assert now.ready and set(now.loops) >= {"dispatcher", "sweep", "reconciler", "replies"}


class TestConfig:
    def test_defaults(self, tmp_path):
        """No http section: no listener, 64 KiB bodies, 10 s per request, no reports."""
        http = make_config(tmp_path, base_settings(tmp_path)).http
        assert http == HttpConfig(listen=None, public_url=None, max_body=65536, timeout=10.0, inbound_window=604800.0, callbacks={})

    def test_values_and_errors_name_their_key(self, tmp_path):
        """Good values are read; bad ones are reported with their key path."""
        from bridge.errors import ConfigErrors

        http = make_config(tmp_path, http_settings(tmp_path, max_body=4096, timeout="30s")).http
        assert (http.listen.port, http.max_body, http.timeout) == (0, 4096, 30.0)
        with pytest.raises(ConfigErrors) as caught:
            make_config(tmp_path, http_settings(tmp_path, listen="nowhere", max_body=10, timeout=0, tls=True))
        paths = sorted(error.path for error in caught.value.errors)
        assert paths == ["http.listen", "http.max_body", "http.timeout", "http.tls"]
