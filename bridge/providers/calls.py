"""HTTP helpers shared by the provider modules: one call, classified by what may have happened.

The rule every provider relies on: an error raised *before* the request could reach the
provider is ``TransientError`` (safe to retry or fail over); anything after the request
may have been read is ``AmbiguousError`` unless the provider's answer says otherwise.
"""

from __future__ import annotations

from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from typing import Any

import httpx

from bridge.errors import AmbiguousError, PermanentError, TransientError


async def request(
    client: httpx.AsyncClient,
    provider: str,
    method: str,
    url: str,
    *,
    timeout: float,
    definite_503: bool = False,
    **kwargs: Any,
) -> httpx.Response:
    """One request; transport failures and 429/5xx become the matching ``ProviderError``.

    Connect errors and connect/pool timeouts mean it never left (``TransientError``); a
    read or write timeout, or a connection dropped after sending, may mean it arrived
    (``AmbiguousError``). HTTP 429 is a definite "not processed, slow down"
    (``TransientError`` carrying ``Retry-After``). HTTP 503 is ambiguous - a proxy may
    answer it after the application took the request - unless the provider documents
    that a 503 means nothing was processed (``definite_503``). Other 5xx are ambiguous.
    Every other status is returned for the provider to interpret.
    """
    try:
        response = await client.request(method, url, timeout=timeout, **kwargs)
    except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
        raise TransientError(f"not connected: {type(exc).__name__}", provider=provider) from None
    except httpx.TimeoutException as exc:
        raise AmbiguousError(f"no answer in time: {type(exc).__name__}", provider=provider) from None
    except httpx.HTTPError as exc:
        raise AmbiguousError(f"connection lost: {type(exc).__name__}", provider=provider) from None
    status = response.status_code
    if status == 429 or (status == 503 and definite_503):
        raise TransientError(f"HTTP {status}", provider=provider, code=status,
                             retry_after=retry_after(response))
    if status >= 500:
        raise AmbiguousError(f"HTTP {status}", provider=provider, code=status)
    return response


async def post(client: httpx.AsyncClient, provider: str, url: str, *, timeout: float,
               **kwargs: Any) -> httpx.Response:
    """``request`` with POST."""
    return await request(client, provider, "POST", url, timeout=timeout, **kwargs)


def retry_after(response: httpx.Response) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or HTTP date), or None."""
    value = response.headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, (when - datetime.now(timezone.utc)).total_seconds())


def scrub(text: str, *secrets: str | None) -> str:
    """``text`` with every secret replaced by ``***`` (providers may echo keys back)."""
    for secret in sorted((s for s in secrets if s), key=len, reverse=True):
        text = text.replace(secret, "***")
    return text


def as_cost(value: Any) -> float | None:
    """A cost from a provider answer: a number, or None for anything else."""
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def as_int(value: Any) -> int | None:
    """An int from a provider answer (``"100"`` or ``100``), or None."""
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def digits(number: Any) -> str:
    """``+33612...``, ``0033612...`` and ``33612...`` all become ``33612...``."""
    text = "".join(ch for ch in str(number) if ch.isdigit())
    return text[2:] if text.startswith("00") else text


def json_body(response: httpx.Response, provider: str) -> Any:
    """The response parsed as JSON; an unparsable 2xx body is ambiguous (it may have sent)."""
    try:
        return response.json()
    except ValueError:
        if response.is_success:
            raise AmbiguousError(
                f"unparsable answer (HTTP {response.status_code})", provider=provider
            ) from None
        raise PermanentError(
            f"HTTP {response.status_code} with an unparsable body", provider=provider,
            code=response.status_code,
        ) from None


def answer_object(response: httpx.Response, provider: str) -> dict[str, Any]:
    """A 2xx answer's JSON object (else ``AmbiguousError``); an error answer's object or {}.

    For the many APIs whose error bodies are JSON objects of their own shape: the caller
    reads ``code``/``message`` from what this returns when ``response`` is not a success.
    """
    body = json_body(response, provider)
    if response.is_success and not isinstance(body, dict):
        raise AmbiguousError(f"answer is not a JSON object (HTTP {response.status_code})", provider=provider)
    return body if isinstance(body, dict) else {}
