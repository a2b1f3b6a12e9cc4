"""The interface every SMS provider implements, and the small base class they share.

A provider is built once from its validated settings and the daemon's shared
``httpx.AsyncClient`` (required: validation never builds a provider). ``send()`` returns a
``Receipt`` or raises:

- ``TransientError``   definitely not accepted (connection refused, 429, an explicit "not
  accepted, try later"); the dispatcher may retry or fail over.
- ``AmbiguousError``   may have been accepted (read timeout after the request was sent,
  HTTP 500, an unparsable answer); the job becomes ``unknown``, never re-sent blindly.
- ``PermanentError``   refused for good (invalid number, bad credentials, no credit).
- ``RecipientRefused`` (a ``PermanentError``) the recipient opted out or is barred: the
  route stops there, no other provider is tried.

Optional abilities are separate protocols, checked with ``isinstance``: ``Reconciler``
(find out what became of an ambiguous send), ``Checker`` (a harmless call for
``providers check``) and ``CallbackParser`` (delivery reports and inbound SMS, for
two-way messaging). A provider never returns a bare bool and never logs credentials.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, Protocol, runtime_checkable

import httpx

from bridge.errors import ProviderError
from bridge.providers.calls import scrub
from bridge.settings import REQUIRED, URL, number, setting


#: keys of every provider section that the dispatcher reads, not the provider module
POLICY_KEYS = ("type", "rate", "circuit")


@dataclass(frozen=True)
class Sms:
    """One text to send to one or more numbers (several only for bulk-capable providers)."""

    to: tuple[str, ...]          # E.164 numbers, e.g. "+33612121515"
    text: str
    sender: str | None = None    # alphanumeric sender, None for the provider's default
    low_cost: bool = False       # Allmysms `lc=1`
    unicode: bool = False        # True when the text needs UCS-2
    parts: int = 1               # concatenated parts per recipient
    reference: str = ""          # client reference, m2s-<job>-<attempt> (<= 24 ASCII chars)
    category: str = "transactional"  # or "marketing" (OVH's STOP clause, Octopush purpose)


@dataclass(frozen=True)
class Receipt:
    """What the provider said when it accepted an SMS."""

    message_ids: Mapping[str, str] = field(default_factory=dict)  # number -> provider id
    rejected: Mapping[str, str] = field(default_factory=dict)     # number -> why it was refused
    cost: float | None = None
    raw: Mapping[str, Any] = field(default_factory=dict)          # parsed answer, for logs


@dataclass(frozen=True)
class Capabilities:
    """What a provider can carry; routing skips it for jobs outside these."""

    unicode: bool = True                 # can send UCS-2 text
    alphanumeric_sender: bool = True     # can send from a name rather than a number
    max_numbers: int = 1                 # numbers per call for the same text
    max_parts: int = 8                   # concatenated parts it accepts
    countries: frozenset[str] | None = None  # ISO regions it delivers to; None: any
    excluded: frozenset[str] = frozenset()   # ISO regions it does not deliver to
    default_rate: float = 10.0           # messages per second unless `rate` is configured

    def carries(self, region: str | None) -> bool:
        """Whether a number of ``region`` (ISO code, None if unknown) is within reach."""
        if region in self.excluded:
            return False
        return self.countries is None or region in self.countries


#: What ``reconcile`` may answer (see ``Reconciler``).
Reconciled = tuple[Literal["sent", "delivered", "failed", "not_found"], "str | None"]


@runtime_checkable
class Provider(Protocol):
    """One SMS provider: a name, its capabilities, one call per ``send``."""

    name: str
    type: ClassVar[str]
    capabilities: Capabilities

    async def send(self, sms: Sms) -> Receipt:
        """Hand ``sms`` to the provider; raise a ``ProviderError`` subclass on failure."""

    async def aclose(self) -> None:
        """Release what the provider holds (files); the shared HTTP client stays open."""


@runtime_checkable
class Reconciler(Protocol):
    """A provider that can find out what became of a send whose outcome was ambiguous."""

    async def reconcile(self, sms: Sms, since: float, message_id: str | None) -> Reconciled | None:
        """Look ``sms`` up (by ``sms.reference``, else ``message_id``, else number and time).

        ``since`` is when the call was made (epoch seconds). Returns:

        - ``("sent" | "delivered", provider_message_id)`` - the provider has it;
        - ``("failed", id or None)`` - the provider says it was not delivered;
        - ``("not_found", None)`` - the provider can say for sure it never received that
          reference (or nothing to that number in the window): it never reached it;
        - ``None`` - cannot tell (no lookup for this case, lookup failed, not yet known).
        """


@runtime_checkable
class Checker(Protocol):
    """A provider with a harmless call (balance, auth) proving its settings work."""

    async def check(self) -> str:
        """A one-line verdict; raises a ``ProviderError`` when unreachable or refused."""


class CallbackForbidden(Exception):
    """A webhook whose provider signature is missing or wrong: answered 403, nothing changes."""


@dataclass(frozen=True)
class CallbackRequest:
    """One webhook request as the provider sent it (built by ``bridge.callbacks``).

    ``url`` is the URL the provider called as the provider saw it: ``http.public_url``
    followed by the request's path and query when that is set (behind a proxy the
    listener's own URL differs), else the listener's URL. Signatures (Twilio's
    ``X-Twilio-Signature``) are computed over it. ``fields`` are the query parameters with
    the body's over them: a JSON object as is, or a form (``application/x-www-form-urlencoded``
    or multipart) as strings.
    """

    method: str
    url: str
    headers: Mapping[str, str]        # case-insensitive
    query: Mapping[str, str]
    body: bytes
    content_type: str
    fields: Mapping[str, Any]


@dataclass(frozen=True)
class Callback:
    """One event a provider pushed to us: a delivery report or an inbound SMS.

    Delivery reports: ``message_id`` is the provider's id of our SMS (what its send answer
    gave), ``reference`` our client reference when the provider echoes it; ``state`` is
    ``delivered``/``undelivered`` (a ``JobState`` value) or None for an intermediate status
    (queued, accepted by the operator, buffered) which changes nothing; ``status`` is the
    provider's own word and ``reason`` its error code or text when it gives one.

    Inbound SMS: ``number`` is the phone that wrote (E.164 when it can be made so),
    ``text`` what it wrote, ``to`` the number or short code it wrote to, ``message_id`` the
    provider's id of the inbound SMS (used to drop a webhook delivered twice), and
    ``in_reply_to`` the provider's id of our SMS it answers, when the provider says. A long
    SMS some providers post one part at a time carries ``part``: (the provider's reference
    shared by the parts, this part's number from 1, how many there are); the bridge joins
    the parts before it forwards the text.
    """

    kind: Literal["delivery", "inbound"]
    number: str | None = None
    message_id: str | None = None
    reference: str | None = None
    state: Literal["delivered", "undelivered"] | None = None
    status: str = ""
    reason: str | None = None
    text: str | None = None
    to: str | None = None
    in_reply_to: str | None = None
    part: tuple[str, int, int] | None = None


@dataclass(frozen=True)
class CallbackUrls:
    """Where this bridge receives a provider's webhooks (``http.public_url`` + the secret path).

    Set on a provider by the daemon when ``http.public_url`` and
    ``http.callbacks.<provider>`` are both configured; providers that take a callback URL
    per message (SMSPartner ``urlDlr``/``urlResponse``, Twilio ``StatusCallback``...) send
    these, the others document what to set in the provider's console.
    """

    dlr: str
    inbound: str


@runtime_checkable
class CallbackParser(Protocol):
    """A provider whose webhooks (delivery reports, inbound SMS) the bridge can read."""

    def parse_callback(self, request: CallbackRequest) -> list[Callback]:
        """The events in one webhook request (often one; an empty list is fine).

        Raises ``CallbackForbidden`` when the provider signs its webhooks and the signature
        is missing or wrong (403), ``ValueError`` when the request cannot be read (400).
        Pure apart from the provider's own settings: no I/O, no store.
        """


@dataclass(frozen=True, kw_only=True)
class HttpSettings:
    """Settings every HTTP provider takes (each module redeclares ``url`` with its default)."""

    url: str = setting(REQUIRED, "base URL of the API", URL)
    timeout: float = setting(10.0, "seconds to wait for a connection and for the answer",
                             number(0.1))


class ProviderBase:
    """What the modules share: name, settings, client, capabilities, secret scrubbing."""

    type: ClassVar[str] = ""
    Settings: ClassVar[type]
    CAPABILITIES: ClassVar[Capabilities] = Capabilities()
    #: where this bridge receives the provider's webhooks; set by the daemon (see CallbackUrls)
    callbacks: CallbackUrls | None = None

    def __init__(self, name: str, settings: Any, client: httpx.AsyncClient) -> None:
        if not isinstance(client, httpx.AsyncClient):
            raise TypeError("a provider needs the daemon's httpx.AsyncClient")
        self.name = name
        self.settings = settings
        self.client = client
        self.capabilities = self.capabilities_for(settings)

    @classmethod
    def from_config(cls, name: str, section: Mapping[str, Any], client: httpx.AsyncClient) -> Any:
        """Validate ``providers.<name>`` and build the provider with the daemon's ``client``."""
        from bridge.settings import load

        return cls(name, load(cls.Settings, section, f"providers.{name}", ignore=POLICY_KEYS), client)

    @classmethod
    def capabilities_for(cls, settings: Any) -> Capabilities:
        """The capabilities of an instance with ``settings`` (some depend on them)."""
        return cls.CAPABILITIES

    def secrets(self) -> list[str]:
        """Every secret setting's value: scrubbed from error texts."""
        return [getattr(self.settings, f.name) for f in dataclasses.fields(self.settings)
                if getattr(f.metadata.get("kind"), "secret", False)
                and isinstance(getattr(self.settings, f.name), str)]

    def scrub(self, text: str, *more: str | None) -> str:
        """``text`` without any secret setting (providers may echo keys back)."""
        return scrub(text, *self.secrets(), *more)

    def one_number(self, sms: Sms) -> str:
        """The single number of ``sms``; more is a programming error (routing splits)."""
        if len(sms.to) != 1:
            raise ValueError(f"{len(sms.to)} numbers in one call, {self.type} takes exactly one")
        return sms.to[0]

    async def aclose(self) -> None:
        """Nothing to release by default (the shared HTTP client is not ours)."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"


def can_check(provider: Any) -> bool:
    """Whether ``providers check`` can ask ``provider`` something harmless."""
    return isinstance(provider, Checker) and getattr(provider, "can_check", True)


async def or_none(lookup: Awaitable[Reconciled | None]) -> Reconciled | None:
    """``await lookup``, with a provider error read as "cannot tell" (None)."""
    try:
        return await lookup
    except ProviderError:
        return None


def can_reconcile(provider: Any) -> bool:
    """Whether ``provider`` can look up an ``unknown`` job at all."""
    return isinstance(provider, Reconciler) and getattr(provider, "can_reconcile", True)
