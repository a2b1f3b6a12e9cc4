"""Reading ``config.yaml`` once into frozen dataclasses, each setting declared once.

Every section is a frozen dataclass whose fields are declared with ``bridge.settings.setting``
(type, default, one-line doc); ``mail2sms config reference`` prints them all. Strings may use
``${ENV_VAR}`` (or ``${ENV_VAR:-default}``); an unset variable without a default is an error
naming the key. Every bad value raises ``ConfigError`` naming its key path
(``smtp.listen: expected host:port``); ``load_config`` gathers all of them into one
``ConfigErrors`` so ``check-config`` can print each.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, ClassVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml

from bridge.calendar_rules import QuietHours, parse_windows
from bridge.errors import ConfigError, ConfigErrors
from bridge.settings import (
    BOOL, DURATION, REQUIRED, SECRET, SECTION, TEXT, URL, Kind, Row, SubError, choice, duration,
    integer, list_of, number, read, rows, setting,
)

_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


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


def _by_country(item: Kind) -> Kind:
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
    max_connections: int = setting(200, "open connections in all; 421 4.7.0 beyond", integer(1))
    max_connections_per_client: int = setting(20, "open connections from one client address", integer(1))
    max_recipients: int = setting(10, "RCPT commands per transaction, refused ones included; 452 4.5.3 beyond",
                                  integer(1))
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
        MappingProxyType({}), "route by destination country, * for the others; wins over route", _by_country(NAMES))
    pricing: Mapping[str, int] = setting(MappingProxyType({}), "credits per part by country (wins over pricing)",
                                         _by_country(CREDITS))
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

    def problems(self) -> Iterator[tuple[str, str]]:
        """IDLE renewal and distinct folders."""
        if not self.idle_renew < 29 * 60:
            yield "idle_renew", "must be above 0 and below 29m (servers may drop IDLE at 30 minutes)"
        folders = [str(f).lower() for f in (self.mailbox, self.processed, self.failed)]
        if len(set(folders)) < 3:
            yield "", "mailbox, processed and failed must be three different folders"


@dataclass(frozen=True, kw_only=True)
class Config:
    """The whole configuration (the top level of ``config.yaml``)."""

    path: Path | None = None
    timezone: ZoneInfo = setting(ZoneInfo("Europe/Paris"), "time zone of date= and quiet hours",
                                 Kind("IANA time zone", _timezone))
    region: str = setting("FR", "country of national numbers (0612...)", Kind("ISO country code", _region))
    store: str = setting("sqlite://mail2sms.db", "sqlite://PATH (relative: to the config's folder), or postgresql://...",
                         Kind("sqlite://PATH or postgresql://...", lambda v: _store(TEXT(v))))
    max_recipients: int = setting(500, "numbers per mail (status 120 beyond)", integer(1))
    smtp: SmtpConfig = setting(SmtpConfig(), "the SMTP listener", SECTION)
    replies: RepliesConfig = setting(RepliesConfig(), "status mails", SECTION)
    dispatcher: DispatcherConfig = setting(DispatcherConfig(), "sending, retries, reconciliation", SECTION)
    providers: Mapping[str, Mapping[str, Any]] = setting(MappingProxyType({}), "providers by name", SECTION)
    # rate and circuit of each provider (read by the dispatcher), and its type's validated
    # settings (frozen; build_provider takes the raw section above and checks it again)
    provider_policies: Mapping[str, ProviderPolicy] = dataclasses.field(default_factory=dict)
    provider_settings: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    pricing: Mapping[str, int] = setting(MappingProxyType({"*": 1}), "credits per SMS part by country",
                                         _by_country(CREDITS), shown="{*: 1}")
    quiet_hours: QuietHours = setting(QuietHours(), "quiet hours for marketing SMS", SECTION)
    accounts: Mapping[str, AccountConfig] = setting(MappingProxyType({}), "accounts by login", SECTION)
    imap: Mapping[str, ImapConfig] = setting(MappingProxyType({}), "mailboxes to poll, by name", SECTION)
    http: HttpConfig = setting(HttpConfig(), "the HTTP listener: health, metrics, delivery reports", SECTION)
    log_format: str = setting("auto", "auto: console on a terminal, JSON lines otherwise",
                              choice("auto", "json", "console"), key="logging.format")
    log_level: str = setting("info", "least important events logged", choice("debug", "info", "warning", "error"),
                             key="logging.level")

    def sqlite_path(self) -> Path:
        """The SQLite file of ``store`` (relative paths are from the config's folder)."""
        if not self.store.startswith("sqlite://"):
            raise ConfigError("store", "only sqlite:// stores are supported so far")
        path = Path(self.store.removeprefix("sqlite://"))
        if not path.is_absolute() and self.path is not None:
            path = self.path.parent / path
        return path


def _store(text: str) -> str:
    if not text.startswith(("sqlite://", "postgresql://", "postgres://")):
        raise ValueError("must be sqlite://PATH or postgresql://USER@HOST/DATABASE")
    return text


# --- reading the sections that hold named sub-sections ----------------------------------


def _sub(data: Any, key: str) -> Any:
    return data.get(key) if isinstance(data, Mapping) else None


def _named(data: Any, path: str, errors: list[ConfigError]) -> Mapping[str, Any]:
    """A mapping of named sub-sections (``accounts``, ``imap``); reported once if not one."""
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        errors.append(ConfigError(path, "must be a mapping"))
        return {}
    return data


def _smtp(data: Any, errors: list[ConfigError]) -> SmtpConfig:
    users_data = _sub(_sub(data, "auth"), "users")
    users = {str(login): read(SmtpUser, section, f"smtp.auth.users.{login}", errors)
             for login, section in _named(users_data, "smtp.auth.users", errors).items()}
    return read(SmtpConfig, data, "smtp", errors, auth_users=MappingProxyType(users))


def _quiet_hours(data: Any, path: str, tz: ZoneInfo, errors: list[ConfigError]) -> QuietHours:
    return read(QuietHoursSettings, data, path, errors).build(tz)


def _account(login: str, data: Any, tz: ZoneInfo, providers: Mapping[str, Any],
             errors: list[ConfigError]) -> AccountConfig:
    path = f"accounts.{login}"
    own = _sub(data, "quiet_hours")
    quiet = _quiet_hours(own, f"{path}.quiet_hours", tz, errors) if own is not None else None
    account = read(AccountConfig, data, path, errors, login=login, quiet_hours=quiet)
    routes = [("route", account.route or ()), ("lowcost_route", account.lowcost_route or ())]
    routes += [(f"country_routes.{c}", names) for c, names in (account.country_routes or {}).items()]
    for key, names in routes:
        for name in names:
            if name not in providers:
                errors.append(ConfigError(f"{path}.{key}", f"unknown provider {name!r}"))
    return account


def _providers(data: Any, folder: Path | None, errors: list[ConfigError]):
    """Each provider's section validated into its type's settings; nothing is built."""
    from bridge.providers.base import POLICY_KEYS
    from bridge.providers.registry import read_settings

    raw: dict[str, Mapping[str, Any]] = {}
    policies: dict[str, ProviderPolicy] = {}
    typed: dict[str, Any] = {}
    for name, section in _named(data, "providers", errors).items():
        name = str(name)
        if not isinstance(section, Mapping):
            errors.append(ConfigError(f"providers.{name}", "must be a mapping"))
            continue
        section = _resolve_paths(section, folder)
        before = len(errors)
        settings = read_settings(name, section, errors)
        own = tuple(k for k in section if k not in POLICY_KEYS)
        policy = read(ProviderPolicy, section, f"providers.{name}", errors, ignore=own)
        if len(errors) > before or settings is None:
            continue
        raw[name] = MappingProxyType({k: v for k, v in section.items() if k not in POLICY_KEYS[1:]})
        policies[name], typed[name] = policy, settings
    return raw, policies, typed


def _orange_france(accounts: Mapping[str, AccountConfig], typed: Mapping[str, Any],
                   errors: list[ConfigError]) -> None:
    """An account that may send to France must not route France through Orange's API.

    Orange's OAuth SMS API is documented for Middle East & Africa only (see
    ``bridge/providers/orange.py``); ``allow_france: true`` on the provider overrides.
    """
    from bridge.providers.orange import OrangeSettings

    refused = {n for n, s in typed.items() if isinstance(s, OrangeSettings) and not s.allow_france}
    for login, account in accounts.items():
        if not (account.allowed_countries or set()) & {"FR", "*"}:
            continue
        routes = {"route": account.route or (), "lowcost_route": account.lowcost_route or ()}
        country_routes = account.country_routes or {}
        if "FR" in country_routes:
            routes = {"country_routes.FR": country_routes["FR"]}
        elif "*" in country_routes:
            routes["country_routes.*"] = country_routes["*"]
        for key, names in routes.items():
            for name in refused & set(names):
                errors.append(ConfigError(
                    f"accounts.{login}.{key}",
                    f"provider {name!r} (Orange) is not documented to deliver to France; route "
                    f"France elsewhere, or set providers.{name}.allow_france: true if your "
                    f"Orange contract covers +33"))


def _resolve_paths(settings: Mapping[str, Any], folder: Path | None) -> dict[str, Any]:
    """Relative ``path`` settings are relative to the config file's folder, as ``store``."""
    settings = dict(settings)
    value = settings.get("path")
    if folder is not None and isinstance(value, str) and value and not Path(value).is_absolute():
        settings["path"] = str(folder / value)
    return settings


def _imap(data: Any, errors: list[ConfigError]) -> dict[str, ImapConfig]:
    """``imap: {name: {host, user, password, ...}}``: the mailboxes to poll."""
    mailboxes = {}
    for name, section in _named(data, "imap", errors).items():
        config = read(ImapConfig, section, f"imap.{name}", errors)
        if _sub(section, "port") is None and config.tls != "implicit":
            config = dataclasses.replace(config, port=143)
        mailboxes[str(name)] = config
    return mailboxes


def _http(data: Any, providers: Any, errors: list[ConfigError]) -> HttpConfig:
    """``http``: the listener, and ``callbacks.<provider>`` for providers whose webhooks are read."""
    from bridge.providers.registry import PROVIDER_TYPES, provider_class
    callbacks = {}
    for name, section in _named(_sub(data, "callbacks"), "http.callbacks", errors).items():
        path = f"http.callbacks.{name}"
        kind = _sub(_sub(providers, name), "type")
        config = read(CallbackConfig, section, path, errors)
        if kind not in PROVIDER_TYPES:
            errors.append(ConfigError(path, f"no provider {name!r} of a known type is configured"))
        elif kind == "http":
            for key in ("delivered", "undelivered"):
                if not getattr(config, key):
                    errors.append(ConfigError(f"{path}.{key}", "required for a provider of type http: "
                                                               "the status values that mean it"))
        elif not hasattr(provider_class(kind), "parse_callback"):
            errors.append(ConfigError(path, f"providers of type {kind} send no webhooks the bridge reads"))
        else:
            for key in CallbackConfig.MAPPING_KEYS:
                if isinstance(section, Mapping) and key in section:
                    errors.append(ConfigError(f"{path}.{key}", f"only for providers of type http: {kind} "
                                                               "reports are read by its own module"))
        callbacks[str(name)] = config
    if callbacks and _sub(data, "listen") is None:
        errors.append(ConfigError("http.callbacks", "webhooks need the HTTP listener: set http.listen"))
    return read(HttpConfig, data, "http", errors, callbacks=MappingProxyType(callbacks))


def parse_config(data: Any, path: Path | None = None) -> Config:
    """Build a ``Config`` from parsed YAML; raise ``ConfigErrors`` listing every problem."""
    errors: list[ConfigError] = []
    if not isinstance(data, Mapping):
        raise ConfigError("", "the top level must be a mapping of settings")
    tz_errors: list[ConfigError] = []
    tz = read(Config, {"timezone": data.get("timezone")}, "", tz_errors).timezone
    raw, policies, typed = _providers(data.get("providers"), path.parent if path else None, errors)
    if not data.get("providers"):
        errors.append(ConfigError("providers", "required: at least one provider"))
    accounts = {str(login): _account(str(login), section, tz, data.get("providers") or {}, errors)
                for login, section in _named(data.get("accounts"), "accounts", errors).items()}
    _orange_france(accounts, typed, errors)
    config = read(
        Config, data, "", errors,
        path=path,
        smtp=_smtp(data.get("smtp"), errors),
        replies=read(RepliesConfig, data.get("replies"), "replies", errors),
        dispatcher=read(DispatcherConfig, data.get("dispatcher"), "dispatcher", errors),
        providers=MappingProxyType(raw),
        provider_policies=MappingProxyType(policies),
        provider_settings=MappingProxyType(typed),
        quiet_hours=_quiet_hours(data.get("quiet_hours"), "quiet_hours", tz, errors),
        accounts=MappingProxyType(accounts),
        imap=MappingProxyType(_imap(data.get("imap"), errors)),
        http=_http(data.get("http"), data.get("providers"), errors),
    )
    config = dataclasses.replace(config, pricing=MappingProxyType({"*": 1, **(config.pricing or {})}))
    if errors:
        raise ConfigErrors(errors)
    return config


# --- the reference ----------------------------------------------------------------------


def reference() -> list[Row]:
    """Every setting of ``config.yaml``: key, type, default, one-line doc."""
    from bridge.providers.registry import PROVIDER_TYPES, provider_class

    table = list(rows(Config, ""))
    for cls, prefix in (
        (SmtpConfig, "smtp"), (SmtpUser, "smtp.auth.users.<login>"), (RepliesConfig, "replies"),
        (DispatcherConfig, "dispatcher"), (QuietHoursSettings, "quiet_hours"),
        (AccountConfig, "accounts.<login>"), (QuietHoursSettings, "accounts.<login>.quiet_hours"),
        (ImapConfig, "imap.<name>"), (ProviderPolicy, "providers.<name>"),
        (HttpConfig, "http"), (CallbackConfig, "http.callbacks.<provider>"),
    ):
        table += rows(cls, prefix)
    for type_name in PROVIDER_TYPES:
        table += rows(provider_class(type_name).Settings, f"providers.<name>[{type_name}]")
    return table


def reference_table(form: str = "text") -> str:
    """``reference()`` as aligned text, or as the Markdown table the README carries."""
    table = reference()
    if form == "markdown":
        def cell(text: str) -> str:
            return text.replace("|", "\\|")
        lines = ["| key | type | default | doc |", "|---|---|---|---|"]
        lines += [f"| `{r.key}` | {cell(r.kind)} | {cell(r.default)} | {cell(r.doc)} |" for r in table]
        return "\n".join(lines)
    width = max(len(r.key) for r in table)
    kinds = max(len(r.kind) for r in table)
    return "\n".join(f"{r.key:<{width}}  {r.kind:<{kinds}}  {r.default}  -  {r.doc}" for r in table)


def interpolate(data: Any, path: str = "", errors: list[ConfigError] | None = None) -> Any:
    """Replace ``${VAR}`` / ``${VAR:-default}`` in every string of ``data``."""
    errors = [] if errors is None else errors
    if isinstance(data, str):
        def replace(match: re.Match[str]) -> str:
            value = os.environ.get(match.group(1), match.group(2))
            if value is None:
                errors.append(ConfigError(path, f"environment variable {match.group(1)} is not set"))
                return ""
            return value

        return _ENV.sub(replace, data)
    if isinstance(data, Mapping):
        return {k: interpolate(v, f"{path}.{k}" if path else str(k), errors) for k, v in data.items()}
    if isinstance(data, list):
        return [interpolate(v, f"{path}[{i}]", errors) for i, v in enumerate(data)]
    return data


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read, interpolate and check the YAML file at ``path``."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError("", f"cannot read {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError("", f"{path} is not UTF-8 text") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ConfigError("", f"{path}: {problem}{where}") from None
    if not isinstance(data, Mapping):
        raise ConfigError("", f"{path}: the top level must be a mapping of settings")
    errors: list[ConfigError] = []
    data = interpolate(data, "", errors)
    if errors:
        raise ConfigErrors(errors)
    return parse_config(data, path.resolve())
