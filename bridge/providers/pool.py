"""The daemon's HTTP connections to providers: httpx's API, aiohttp's connections.

Providers build their requests and read their answers with httpx (``calls.request``; tests
give them ``httpx.MockTransport``). On the wire, ``ProviderTransport`` hands each request to
one ``aiohttp.ClientSession`` (aiohttp is already the daemon's web server): its connection
pool and its HTTP/1.1 parser, written in C, take 0.2-0.4 ms of CPU per call where httpcore,
anyio and h11 took 0.8-0.9 ms; a whole call through httpx's client went from 0.8-1.1 ms to
0.4-0.5 ms on loopback (``bench/README.md``, ninth round). The provider call had been half
of the event loop's work when each mail is its own call.

What the transport keeps from httpx's own: per provider origin at most ``per_origin``
connections, opened as calls need them and kept alive 5 s; the request's headers and body
as httpx built them (the ``User-Agent``, the ``Host``, no ``Content-Type`` that httpx did
not set) and its URL as httpx encoded it; the response's body as it came, decoded (gzip...)
by httpx, once; TLS with one shared context; and httpx's exceptions, so that
``calls.request`` tells a call that never left from one that may have arrived:

- the connection could not be made, or made in time, or no connection of the origin was
  free in time (``pool`` + ``connect`` seconds): ``httpx.ConnectError`` /
  ``httpx.ConnectTimeout``; nothing was sent;
- no answer within ``read`` seconds: ``httpx.ReadTimeout``; it may have arrived;
- the connection dropped, or the answer was not HTTP: ``httpx.RemoteProtocolError`` /
  ``httpx.ReadError``; it may have arrived.

aiohttp has no write timeout: a provider's request is a few hundred bytes, which the
kernel takes at once. A POST is never sent twice by the transport (aiohttp retries only
idempotent methods on a connection that closed under it).

``provider_client`` adds the proxies the environment names, as httpx reads them
(``HTTP_PROXY``, ``HTTPS_PROXY``, ``ALL_PROXY``, ``NO_PROXY``; httpx itself skips them for a
client given its own transport); calls through a proxy take httpx's stock transport.
"""

from __future__ import annotations

import aiohttp
import httpx
import yarl
from httpx._utils import get_environment_proxies  # httpx's own reading of *_PROXY (no public name)

_KEEP_ALIVE = 5.0  # seconds an idle connection is kept (httpx's default keep-alive expiry)


def provider_client(per_origin: int) -> httpx.AsyncClient:
    """The daemon's one client for provider calls (see the module docstring)."""
    transport = ProviderTransport(per_origin)
    mounts = {pattern: None if proxy is None else httpx.AsyncHTTPTransport(proxy=proxy, verify=transport.tls)
              for pattern, proxy in get_environment_proxies().items()}
    return httpx.AsyncClient(transport=transport, mounts=mounts, headers={"User-Agent": "mail2sms-bridge"})


class ProviderTransport(httpx.AsyncBaseTransport):
    """httpx requests over one aiohttp session: ``per_origin`` connections per origin at most."""

    def __init__(self, per_origin: int) -> None:
        self.per_origin = max(1, per_origin)
        self.tls = httpx.create_ssl_context()
        self._session: aiohttp.ClientSession | None = None

    def _open(self) -> aiohttp.ClientSession:
        """The session, made on the first call (aiohttp wants the running loop)."""
        connector = aiohttp.TCPConnector(limit=0, limit_per_host=self.per_origin, ssl=self.tls,
                                         keepalive_timeout=_KEEP_ALIVE)
        self._session = aiohttp.ClientSession(
            connector=connector, auto_decompress=False, trust_env=False, cookie_jar=aiohttp.DummyCookieJar(),
            timeout=aiohttp.ClientTimeout(total=None),
            skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"))
        return self._session

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        session = self._session or self._open()
        timeout = request.extensions.get("timeout", {})
        pool, connect = timeout.get("pool"), timeout.get("connect")
        waits = aiohttp.ClientTimeout(
            total=None, sock_connect=connect, sock_read=timeout.get("read"),
            connect=None if pool is None or connect is None else pool + connect)
        body = await request.aread()
        try:
            async with session.request(
                request.method, yarl.URL(str(request.url), encoded=True), data=body or None,
                headers=request.headers.multi_items(), timeout=waits, allow_redirects=False,
            ) as answer:
                content = await answer.read()
                status, headers, reason = answer.status, answer.raw_headers, answer.reason or ""
        except aiohttp.ConnectionTimeoutError as exc:
            raise httpx.ConnectTimeout(_text(exc), request=request) from exc
        except aiohttp.ClientConnectorError as exc:
            raise httpx.ConnectError(_text(exc), request=request) from exc
        except (aiohttp.ServerTimeoutError, TimeoutError) as exc:
            raise httpx.ReadTimeout(_text(exc), request=request) from exc
        except (aiohttp.ServerDisconnectedError, aiohttp.ClientResponseError, aiohttp.ClientPayloadError) as exc:
            raise httpx.RemoteProtocolError(_text(exc), request=request) from exc
        except aiohttp.InvalidURL as exc:
            raise httpx.UnsupportedProtocol(_text(exc), request=request) from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise httpx.ReadError(_text(exc), request=request) from exc
        return httpx.Response(status, headers=list(headers), stream=httpx.ByteStream(content),
                              extensions={"http_version": b"HTTP/1.1", "reason_phrase": reason.encode()})

    async def aclose(self) -> None:
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()


def _text(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__
