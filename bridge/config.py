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
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any
from zoneinfo import ZoneInfo

import yaml

from bridge.calendar_rules import QuietHours
from bridge.errors import ConfigError, ConfigErrors
from bridge.sections import (
    CREDITS, REGION, TIMEZONE, AccountConfig, CallbackConfig, DispatcherConfig, HttpConfig, ImapConfig,
    ProviderPolicy, QuietHoursSettings, RepliesConfig, SmtpConfig, SmtpUser, by_country,
)
from bridge.settings import SECTION, TEXT, Kind, Row, choice, integer, read, rows, setting

_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


@dataclass(frozen=True, kw_only=True)
class Config:
    """The whole configuration (the top level of ``config.yaml``)."""

    path: Path | None = None
    timezone: ZoneInfo = setting(ZoneInfo("Europe/Paris"), "time zone of date= and quiet hours",
                                 TIMEZONE)
    region: str = setting("FR", "country of national numbers (0612...)", REGION)
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
                                         by_country(CREDITS), shown="{*: 1}")
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


def _http(data: Any, providers: Any, imap: Mapping[str, ImapConfig], errors: list[ConfigError]) -> HttpConfig:
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
    for name, mailbox in imap.items():
        if mailbox.push_secret is not None and _sub(data, "listen") is None:
            errors.append(ConfigError(f"imap.{name}.push_secret", "a push needs the HTTP listener: set http.listen"))
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
    imap = _imap(data.get("imap"), errors)
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
        imap=MappingProxyType(imap),
        http=_http(data.get("http"), data.get("providers"), imap, errors),
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
