"""The typed sections of ``config.yaml``: one frozen dataclass per section, and the value kinds.

Each field is declared once with ``bridge.settings.setting`` (default, one-line doc, kind);
``bridge.config`` reads the YAML into them and adds the checks that span sections.
Validation here is per value and per section (``problems()``): every bad value names its
key path.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, ClassVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from bridge.calendar_rules import QuietHours, parse_windows
from bridge.settings import (
    BOOL, DURATION, REQUIRED, SECRET, SECTION, TEXT, URL, Kind, SubError, choice, duration,
    integer, list_of, number, setting,
)

_URL_SAFE = re.compile(r"[A-Za-z0-9._~-]+")   # RFC 3986 unreserved: a path segment as written


@dataclass(frozen=True)
class Address:
    """A ``host:port`` pair."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


# --- kinds of the sections below --------------------------------------------------------


def _address(value: Any) -> Address:
    text = str(value).strip() if isinstance(value, (str, int)) and not isinstance(value, bool) else ""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ValueError("expected host:port")
    return Address(host.strip("[]"), int(port))


def _email(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError("must be a non-empty string")
    text = value.strip().lower()
    local, sep, domain = text.rpartition("@")
    if not sep or not local or not domain or any(c.isspace() or c in "<>" for c in text):
        raise ValueError(f"not an e-mail address: {text!r}")
    return text


def _timezone(value: Any) -> ZoneInfo:
    try:
        return ZoneInfo(TEXT(value))
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {value!r}") from None


def _region(value: Any) -> str:
    import phonenumbers

    text = TEXT(value).upper()
    if text not in phonenumbers.SUPPORTED_REGIONS:
        raise ValueError(f"unknown region {value!r} (ISO 3166 code such as FR)")
    return text


def _country(value: Any) -> str:
    """An ISO 3166 region code (``FR``) or ``*`` for "any other country"."""
    import phonenumbers

    text = str(value).strip().upper()
    if text != "*" and text not in phonenumbers.SUPPORTED_REGIONS:
        raise ValueError(f"unknown country code {value!r} (ISO 3166, e.g. FR, or *)")
    return text


def by_country(item: Kind) -> Kind:
    """A mapping ``{FR: ..., "*": ...}``; a bad entry is reported at its own key."""
    def convert(value: Any) -> Mapping[str, Any]:
        if not isinstance(value, Mapping):
            raise ValueError("must be a mapping of country codes (FR, BE, ..., or *)")
        result = {}
        for key, entry in value.items():
            try:
                result[_country(key)] = item(entry)
            except ValueError as exc:
                raise SubError(str(key), str(exc)) from None
        return MappingProxyType(result)
    return Kind(f"mapping country -> {item.name}", convert)


def _stop_text(value: Any) -> str:
    from bridge.sender import has_stop_mention

    text = TEXT(value)
    if not has_stop_mention(" " + text):
        raise ValueError("must read 'STOP au 36xxx' (the opt-out short code)")
    return text


def _path(value: Any) -> Path:
    return Path(TEXT(value))


ADDRESS = Kind("host:port", _address)
EMAIL = Kind("e-mail address", _email)
NAMES = list_of(TEXT)
CREDITS = integer(0)
COUNTRY = Kind("ISO country code or *", _country)
SECONDS = duration(above=True)   # a wait that must be above zero
TIMEZONE = Kind("IANA time zone", _timezone)
REGION = Kind("ISO country code", _region)


# --- sections ---------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class SmtpUser:
    """An SMTP AUTH login and the account it may send for (``smtp.auth.users.<login>``)."""

    password: str = setting(REQUIRED, "the login's password", SECRET)
    account: str = setting(REQUIRED, "the account (accounts.<login>) it may send for", TEXT)


@dataclass(frozen=True, kw_only=True)
class SmtpConfig:
    """The SMTP listener (``smtp``)."""

    listen: Address = setting(Address("127.0.0.1", 2525), "address the listener binds", ADDRESS)
    recipients: tuple[str, ...] = setting((), "addresses the bridge accepts mail for; RCPT to others: 550",
                                          list_of(EMAIL), shown="required")
    hostname: str | None = setting(None, "name in the greeting (default: the host name)", TEXT)
    max_size: int = setting(256 * 1024, "largest mail in bytes; 552 beyond", integer(1024))
    reject_inline: bool = setting(False, "refused requests get 550 with the status instead of a mail", BOOL)
    tls_cert: Path | None = setting(None, "certificate (PEM); enables STARTTLS", Kind("path", _path), key="tls.cert")
    tls_key: Path | None = setting(None, "private key (PEM) of tls.cert", Kind("path", _path), key="tls.key")
    tls_listen: Address | None = setting(None, "optional implicit-TLS (SMTPS) listener", ADDRESS)
    auth_users: Mapping[str, SmtpUser] = setting(
        MappingProxyType({}), "SMTP AUTH logins: {login: {password, account}}", SECTION, key="auth.users")
    auth_required: bool = setting(False, "refuse mail from clients that did not log in", BOOL, key="auth.required")
    processes: int = setting(1, "processes serving SMTP sessions on the same address (more cores for a "
                                "connection per mail; see the README)", integer(1, 64))
    max_connections: int = setting(200, "open connections in all; 421 4.7.0 beyond", integer(1))
    max_connections_per_client: int = setting(20, "open connections from one client address", integer(1))
    max_recipients: int = setting(10, "RCPT commands per transaction, refused ones included; 452 4.5.3 beyond",
                                  integer(1))
    idle_timeout: float = setting(300.0, "a connection silent this long is closed (RFC 5321: at least 5 minutes)", SECONDS)
    auth_max_failures: int = setting(3, "wrong passwords or API keys on one connection, then 421 and disconnect",
                                     integer(1), key="auth.max_failures")
    auth_failure_delay: float = setting(1.0, "extra wait per recent failure of a client address (last 15 min)",
                                        SECONDS, key="auth.failure_delay")

    def problems(self) -> Iterator[tuple[str, str]]:
        """Settings that only make sense together."""
        if not self.recipients:
            yield "recipients", "required: the addresses the bridge accepts mail for"
        if (self.tls_cert is None) != (self.tls_key is None):
            yield "tls", "cert and key go together"
        if self.tls_listen and self.tls_cert is None:
            yield "tls_listen", "needs smtp.tls.cert and smtp.tls.key"
        if self.auth_required and not self.auth_users:
            yield "auth.users", "required when auth.required is true"


@dataclass(frozen=True, kw_only=True)
class RepliesConfig:
    """Where numbered statuses are mailed from and through (``replies``)."""

    relay: Address = setting(Address("127.0.0.1", 25), "SMTP relay status mails go through", ADDRESS)
    sender: str = setting("mail2sms@localhost", "From address of status mails", EMAIL, key="from")
    enabled: bool = setting(True, "false: never mail a status", BOOL)
    rate_per_hour: int = setting(20, "status mails per recipient mailbox (+tags folded) per hour", integer(1))
    rate_per_domain_per_hour: int = setting(60, "status mails per recipient domain per hour", integer(1))
    rate_total_per_hour: int = setting(1000, "status mails per hour in all", integer(1))
    timeout: float = setting(30.0, "longest wait for the relay", DURATION)
    starttls: bool = setting(False, "use STARTTLS with the relay", BOOL)
    username: str | None = setting(None, "relay login", TEXT)
    password: str | None = setting(None, "relay password", SECRET)


@dataclass(frozen=True, kw_only=True)
class DispatcherConfig:
    """How jobs are taken, retried and reconciled (``dispatcher``)."""

    concurrency: int = setting(16, "provider calls in flight", integer(1))
    max_age: float = setting(86400.0, "give up on transient failures after this (status 122, refund)", DURATION)
    backoff_base: float = setting(5.0, "first retry delay, doubled each time (with ±20% jitter)", DURATION)
    backoff_max: float = setting(900.0, "longest retry delay", DURATION)
    poll_interval: float = setting(1.0, "idle check for due jobs", DURATION)
    grace_period: float = setting(10.0, "on shutdown, wait this long for in-flight calls", DURATION)
    lease: float = setting(60.0, "how long a claim is held before another sweep may take it back", SECONDS)
    sweep_interval: float = setting(15.0, "how often expired claims are looked for", SECONDS)
    reconcile_interval: float = setting(60.0, "how often unknown jobs are looked up at their provider", SECONDS)
    reconcile_after: float = setting(30.0, "a job is looked up only this long after its call", SECONDS)


@dataclass(frozen=True, kw_only=True)
class QuietHoursSettings:
    """When marketing SMS may go out (``quiet_hours``, or an account's own)."""

    windows: Any = setting(None, 'allowed windows, e.g. ["mon-fri 08:00-20:00", "sat 10:00-18:00"]',
                           Kind("list of windows", parse_windows), shown="mon-sat 08:00-20:00")
    holidays: bool = setting(True, "no marketing on French public holidays", BOOL)
    alsace_moselle: bool = setting(False, "also Good Friday and 26 December", BOOL)

    def build(self, tz: ZoneInfo) -> QuietHours:
        """The ``QuietHours`` rule in time zone ``tz``."""
        windows = self.windows if self.windows is not None else QuietHours(tz=tz).windows
        return QuietHours(tz=tz, windows=windows, holidays=self.holidays, alsace_moselle=self.alsace_moselle)


@dataclass(frozen=True, kw_only=True)
class AccountConfig:
    """One Mail2SMS account (``accounts.<login>``, the ``login`` of ``login@apiKey``)."""

    login: str = ""
    api_key: str = setting(REQUIRED, "the account's API key (compared in constant time)", SECRET)
    credits: int = setting(0, "opening balance, applied once", CREDITS)
    route: tuple[str, ...] = setting((), "providers to try in order (failover)", NAMES, shown="required")
    language: str = setting("fr", "language of status mails", choice("fr", "en"))
    transliterate: bool = setting(False, "replace characters outside GSM-7 by their closest GSM-7 form", BOOL)
    allowed_senders: tuple[str, ...] = setting((), "if set, only these addresses may use the account",
                                               list_of(EMAIL))
    receipts: bool = setting(False, "also mail status 100/101 on success", BOOL)
    dlr_mail: str = setting("failures", "delivery reports mailed back: none, failures (status 128) or all "
                                        "(also 129)", choice("none", "failures", "all"))
    lowcost_route: tuple[str, ...] = setting((), "route for lc=1 (empty: route)", NAMES)
    country_routes: Mapping[str, tuple[str, ...]] = setting(
        MappingProxyType({}), "route by destination country, * for the others; wins over route", by_country(NAMES))
    pricing: Mapping[str, int] = setting(MappingProxyType({}), "credits per part by country (wins over pricing)",
                                         by_country(CREDITS))
    rate_per_minute: int | None = setting(None, "SMS sent per minute; the rest wait", integer(1))
    rate_per_day: int | None = setting(None, "SMS sent per 24 hours; the rest wait", integer(1))
    category: str = setting("transactional", "marketing: quiet hours and STOP apply",
                            choice("transactional", "marketing"))
    quiet_hours: QuietHours | None = setting(None, "the account's own quiet hours (see quiet_hours)", SECTION)
    stop: str = setting("append", "marketing to France without STOP: append it, or reject (124)",
                        choice("append", "reject"))
    stop_text: str = setting("STOP au 36180", "the STOP mention appended", Kind("STOP au 36xxx", _stop_text))
    allowed_countries: frozenset[str] = setting(frozenset({"FR"}), "destination countries allowed (* any)",
                                                Kind("list of ISO codes or *", lambda v: frozenset(list_of(COUNTRY)(v))))
    max_per_number_per_hour: int | None = setting(30, "anti-pumping: SMS per number per hour (127 beyond)", integer(1))
    max_sms_per_day: int | None = setting(None, "anti-pumping: SMS per 24 hours", integer(1))
    max_spend_per_day: int | None = setting(None, "anti-pumping: credits per 24 hours", integer(1))

    def problems(self) -> Iterator[tuple[str, str]]:
        """A route is required."""
        if not self.route:
            yield "route", "required: the providers to try, in order"


@dataclass(frozen=True, kw_only=True)
class ProviderPolicy:
    """What the dispatcher applies around a provider, whatever its type (``providers.<name>``)."""

    type: str = setting("", "the provider type: file, smspartner, allmysms, allo, orange, octopush, "
                            "ovh, twilio, vonage, http", TEXT, shown="required")
    rate: float | None = setting(None, "messages per second (default: the type's documented rate)",
                                 number(0, above=True))
    breaker_failures: int = setting(5, "consecutive failures that open the circuit", integer(1),
                                    key="circuit.failures")
    breaker_cooldown: float = setting(30.0, "seconds before a half-open probe", DURATION, key="circuit.cooldown")
    breaker_max_cooldown: float = setting(600.0, "each failed probe doubles the wait, up to this", DURATION,
                                          key="circuit.max_cooldown")


def _lower_set(value: Any) -> frozenset[str]:
    return frozenset(item.lower() for item in list_of(TEXT)(value))


LOWER_SET = Kind("list of strings", _lower_set)


@dataclass(frozen=True, kw_only=True)
class CallbackConfig:
    """One provider's webhooks (``http.callbacks.<provider>``): its secret and, for a provider
    of type ``http``, how to read its delivery reports."""

    secret: str = setting(REQUIRED, "last segment of /dlr/<provider>/<secret> and /inbound/<provider>/<secret>; "
                                    "16 characters or more", SECRET)
    status: str = setting("status", "http type: field (dotted path in JSON) holding the report's status", TEXT)
    delivered: frozenset[str] = setting(frozenset(), "http type: status values meaning delivered (any case)",
                                        LOWER_SET, shown="required for http")
    undelivered: frozenset[str] = setting(frozenset(), "http type: status values meaning not delivered, for good",
                                          LOWER_SET, shown="required for http")
    message_id: str | None = setting("message_id", "http type: field holding the provider's message id", TEXT)
    reference: str | None = setting(None, "http type: field holding our client reference ({reference})", TEXT)
    reason: str | None = setting(None, "http type: field holding the provider's reason, kept as the job's last error",
                                 TEXT)

    #: the keys that describe an ``http`` provider's reports (the others read their own)
    MAPPING_KEYS: ClassVar[tuple[str, ...]] = ("status", "delivered", "undelivered", "message_id", "reference",
                                               "reason")

    def problems(self) -> Iterator[tuple[str, str]]:
        """A guessable secret, or a status on both sides."""
        if self.secret and len(self.secret) < 16:
            yield "secret", "at least 16 characters (it is the only proof a report is genuine)"
        if self.delivered & self.undelivered:
            yield "undelivered", "a status cannot be both delivered and undelivered"


@dataclass(frozen=True, kw_only=True)
class HttpConfig:
    """The HTTP listener: health, readiness, metrics, webhooks (``http``)."""

    listen: Address | None = setting(None, "address of the HTTP listener; none: off", ADDRESS)
    public_url: str | None = setting(None, "the listener's address as providers reach it (https://bridge.example); "
                                           "providers that take a callback URL per SMS get theirs", URL)
    max_body: int = setting(64 * 1024, "largest request body in bytes; 413 beyond", integer(1024))
    timeout: float = setting(10.0, "longest time to read and answer one request", SECONDS)
    inbound_window: float = setting(7 * 86400.0, "an SMS reply is matched to an SMS sent this long before at most",
                                    SECONDS)
    callbacks: Mapping[str, CallbackConfig] = setting(MappingProxyType({}), "webhook settings by provider name",
                                                      SECTION)


@dataclass(frozen=True, kw_only=True)
class ImapConfig:
    """One IMAP mailbox the bridge polls (``imap.<name>``); folder paths use ``/``."""

    host: str = setting(REQUIRED, "IMAP server", TEXT)
    user: str = setting(REQUIRED, "login", TEXT)
    password: str = setting(REQUIRED, "password (app password for Gmail)", SECRET)
    port: int = setting(993, "server port", integer(1, 65535), shown="993 with tls: implicit, else 143")
    tls: str = setting("implicit", "implicit (IMAPS) | starttls | none", choice("implicit", "starttls", "none"))
    tls_verify: bool = setting(True, "false only for a self-signed server on a trusted network", BOOL)
    mailbox: str = setting("INBOX", "the folder to read", TEXT)
    processed: str = setting("mail2sms/processed", "where handled mail goes (created if missing)", TEXT)
    failed: str = setting("mail2sms/failed", "where refused mail goes (created if missing)", TEXT)
    poll_interval: float = setting(60.0, "poll period without IDLE", SECONDS)
    idle: bool = setting(True, "use IDLE when the server has it", BOOL)
    idle_renew: float = setting(540.0, "re-issue IDLE this often (below 29m)", SECONDS)
    batch: int = setting(50, "UIDs handled per search", integer(1))
    timeout: float = setting(30.0, "longest wait for any one server answer", SECONDS)
    push_secret: str | None = setting(None, "last segment of /imap/<name>/<secret>, which a push from the server "
                                            "(Dovecot's push_notification) calls to wake the poller at once; "
                                            "16 characters or more; none: no push", SECRET)

    def problems(self) -> Iterator[tuple[str, str]]:
        """IDLE renewal, distinct folders, a guessable push secret."""
        if not self.idle_renew < 29 * 60:
            yield "idle_renew", "must be above 0 and below 29m (servers may drop IDLE at 30 minutes)"
        if self.push_secret is not None and len(self.push_secret) < 16:
            yield "push_secret", "at least 16 characters (anyone who knows it can wake the poller)"
        elif self.push_secret is not None and not _URL_SAFE.fullmatch(self.push_secret):
            yield "push_secret", "only letters, digits and - . _ ~ (it is part of a URL path)"
        folders = [str(f).lower() for f in (self.mailbox, self.processed, self.failed)]
        if len(set(folders)) < 3:
            yield "", "mailbox, processed and failed must be three different folders"

