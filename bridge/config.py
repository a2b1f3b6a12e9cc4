"""Reading ``config.yaml`` once into frozen dataclasses.

Strings may use ``${ENV_VAR}`` (or ``${ENV_VAR:-default}``); an unset variable without a
default is an error naming the key. Every bad value raises ``ConfigError`` naming its key
path (``smtp.listen: expected host:port``); ``load_config`` gathers all of them into one
``ConfigErrors`` so ``check-config`` can print each.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml

from bridge.calendar_rules import QuietHours, parse_windows
from bridge.errors import ConfigError, ConfigErrors

T = TypeVar("T")
_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?")
_UNITS = {"ms": 0.001, "s": 1, None: 1, "m": 60, "h": 3600, "d": 86400}


@dataclass(frozen=True)
class Address:
    """A ``host:port`` pair."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True)
class SmtpUser:
    """An SMTP AUTH login and the account it may send for."""

    password: str = field(repr=False)
    account: str


@dataclass(frozen=True)
class SmtpConfig:
    """The SMTP listener."""

    listen: Address = Address("127.0.0.1", 2525)
    recipients: tuple[str, ...] = ()
    hostname: str | None = None
    max_size: int = 256 * 1024
    reject_inline: bool = False
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_listen: Address | None = None            # implicit TLS (SMTPS) listener
    auth_users: Mapping[str, SmtpUser] = field(default_factory=dict)
    auth_required: bool = False


@dataclass(frozen=True)
class RepliesConfig:
    """Where numbered statuses are mailed from and through."""

    relay: Address = Address("127.0.0.1", 25)
    sender: str = "mail2sms@localhost"
    enabled: bool = True
    rate_per_hour: int = 20                      # replies per recipient address
    timeout: float = 30.0
    starttls: bool = False
    username: str | None = None
    password: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class DispatcherConfig:
    """How jobs are taken and retried."""

    concurrency: int = 16
    max_age: float = 86400.0                     # give up (refund, status 122) after this
    backoff_base: float = 5.0
    backoff_max: float = 900.0
    poll_interval: float = 1.0                   # idle check for due jobs
    grace_period: float = 10.0                   # on shutdown, wait for in-flight calls
    lease: float = 60.0                          # a claim held this long is taken back by the sweep
    sweep_interval: float = 15.0                 # how often expired leases are looked for
    reconcile_interval: float = 60.0             # how often unknown jobs are looked up
    reconcile_after: float = 30.0                # a call is looked up only this long after it


@dataclass(frozen=True)
class AccountConfig:
    """One Mail2SMS account (the ``login`` of ``login@apiKey``)."""

    login: str
    api_key: str = field(repr=False)
    credits: int = 0                             # opening balance, applied once
    route: tuple[str, ...] = ()
    language: str = "fr"
    transliterate: bool = False
    allowed_senders: tuple[str, ...] = ()        # empty: any sender address
    receipts: bool = False                       # also mail 100/101 on success
    lowcost_route: tuple[str, ...] = ()          # for lc=1; empty: `route`
    country_routes: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # FR -> [...], "*"
    pricing: Mapping[str, int] = field(default_factory=dict)  # credits per part by country, "*"
    rate_per_minute: int | None = None           # SMS sent per minute, queued beyond
    rate_per_day: int | None = None              # SMS sent per 24 hours, queued beyond
    category: str = "transactional"              # or marketing (quiet hours, STOP)
    quiet_hours: QuietHours | None = None        # None: the global quiet_hours
    stop: str = "append"                         # marketing to France without STOP: append | reject
    stop_text: str = "STOP au 36180"
    allowed_countries: frozenset[str] = frozenset({"FR"})  # FR covers the overseas departments
    max_per_number_per_hour: int | None = 30     # anti-pumping caps: refused beyond (status 127)
    max_sms_per_day: int | None = None
    max_spend_per_day: int | None = None         # credits per 24 hours


@dataclass(frozen=True)
class ProviderPolicy:
    """What the dispatcher applies around a provider, whatever its type."""

    rate: float | None = None                    # messages per second; None: the type's default
    breaker_failures: int = 5                    # consecutive failures that open the circuit
    breaker_cooldown: float = 30.0               # seconds before a half-open probe


@dataclass(frozen=True)
class ImapConfig:
    """One IMAP mailbox the bridge polls (``imap.<name>``); folder paths use ``/``."""

    host: str
    user: str
    password: str = field(repr=False)
    port: int = 993                              # 993 with tls: implicit, else 143
    tls: str = "implicit"                        # implicit | starttls | none
    tls_verify: bool = True
    mailbox: str = "INBOX"
    processed: str = "mail2sms/processed"
    failed: str = "mail2sms/failed"
    poll_interval: float = 60.0                  # without IDLE
    idle: bool = True
    idle_renew: float = 540.0                    # re-issue IDLE (servers drop it at 30 min)
    batch: int = 50
    timeout: float = 30.0                        # any single server answer


@dataclass(frozen=True)
class Config:
    """The whole configuration."""

    path: Path | None = None
    timezone: ZoneInfo = field(default_factory=lambda: ZoneInfo("Europe/Paris"))
    region: str = "FR"
    store: str = "sqlite://mail2sms.db"
    max_recipients: int = 500
    smtp: SmtpConfig = SmtpConfig()
    replies: RepliesConfig = RepliesConfig()
    dispatcher: DispatcherConfig = DispatcherConfig()
    providers: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    provider_policies: Mapping[str, ProviderPolicy] = field(default_factory=dict)
    pricing: Mapping[str, int] = field(default_factory=lambda: {"*": 1})  # credits per part
    quiet_hours: QuietHours = field(default_factory=QuietHours)      # for marketing SMS
    accounts: Mapping[str, AccountConfig] = field(default_factory=dict)
    imap: Mapping[str, ImapConfig] = field(default_factory=dict)
    log_format: str = "auto"
    log_level: str = "info"

    def sqlite_path(self) -> Path:
        """The SQLite file of ``store`` (relative paths are from the config's folder)."""
        if not self.store.startswith("sqlite://"):
            raise ConfigError("store", "only sqlite:// stores are supported so far")
        path = Path(self.store.removeprefix("sqlite://"))
        if not path.is_absolute() and self.path is not None:
            path = self.path.parent / path
        return path


class _Reader:
    """Typed access to one mapping of the YAML, naming key paths and collecting errors."""

    def __init__(self, data: Any, path: str, errors: list[ConfigError]) -> None:
        self.path = path
        self.errors = errors
        if data is None:
            data = {}
        if not isinstance(data, Mapping):
            self.error("", "must be a mapping")
            data = {}
        self.data = data

    def key(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path and name else (name or self.path)

    def error(self, name: str, problem: str) -> None:
        self.errors.append(ConfigError(self.key(name), problem))

    def only(self, *names: str) -> None:
        for name in self.data:
            if name not in names:
                self.error(str(name), "unknown setting")

    def get(self, name: str, default: T, convert: Callable[[Any], T]) -> T:
        if name not in self.data or self.data[name] is None:
            return default
        try:
            return convert(self.data[name])
        except (ValueError, TypeError) as exc:
            self.error(name, str(exc))
            return default

    def sub(self, name: str) -> "_Reader":
        return _Reader(self.data.get(name), self.key(name), self.errors)


# --- converters: raise ValueError with a message that completes "key: ..." ------------


def _str(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError("must be a non-empty string")
    return value.strip()


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError("must be true or false")
    return value


def _int(minimum: int) -> Callable[[Any], int]:
    def convert(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ValueError(f"must be a whole number >= {minimum}")
        return value

    return convert


def _duration(value: Any) -> float:
    """Seconds from a number or a string such as ``30s``, ``15m``, ``24h``, ``7d``."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0:
        return float(value)
    match = _DURATION.fullmatch(str(value).strip()) if isinstance(value, str) else None
    if not match:
        raise ValueError("must be a duration such as 30, 30s, 15m, 24h or 7d")
    return float(match.group(1)) * _UNITS[match.group(2)]


def _address(value: Any) -> Address:
    text = str(value).strip() if isinstance(value, (str, int)) else ""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ValueError("expected host:port")
    return Address(host.strip("[]"), int(port))


def _email(value: Any) -> str:
    text = _str(value).lower()
    local, sep, domain = text.rpartition("@")
    if not sep or not local or not domain or any(c.isspace() or c in "<>" for c in text):
        raise ValueError(f"not an e-mail address: {text!r}")
    return text


def _list(item: Callable[[Any], T]) -> Callable[[Any], tuple[T, ...]]:
    def convert(value: Any) -> tuple[T, ...]:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list):
            raise ValueError("must be a list")
        return tuple(item(v) for v in value)

    return convert


def _timezone(value: Any) -> ZoneInfo:
    try:
        return ZoneInfo(_str(value))
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {value!r}") from None


def _path(value: Any) -> Path:
    return Path(_str(value))


def _choice(*choices: str) -> Callable[[Any], str]:
    def convert(value: Any) -> str:
        if value not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}")
        return value

    return convert


# --- sections ---------------------------------------------------------------------------


def _smtp(r: _Reader) -> SmtpConfig:
    r.only("listen", "recipients", "hostname", "max_size", "reject_inline", "tls", "tls_listen", "auth")
    tls = r.sub("tls")
    tls.only("cert", "key")
    auth = r.sub("auth")
    auth.only("users", "required")
    users = {}
    users_reader = auth.sub("users")
    for name in users_reader.data:
        u = users_reader.sub(str(name))
        u.only("password", "account")
        users[str(name)] = SmtpUser(u.get("password", "", _str), u.get("account", "", _str))
        for key in ("password", "account"):
            if key not in u.data:
                u.error(key, "required")
    config = SmtpConfig(
        listen=r.get("listen", SmtpConfig.listen, _address),
        recipients=r.get("recipients", (), _list(_email)),
        hostname=r.get("hostname", None, _str),
        max_size=r.get("max_size", SmtpConfig.max_size, _int(1024)),
        reject_inline=r.get("reject_inline", False, _bool),
        tls_cert=tls.get("cert", None, _path),
        tls_key=tls.get("key", None, _path),
        tls_listen=r.get("tls_listen", None, _address),
        auth_users=MappingProxyType(users),
        auth_required=auth.get("required", False, _bool),
    )
    if not config.recipients:
        r.error("recipients", "required: the addresses the bridge accepts mail for")
    if (config.tls_cert is None) != (config.tls_key is None):
        tls.error("", "cert and key go together")
    if config.tls_listen and config.tls_cert is None:
        r.error("tls_listen", "needs smtp.tls.cert and smtp.tls.key")
    if config.auth_required and not config.auth_users:
        auth.error("users", "required when auth.required is true")
    return config


def _replies(r: _Reader) -> RepliesConfig:
    r.only("relay", "from", "enabled", "rate_per_hour", "timeout", "starttls", "username", "password")
    return RepliesConfig(
        relay=r.get("relay", RepliesConfig.relay, _address),
        sender=r.get("from", RepliesConfig.sender, _email),
        enabled=r.get("enabled", True, _bool),
        rate_per_hour=r.get("rate_per_hour", RepliesConfig.rate_per_hour, _int(1)),
        timeout=r.get("timeout", RepliesConfig.timeout, _duration),
        starttls=r.get("starttls", False, _bool),
        username=r.get("username", None, _str),
        password=r.get("password", None, _str),
    )


def _dispatcher(r: _Reader) -> DispatcherConfig:
    d = DispatcherConfig
    r.only("concurrency", "max_age", "backoff_base", "backoff_max", "poll_interval", "grace_period",
           "lease", "sweep_interval", "reconcile_interval", "reconcile_after")
    return DispatcherConfig(
        concurrency=r.get("concurrency", d.concurrency, _int(1)),
        max_age=r.get("max_age", d.max_age, _duration),
        backoff_base=r.get("backoff_base", d.backoff_base, _duration),
        backoff_max=r.get("backoff_max", d.backoff_max, _duration),
        poll_interval=r.get("poll_interval", d.poll_interval, _duration),
        grace_period=r.get("grace_period", d.grace_period, _duration),
        lease=r.get("lease", d.lease, _duration),
        sweep_interval=r.get("sweep_interval", d.sweep_interval, _duration),
        reconcile_interval=r.get("reconcile_interval", d.reconcile_interval, _duration),
        reconcile_after=r.get("reconcile_after", d.reconcile_after, _duration),
    )


def _stop_text(value: Any) -> str:
    from bridge.sender import has_stop_mention

    text = _str(value)
    if not has_stop_mention(" " + text):
        raise ValueError("must read 'STOP au 36xxx' (the opt-out short code)")
    return text


def _quiet_hours(r: _Reader, tz: ZoneInfo) -> QuietHours:
    """``{windows: ["mon-sat 08:00-20:00"], holidays: true, alsace_moselle: false}``."""
    r.only("windows", "holidays", "alsace_moselle")
    defaults = QuietHours(tz=tz)
    windows = defaults.windows
    if "windows" in r.data:
        try:
            windows = parse_windows(r.data["windows"])
        except (ValueError, TypeError) as exc:
            r.error("windows", str(exc))
    return QuietHours(
        tz=tz,
        windows=windows,
        holidays=r.get("holidays", True, _bool),
        alsace_moselle=r.get("alsace_moselle", False, _bool),
    )


def _account(
    login: str, r: _Reader, providers: Mapping[str, Any], timezone: ZoneInfo = ZoneInfo("Europe/Paris")
) -> AccountConfig:
    r.only(
        "api_key", "credits", "route", "language", "transliterate", "allowed_senders", "receipts",
        "lowcost_route", "country_routes", "pricing", "rate_per_minute", "rate_per_day",
        "category", "quiet_hours", "stop", "stop_text", "allowed_countries",
        "max_per_number_per_hour", "max_sms_per_day", "max_spend_per_day",
    )
    if "api_key" not in r.data:
        r.error("api_key", "required")
    account = AccountConfig(
        login=login,
        api_key=r.get("api_key", "", _str),
        credits=r.get("credits", 0, _int(0)),
        route=r.get("route", (), _list(_str)),
        language=r.get("language", "fr", _choice("fr", "en")),
        transliterate=r.get("transliterate", False, _bool),
        allowed_senders=r.get("allowed_senders", (), _list(_email)),
        receipts=r.get("receipts", False, _bool),
        lowcost_route=r.get("lowcost_route", (), _list(_str)),
        country_routes=_country_routes(r.sub("country_routes")),
        pricing=_pricing(r.sub("pricing")),
        rate_per_minute=r.get("rate_per_minute", None, _int(1)),
        rate_per_day=r.get("rate_per_day", None, _int(1)),
        category=r.get("category", "transactional", _choice("transactional", "marketing")),
        quiet_hours=_quiet_hours(r.sub("quiet_hours"), timezone) if "quiet_hours" in r.data else None,
        stop=r.get("stop", "append", _choice("append", "reject")),
        stop_text=r.get("stop_text", "STOP au 36180", _stop_text),
        allowed_countries=frozenset(r.get("allowed_countries", ("FR",), _list(_country))),
        max_per_number_per_hour=r.get("max_per_number_per_hour", 30, _int(1)),
        max_sms_per_day=r.get("max_sms_per_day", None, _int(1)),
        max_spend_per_day=r.get("max_spend_per_day", None, _int(1)),
    )
    if not account.route:
        r.error("route", "required: the providers to try, in order")
    routes = [("route", account.route), ("lowcost_route", account.lowcost_route)]
    routes += [(f"country_routes.{c}", names) for c, names in account.country_routes.items()]
    for key, names in routes:
        for name in names:
            if name not in providers:
                r.error(key, f"unknown provider {name!r}")
    return account


def _country(value: Any) -> str:
    """An ISO 3166 region code (``FR``) or ``*`` for "any other country"."""
    import phonenumbers

    text = str(value).strip().upper()
    if text != "*" and text not in phonenumbers.SUPPORTED_REGIONS:
        raise ValueError(f"unknown country code {value!r} (ISO 3166, e.g. FR, or *)")
    return text


def _country_routes(r: _Reader) -> Mapping[str, tuple[str, ...]]:
    routes = {}
    for key in r.data:
        try:
            country = _country(key)
        except ValueError as exc:
            r.error(str(key), str(exc))
            continue
        routes[country] = r.get(key, (), _list(_str))
    return MappingProxyType(routes)


def _pricing(r: _Reader) -> Mapping[str, int]:
    prices = {}
    for key in r.data:
        try:
            country = _country(key)
        except ValueError as exc:
            r.error(str(key), str(exc))
            continue
        prices[country] = r.get(key, 1, _int(0))
    return MappingProxyType(prices)


#: Settings every provider takes, read by the dispatcher rather than the provider module.
_POLICY_KEYS = ("rate", "circuit")


def _policy(r: _Reader) -> ProviderPolicy:
    circuit = r.sub("circuit")
    circuit.only("failures", "cooldown")
    rate = r.get("rate", None, _positive)
    return ProviderPolicy(
        rate=rate,
        breaker_failures=circuit.get("failures", ProviderPolicy.breaker_failures, _int(1)),
        breaker_cooldown=circuit.get("cooldown", ProviderPolicy.breaker_cooldown, _duration),
    )


def _positive(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise ValueError("must be a number > 0")
    return float(value)


def _imap(r: _Reader) -> dict[str, ImapConfig]:
    """``imap: {name: {host, user, password, ...}}``: the mailboxes to poll."""
    mailboxes = {}
    for name in r.data:
        m = r.sub(str(name))
        m.only(
            "host", "port", "tls", "tls_verify", "user", "password", "mailbox", "processed",
            "failed", "poll_interval", "idle", "idle_renew", "batch", "timeout",
        )
        for key in ("host", "user", "password"):
            if key not in m.data:
                m.error(key, "required")
        tls = m.get("tls", "implicit", _choice("implicit", "starttls", "none"))
        d = ImapConfig
        config = ImapConfig(
            host=m.get("host", "", _str),
            user=m.get("user", "", _str),
            password=m.get("password", "", _str),
            port=m.get("port", 993 if tls == "implicit" else 143, _int(1)),
            tls=tls,
            tls_verify=m.get("tls_verify", True, _bool),
            mailbox=m.get("mailbox", d.mailbox, _str),
            processed=m.get("processed", d.processed, _str),
            failed=m.get("failed", d.failed, _str),
            poll_interval=m.get("poll_interval", d.poll_interval, _duration),
            idle=m.get("idle", True, _bool),
            idle_renew=m.get("idle_renew", d.idle_renew, _duration),
            batch=m.get("batch", d.batch, _int(1)),
            timeout=m.get("timeout", d.timeout, _duration),
        )
        if config.port > 65535:
            m.error("port", "must be a port number (1-65535)")
        if not 0 < config.idle_renew < 29 * 60:
            m.error("idle_renew", "must be above 0 and below 29m (servers may drop IDLE at 30 minutes)")
        for key in ("poll_interval", "timeout"):
            if getattr(config, key) <= 0:
                m.error(key, "must be above 0")
        folders = [config.mailbox.lower(), config.processed.lower(), config.failed.lower()]
        if len(set(folders)) < 3:
            m.error("", "mailbox, processed and failed must be three different folders")
        mailboxes[str(name)] = config
    return mailboxes


def _providers(r: _Reader, folder: Path | None) -> dict[str, Mapping[str, Any]]:
    from bridge.providers.registry import build_provider

    providers: dict[str, Mapping[str, Any]] = {}
    for name, settings in r.data.items():
        try:
            if not isinstance(settings, Mapping):
                raise ConfigError(r.key(str(name)), "must be a mapping")
            settings = _resolve_paths(settings, folder)
            settings = {k: v for k, v in settings.items() if k not in _POLICY_KEYS}
            build_provider(str(name), settings)   # validates, builds nothing that lasts
        except ConfigError as exc:
            r.errors.append(exc)
            continue
        providers[str(name)] = MappingProxyType(dict(settings))
    return providers


def _resolve_paths(settings: Mapping[str, Any], folder: Path | None) -> dict[str, Any]:
    """Relative ``path`` settings are relative to the config file's folder, as ``store``."""
    settings = dict(settings)
    value = settings.get("path")
    if folder is not None and isinstance(value, str) and value and not Path(value).is_absolute():
        settings["path"] = str(folder / value)
    return settings


def parse_config(data: Any, path: Path | None = None) -> Config:
    """Build a ``Config`` from parsed YAML; raise ``ConfigErrors`` listing every problem."""
    errors: list[ConfigError] = []
    root = _Reader(data, "", errors)
    root.only(
        "timezone", "region", "store", "max_recipients", "smtp", "replies", "dispatcher",
        "providers", "accounts", "logging", "pricing", "quiet_hours", "imap",
    )
    # One reader for the section: each _Reader built on a non-mapping reports it again.
    providers_reader = root.sub("providers")
    providers = _providers(providers_reader, path.parent if path else None)
    if not root.data.get("providers"):
        root.error("providers", "required: at least one provider")
    tz = root.get("timezone", ZoneInfo("Europe/Paris"), _timezone)
    accounts_reader = root.sub("accounts")
    accounts = {
        str(login): _account(str(login), accounts_reader.sub(str(login)), providers_reader.data, tz)
        for login in accounts_reader.data
    }
    logging = root.sub("logging")
    logging.only("format", "level")
    store = root.get("store", Config.store, _str)
    if not store.startswith(("sqlite://", "postgresql://", "postgres://")):
        root.error("store", "must be sqlite://PATH or postgresql://USER@HOST/DATABASE")
    config = Config(
        path=path,
        timezone=tz,
        quiet_hours=_quiet_hours(root.sub("quiet_hours"), tz),
        region=root.get("region", "FR", _region),
        store=store,
        max_recipients=root.get("max_recipients", 500, _int(1)),
        smtp=_smtp(root.sub("smtp")),
        replies=_replies(root.sub("replies")),
        dispatcher=_dispatcher(root.sub("dispatcher")),
        providers=MappingProxyType(providers),
        provider_policies=MappingProxyType(
            {name: _policy(providers_reader.sub(name)) for name in providers}
        ),
        pricing=MappingProxyType({"*": 1, **_pricing(root.sub("pricing"))}),
        accounts=MappingProxyType(accounts),
        imap=MappingProxyType(_imap(root.sub("imap"))),
        log_format=logging.get("format", "auto", _choice("auto", "json", "console")),
        log_level=logging.get("level", "info", _choice("debug", "info", "warning", "error")),
    )
    if errors:
        raise ConfigErrors(errors)
    return config


def _region(value: Any) -> str:
    import phonenumbers

    text = _str(value).upper()
    if text not in phonenumbers.SUPPORTED_REGIONS:
        raise ValueError(f"unknown region {value!r} (ISO 3166 code such as FR)")
    return text


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
