"""The daemon's HTTP connections to providers: per connection, a pool of one.

httpcore's connection pool walks every one of its connections on each request and each
response (twice per call), polling each idle socket and counting the idle connections
once per connection, which grows with the square of the pool. With the dispatcher's
16 calls in flight to one provider, that walk was two thirds of the daemon's CPU for
one-number SMS (``bench/README.md``; upstream: encode/httpcore#1035).

``ProviderTransport`` keeps, per origin (scheme, host, port), up to ``per_origin``
httpx transports of one connection each, opened as calls need them, and hands each
request to the one with the fewest requests in progress; a request counts until its
response is closed. So each pool walks one connection. Everything else is httpx's own:
HTTP/1.1, keep-alive and its expiry, timeouts (a request waiting for a busy connection
ends in ``PoolTimeout``), TLS with one shared context. ``provider_client`` adds the proxies
the environment names, as httpx reads them (``HTTP_PROXY``, ``HTTPS_PROXY``, ``ALL_PROXY``,
``NO_PROXY``; httpx itself skips them for a client given its own transport); calls through
a proxy take httpx's stock transport.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import httpx
from httpx._utils import get_environment_proxies  # httpx's own reading of *_PROXY (no public name)

_ONE = httpx.Limits(max_connections=1, max_keepalive_connections=1)


def provider_client(per_origin: int) -> httpx.AsyncClient:
    """The daemon's one client for provider calls (see the module docstring)."""
    transport = ProviderTransport(per_origin)
    mounts = {pattern: None if proxy is None else httpx.AsyncHTTPTransport(proxy=proxy, verify=transport.tls)
              for pattern, proxy in get_environment_proxies().items()}
    return httpx.AsyncClient(transport=transport, mounts=mounts, headers={"User-Agent": "mail2sms-bridge"})


class ProviderTransport(httpx.AsyncBaseTransport):
    """Up to ``per_origin`` one-connection transports per origin, least busy first."""

    def __init__(self, per_origin: int) -> None:
        self.per_origin = max(1, per_origin)
        self.tls = httpx.create_ssl_context()
        self._origins: dict[tuple[bytes, bytes, int | None], tuple[list[httpx.AsyncHTTPTransport], list[int]]] = {}

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        transports, busy = self._origins.setdefault((url.raw_scheme, url.raw_host, url.port), ([], []))
        if len(transports) < self.per_origin and (not busy or min(busy) > 0):
            transports.append(httpx.AsyncHTTPTransport(verify=self.tls, limits=_ONE))
            busy.append(0)
            slot = len(transports) - 1
        else:
            slot = busy.index(min(busy))
        busy[slot] += 1

        def release() -> None:
            busy[slot] -= 1

        try:
            response = await transports[slot].handle_async_request(request)
        except BaseException:
            release()
            raise
        response.stream = _Releasing(response.stream, release)
        return response

    async def aclose(self) -> None:
        for transports, _ in self._origins.values():
            for transport in transports:
                await transport.aclose()
        self._origins.clear()


class _Releasing(httpx.AsyncByteStream):
    """A response body that frees its connection's slot once, when it is closed."""

    def __init__(self, stream: httpx.AsyncByteStream, release: Callable[[], None]) -> None:
        self._stream = stream
        self._release: Callable[[], None] | None = release

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._stream:
            yield chunk

    async def aclose(self) -> None:
        try:
            await self._stream.aclose()
        finally:
            release, self._release = self._release, None
            if release is not None:
                release()
