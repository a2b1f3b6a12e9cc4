"""The one interface every SMS provider implements.

A provider is built once from its config section (``from_config`` validates every key and
raises ``ConfigError`` naming ``providers.<name>.<key>``), gets the daemon's shared
``httpx.AsyncClient``, and has one async ``send()`` that returns a ``Receipt`` or raises:

- ``TransientError``  - definitely not accepted (connection refused, DNS failure, 429, 503,
  an explicit "not accepted, try later"); the dispatcher may retry or fail over.
- ``AmbiguousError``  - may have been accepted (read timeout after the request was sent,
  HTTP 500, an unparsable answer); the job becomes ``unknown``, never re-sent blindly.
- ``PermanentError``  - refused for good (invalid number, bad credentials, no credit).

It never returns a bare bool and never logs credentials.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import httpx

from bridge.errors import AmbiguousError, ConfigError, PermanentError, TransientError


@dataclass(frozen=True)
class Sms:
    """One text to send to one or more numbers (several only for bulk-capable providers)."""

    to: tuple[str, ...]          # E.164 numbers, e.g. "+33612121515"
    text: str
    sender: str | None = None    # alphanumeric sender, None for the provider's default
    low_cost: bool = False       # Allmysms `lc=1`
    unicode: bool = False        # True when the text needs UCS-2
    parts: int = 1               # concatenated parts per recipient
    reference: str = ""          # our job id(s), for providers that accept a client ref


@dataclass(frozen=True)
class Receipt:
    """What the provider said when it accepted an SMS."""

    message_ids: Mapping[str, str] = field(default_factory=dict)  # number -> provider id
    rejected: Mapping[str, str] = field(default_factory=dict)     # number -> why it was refused
    cost: float | None = None
    raw: Mapping[str, Any] = field(default_factory=dict)          # parsed answer, for logs


class Provider:
    """Base class: settings validated once in ``from_config``; ``send`` does one call."""

    type: ClassVar[str] = ""
    # Capabilities, checked by routing before a provider is chosen for a job.
    max_batch: ClassVar[int] = 1          # numbers per call for the same text
    unicode: ClassVar[bool] = True        # can send UCS-2 text
    alphanumeric_sender: ClassVar[bool] = True
    max_parts: ClassVar[int] = 8          # concatenated parts it accepts
    default_rate: ClassVar[float] = 10.0  # messages per second unless `rate` is configured

    def __init__(self, name: str) -> None:
        self.name = name

    @classmethod
    def from_config(
        cls, name: str, settings: Mapping[str, Any], client: httpx.AsyncClient | None = None
    ) -> "Provider":
        """Build the provider from its config section; raise ``ConfigError`` on bad values."""
        raise NotImplementedError

    async def send(self, sms: Sms) -> Receipt:
        """Hand ``sms`` to the provider; raise a ``ProviderError`` subclass on failure."""
        raise NotImplementedError

    async def status(self, message_id: str, number: str) -> str | None:
        """Delivery state of an accepted SMS: ``delivered``, ``sent``, ``failed`` or None.

        None means the provider has no status API or does not know the message; the
        dispatcher uses this to reconcile ``unknown`` jobs.
        """
        return None

    async def reconcile(self, sms: Sms, since: float, message_id: str | None) -> tuple[str, str | None] | None:
        """Find out what became of an SMS whose outcome was ambiguous.

        Returns (state, provider message id) with state ``delivered``, ``sent`` or
        ``failed``, or None when the provider cannot tell. The default asks ``status()``
        when the provider message id is known.
        """
        if message_id is None:
            return None
        state = await self.status(message_id, sms.to[0])
        return (state, message_id) if state else None

    async def check(self) -> str:
        """A harmless call (balance, auth) proving the settings work; a one-line verdict.

        Raises a ``ProviderError`` when the provider is unreachable or refuses the
        credentials. The default only says that no check exists.
        """
        return "no check available for this provider"

    async def close(self) -> None:
        """Release what the provider holds (files); the shared HTTP client is not closed."""


# --- helpers shared by the provider modules --------------------------------------------


class Settings:
    """Reads one provider's config section, naming ``providers.<name>.<key>`` in errors."""

    def __init__(self, name: str, settings: Mapping[str, Any], known: set[str]) -> None:
        self.name = name
        self.settings = settings
        unknown = set(settings) - known - {"type"}
        if unknown:
            raise ConfigError(self.path(sorted(unknown)[0]), "unknown setting")

    def path(self, key: str) -> str:
        """The config path of ``key`` in this provider's section."""
        return f"providers.{self.name}.{key}"

    def str(self, key: str, default: str | None = None) -> str:
        """A non-empty string setting; required when ``default`` is None."""
        value = self.settings.get(key, default)
        if value is None:
            raise ConfigError(self.path(key), "required")
        if not isinstance(value, str) or not value.strip():
            raise ConfigError(self.path(key), "must be a non-empty string")
        return value

    def url(self, key: str = "url", default: str | None = None) -> str:
        """An http(s) URL setting, without a trailing slash."""
        value = self.str(key, default)
        try:
            parsed = httpx.URL(value)
        except Exception:
            raise ConfigError(self.path(key), "not a URL") from None
        if parsed.scheme not in ("http", "https") or not parsed.host:
            raise ConfigError(self.path(key), "not an http(s) URL")
        return value.rstrip("/")

    def number(self, key: str, default: float, minimum: float = 0) -> float:
        """A number setting (int or float) no smaller than ``minimum``."""
        value = self.settings.get(key, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < minimum:
            raise ConfigError(self.path(key), f"must be a number >= {minimum}")
        return float(value)

    def optional_url(self, key: str) -> str | None:
        """An optional http(s) URL setting, passed on exactly as written."""
        if self.settings.get(key) is None:
            return None
        self.url(key)  # validates
        return self.settings[key]

    def bool(self, key: str, default: bool) -> bool:
        """A yes/no setting."""
        value = self.settings.get(key, default)
        if not isinstance(value, bool):
            raise ConfigError(self.path(key), "must be true or false")
        return value


async def post(
    client: httpx.AsyncClient, provider: str, url: str, *, timeout: float, **kwargs: Any
) -> httpx.Response:
    """POST once and classify transport failures by whether the request may have arrived.

    Connect errors and connect timeouts mean it never left (``TransientError``); a read or
    write timeout, or a dropped connection after sending, may mean it arrived
    (``AmbiguousError``). HTTP 429 and 503 are definite refusals (``TransientError`` with
    the server's ``Retry-After``); any other 5xx is ambiguous. Other statuses are returned
    for the provider to interpret.
    """
    return await request(client, provider, "POST", url, timeout=timeout, **kwargs)


async def request(
    client: httpx.AsyncClient,
    provider: str,
    method: str,
    url: str,
    *,
    timeout: float,
    **kwargs: Any,
) -> httpx.Response:
    """Like ``post`` for any method."""
    try:
        response = await client.request(method, url, timeout=timeout, **kwargs)
    except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
        raise TransientError(f"not connected: {type(exc).__name__}", provider=provider) from None
    except httpx.TimeoutException as exc:
        raise AmbiguousError(f"no answer in time: {type(exc).__name__}", provider=provider) from None
    except httpx.HTTPError as exc:
        raise AmbiguousError(f"connection lost: {type(exc).__name__}", provider=provider) from None
    if response.status_code in (429, 503):
        raise TransientError(
            f"HTTP {response.status_code}",
            provider=provider,
            code=response.status_code,
            retry_after=retry_after(response),
        )
    if response.status_code >= 500:
        raise AmbiguousError(f"HTTP {response.status_code}", provider=provider, code=response.status_code)
    return response


def retry_after(response: httpx.Response) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or HTTP date), or None."""
    value = response.headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    from email.utils import parsedate_to_datetime
    from datetime import datetime, timezone

    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, (when - datetime.now(timezone.utc)).total_seconds())


def scrub(text: str, *secrets: str | None) -> str:
    """``text`` with every secret replaced by ``***`` (providers may echo keys back)."""
    for secret in secrets:
        if secret:
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


__all__ = [
    "AmbiguousError",
    "PermanentError",
    "Provider",
    "Receipt",
    "Settings",
    "Sms",
    "TransientError",
    "as_cost",
    "as_int",
    "json_body",
    "post",
    "request",
    "retry_after",
    "scrub",
]
