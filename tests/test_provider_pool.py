"""The daemon's HTTP transport to providers (bridge.providers.pool), against a real HTTP/1.1
server on loopback that counts its connections."""

from __future__ import annotations

import asyncio
import gzip
import json
import re
import ssl

import httpx
import pytest

from bridge.providers.pool import ProviderTransport, provider_client

_LENGTH = re.compile(rb"(?im)^content-length:\s*(\d+)")


class CountingServer:
    """HTTP/1.1 with keep-alive: answers ``ok``; ``/slow`` after 0.2 s; counts connections
    and the most requests it had in progress at once. The misbehaving paths: ``/hang`` never
    answers, ``/drop`` closes without answering, ``/garbage`` answers something not HTTP,
    ``/gzip`` answers gzip-encoded JSON, ``/echo`` answers the request it read (head and
    body, as JSON), ``/close-idle`` answers and closes the kept-alive connection 20 ms later."""

    def __init__(self) -> None:
        self.connections = 0
        self.in_progress = 0
        self.most_in_progress = 0
        self.requests = 0

    async def start(self, tls: ssl.SSLContext | None = None) -> int:
        self.server = await asyncio.start_server(self.serve, "127.0.0.1", 0, ssl=tls)
        return self.server.sockets[0].getsockname()[1]

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = _LENGTH.search(head)
                body = await reader.readexactly(int(length[1])) if length else b""
                self.requests += 1
                self.in_progress += 1
                self.most_in_progress = max(self.most_in_progress, self.in_progress)
                path = head.split(b"\r\n", 1)[0].split(b" ")[1].split(b"?")[0]
                try:
                    if path == b"/slow":
                        await asyncio.sleep(0.2)
                    elif path == b"/hang":
                        await asyncio.sleep(30)
                    elif path == b"/drop":
                        return
                    elif path == b"/garbage":
                        writer.write(b"this is not HTTP\r\n\r\n")
                        await writer.drain()
                        return
                    if path == b"/gzip":
                        payload = gzip.compress(json.dumps({"credits": 12}).encode())
                        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                                     b"Content-Encoding: gzip\r\nContent-Length: %d\r\n\r\n%s" % (len(payload), payload))
                    elif path == b"/echo":
                        payload = json.dumps({"head": head.decode(), "body": body.decode()}).encode()
                        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(payload), payload))
                    else:
                        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                    await writer.drain()
                    if path == b"/close-idle":
                        await asyncio.sleep(0.02)
                        return
                finally:
                    self.in_progress -= 1
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def close(self) -> None:
        self.server.close()
        await self.server.wait_closed()


@pytest.fixture
async def server():
    running = CountingServer()
    port = await running.start()
    yield running, f"http://127.0.0.1:{port}"
    await running.close()


async def test_calls_in_flight_share_at_most_per_origin_connections_and_keep_them(server):
    """24 calls at once over at most 4 connections, all answered, 4 in progress at once;
    later calls reuse the same connections (keep-alive)."""
    counting, url = server
    async with httpx.AsyncClient(transport=ProviderTransport(per_origin=4)) as client:
        answers = await asyncio.gather(*(client.post(f"{url}/slow", json={"n": i}) for i in range(24)))
        assert [a.text for a in answers] == ["ok"] * 24
        assert counting.connections == 4 and counting.most_in_progress == 4
        for _ in range(10):
            assert (await client.get(f"{url}/fast")).text == "ok"
        assert counting.connections == 4 and counting.requests == 34


async def test_a_quiet_client_opens_one_connection(server):
    """One call at a time never opens a second connection."""
    counting, url = server
    async with httpx.AsyncClient(transport=ProviderTransport(per_origin=16)) as client:
        for _ in range(20):
            assert (await client.get(f"{url}/fast")).status_code == 200
    assert counting.connections == 1


async def test_a_cancelled_or_failed_call_frees_its_connection(server):
    """A call cancelled mid-way, and one to a port where nothing listens, leave no slot
    taken: the next calls go through, on no more connections than allowed."""
    counting, url = server
    async with httpx.AsyncClient(transport=ProviderTransport(per_origin=2)) as client:
        slow = asyncio.ensure_future(client.get(f"{url}/slow"))
        await asyncio.sleep(0.05)
        slow.cancel()
        with pytest.raises(asyncio.CancelledError):
            await slow
        with pytest.raises(httpx.ConnectError):
            await client.get("http://127.0.0.1:1/")
        await asyncio.sleep(0.3)  # the server finishes the abandoned call
        counting.most_in_progress, opened = 0, counting.connections
        answers = await asyncio.gather(*(client.get(f"{url}/slow") for _ in range(4)))
        assert all(a.text == "ok" for a in answers)
        assert counting.most_in_progress == 2  # both slots free again
        assert counting.connections - opened <= 2  # no more than the two slots


async def test_origins_have_their_own_connections(server):
    """Calls to a second provider neither wait for nor close the first one's connections."""
    counting, url = server
    other = CountingServer()
    other_url = f"http://127.0.0.1:{await other.start()}"
    try:
        async with httpx.AsyncClient(transport=ProviderTransport(per_origin=2)) as client:
            answers = await asyncio.gather(*(client.get(f"{u}/slow") for u in [url, other_url] * 4))
            assert all(a.text == "ok" for a in answers)
            assert counting.connections == 2 and other.connections == 2
            assert counting.most_in_progress == 2 and other.most_in_progress == 2
    finally:
        await other.close()


async def test_the_daemons_client_takes_proxies_from_the_environment(server, monkeypatch):
    """HTTP_PROXY is honoured (the loopback server plays the proxy), and NO_PROXY exempts a
    host, as with httpx's own client."""
    counting, url = server
    monkeypatch.setenv("HTTP_PROXY", url)
    monkeypatch.setenv("NO_PROXY", "direct.invalid")
    async with provider_client(per_origin=4) as client:
        assert (await client.get("http://provider.invalid/fast")).text == "ok"  # only the proxy can answer
        assert counting.requests == 1
        with pytest.raises(httpx.ConnectError):
            await client.get("http://direct.invalid/fast")
    assert counting.requests == 1


async def test_the_request_goes_out_as_httpx_built_it_and_the_answer_is_decoded_once(server):
    """Method, path, the client's User-Agent, the Host, the JSON body and its length reach
    the provider unchanged; a gzip-encoded answer reads as its JSON."""
    counting, url = server
    async with provider_client(per_origin=4) as client:
        echoed = (await client.post(f"{url}/echo?key=a%2Fb", json={"to": "+33612345678", "text": "Café"})).json()
        head = echoed["head"].split("\r\n")
        assert head[0] == "POST /echo?key=a%2Fb HTTP/1.1"
        fields = {name.lower(): value for name, _, value in (line.partition(": ") for line in head[1:] if line)}
        assert fields["user-agent"] == "mail2sms-bridge"
        assert fields["host"] == url.removeprefix("http://")
        assert fields["content-type"] == "application/json"
        assert json.loads(echoed["body"]) == {"to": "+33612345678", "text": "Café"}
        assert int(fields["content-length"]) == len(echoed["body"].encode())
        answer = await client.get(f"{url}/gzip")
        assert answer.json() == {"credits": 12}
        form = (await client.post(f"{url}/echo", data={"to": "+33612345678"})).json()
        assert "content-type: application/x-www-form-urlencoded" in form["head"].lower()
        assert form["body"] == "to=%2B33612345678"
        raw = (await client.post(f"{url}/echo", content=b"raw")).json()  # no type given: none sent
        assert "content-type" not in raw["head"].lower() and raw["body"] == "raw"


@pytest.mark.parametrize(
    ("path", "timeout", "error"),
    [
        pytest.param("/hang", 0.2, httpx.ReadTimeout, id="no-answer-in-time"),
        pytest.param("/drop", 5.0, httpx.RemoteProtocolError, id="dropped-after-reading"),
        pytest.param("/garbage", 5.0, httpx.RemoteProtocolError, id="not-http"),
    ],
)
async def test_a_call_that_may_have_arrived_raises_what_httpx_would(server, path, timeout, error):
    """The provider read the request, then gave no usable answer: httpx's errors for a call
    that may have arrived (``calls.request`` makes them ambiguous), never a connect error."""
    counting, url = server
    async with provider_client(per_origin=4) as client:
        with pytest.raises(error) as raised:
            await client.post(f"{url}{path}", json={"n": 1}, timeout=timeout)
        assert not isinstance(raised.value, (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout))
        assert counting.requests == 1
        assert (await client.get(f"{url}/fast")).text == "ok"  # the connection was not reused


async def test_no_free_connection_in_time_is_a_call_never_sent(server):
    """With the origin's one connection busy, a call that cannot get it within its pool and
    connect timeouts fails as not connected, and the provider never sees it."""
    counting, url = server
    async with httpx.AsyncClient(transport=ProviderTransport(per_origin=1)) as client:
        slow = asyncio.ensure_future(client.get(f"{url}/slow"))
        await asyncio.sleep(0.05)
        with pytest.raises(httpx.ConnectTimeout):
            await client.post(f"{url}/fast", json={"n": 2}, timeout=httpx.Timeout(5.0, pool=0.02, connect=0.02))
        assert (await slow).text == "ok"
        assert counting.requests == 1


async def test_a_connection_the_provider_closed_while_idle_is_not_used_again(server):
    """A provider that closes kept-alive connections soon after answering: the next call
    opens a new connection instead of failing on the closed one."""
    counting, url = server
    async with provider_client(per_origin=4) as client:
        for _ in range(5):
            assert (await client.post(f"{url}/close-idle", json={"n": 1})).text == "ok"
            await asyncio.sleep(0.1)
    assert counting.requests == 5 and counting.connections == 5


async def test_tls_is_verified_and_an_untrusted_provider_never_gets_the_call(certificate):
    """Over HTTPS a certificate the daemon does not trust fails the call as not connected,
    before any request is written; once trusted, the same server answers."""
    cert, key = certificate
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(cert, key)
    counting = CountingServer()
    url = f"https://127.0.0.1:{await counting.start(tls)}"
    try:
        async with httpx.AsyncClient(transport=ProviderTransport(per_origin=2)) as client:
            with pytest.raises(httpx.ConnectError):
                await client.post(f"{url}/echo", json={"n": 1})
        assert counting.requests == 0
        trusting = ProviderTransport(per_origin=2)
        trusting.tls.load_verify_locations(cert)
        async with httpx.AsyncClient(transport=trusting) as client:
            assert json.loads((await client.post(f"{url}/echo", json={"n": 1})).json()["body"]) == {"n": 1}
        assert counting.requests == 1
    finally:
        await counting.close()
