"""Settings declared once: a frozen dataclass per config section, one ``setting()`` per key.

Each field says its key, its kind (how a YAML value is checked and converted), its default
and a one-line doc. From that single declaration come the reading of the section (unknown
keys, required keys, bad values, all reported as ``ConfigError`` naming the key path), and
the rows of ``mail2sms config reference``. Example::

    @dataclass(frozen=True, kw_only=True)
    class RepliesSettings:
        relay: Address = setting(Address("127.0.0.1", 25), "where status mails are sent", ADDRESS)
        sender: str = setting("mail2sms@localhost", "From of status mails", EMAIL, key="from")

Why plain dataclasses and not pydantic or msgspec: the messages must complete
``providers.partner.url: ...`` in our words, durations read ``30s``/``15m``, and the objects
must stay the frozen dataclasses the rest of the code already uses; a field's metadata
carries the doc for the reference. That is about two hundred lines and no dependency.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import httpx

from bridge.errors import ConfigError, ConfigErrors

REQUIRED: Any = dataclasses.MISSING
_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?")
_UNITS = {"ms": 0.001, "s": 1, None: 1, "m": 60, "h": 3600, "d": 86400}


@dataclass(frozen=True)
class Kind:
    """How one setting is checked: a name for the reference and a converter.

    The converter raises ``ValueError`` with text that completes ``key: ...``, or a
    ``ConfigError`` when it knows a deeper key path itself.
    """

    name: str
    convert: Callable[[Any], Any]
    secret: bool = False

    def __call__(self, value: Any) -> Any:
        return self.convert(value)


def setting(default: Any = REQUIRED, doc: str = "", kind: Kind | None = None, *,
            key: str | None = None, shown: str | None = None) -> Any:
    """Declare one setting: default (``REQUIRED`` when none), doc, kind and YAML key.

    ``key`` may be dotted (``tls.cert``) for a key inside a sub-mapping; ``shown`` is how
    the default reads in the reference when ``repr`` would not help.
    """
    kind = kind or ANY
    metadata = {"doc": doc, "kind": kind, "key": key, "shown": shown}
    if isinstance(default, (list, dict, set)):
        raise TypeError("use a tuple, frozenset or MappingProxyType as a default")
    if isinstance(default, Mapping):  # unhashable: dataclasses want a factory
        return dataclasses.field(default_factory=lambda: default, repr=not kind.secret,
                                 metadata={**metadata, "value": default})
    return dataclasses.field(default=default, repr=not kind.secret, metadata=metadata)


class SubError(ValueError):
    """A converter's problem with one key *inside* the value (``country_routes.XX``)."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(problem)
        self.key = key


def default_of(field: dataclasses.Field) -> Any:
    """A field's default value (REQUIRED when it has none)."""
    if field.default is not REQUIRED:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return REQUIRED


# --- kinds ------------------------------------------------------------------------------


def _text(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError("must be a non-empty string")
    return value.strip()


def _secret(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError("must be a non-empty string")
    return value  # kept exactly: a key may end with a space on purpose


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError("must be true or false")
    return value


def parse_duration(value: Any) -> float:
    """Seconds from a number or a string such as ``30s``, ``15m``, ``24h``, ``7d``."""
    return _duration(value)


def _duration(value: Any) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0:
        return float(value)
    match = _DURATION.fullmatch(value.strip()) if isinstance(value, str) else None
    if not match:
        raise ValueError("must be a duration such as 30, 30s, 15m, 24h or 7d")
    return float(match.group(1)) * _UNITS[match.group(2)]


def _url(value: Any) -> str:
    text = _text(value)
    try:
        parsed = httpx.URL(text)
    except Exception:
        raise ValueError("not a URL") from None
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise ValueError("not an http(s) URL")
    return text.rstrip("/")


def integer(minimum: int = 0, maximum: int | None = None) -> Kind:
    """A whole number in ``[minimum, maximum]``."""
    def convert(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum \
                or (maximum is not None and value > maximum):
            bound = f"between {minimum} and {maximum}" if maximum is not None else f">= {minimum}"
            raise ValueError(f"must be a whole number {bound}")
        return value
    return Kind(f"integer >= {minimum}" if maximum is None else f"integer {minimum}-{maximum}", convert)


def number(minimum: float = 0, *, above: bool = False) -> Kind:
    """A number (int or float) ``>= minimum``, or ``> minimum`` with ``above``."""
    def convert(value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) \
                or value < minimum or (above and value == minimum):
            raise ValueError(f"must be a number {'>' if above else '>='} {minimum:g}")
        return float(value)
    return Kind(f"number {'>' if above else '>='} {minimum:g}", convert)


def duration(minimum: float = 0, *, above: bool = False) -> Kind:
    """Seconds, written ``30``, ``30s``, ``15m``, ``24h`` or ``7d``; ``> minimum`` with ``above``."""
    def convert(value: Any) -> float:
        seconds = _duration(value)
        if seconds < minimum or (above and seconds == minimum):
            raise ValueError(f"must be a duration {'above' if above else 'of at least'} {minimum:g}s")
        return seconds
    return Kind("duration" if not (minimum or above) else f"duration {'>' if above else '>='} {minimum:g}s", convert)


def choice(*choices: str) -> Kind:
    """One of ``choices``."""
    def convert(value: Any) -> str:
        if value not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}")
        return value
    return Kind(" | ".join(choices), convert)


def list_of(item: Kind) -> Kind:
    """A list of ``item`` (a single value is a list of one), as a tuple."""
    def convert(value: Any) -> tuple[Any, ...]:
        if isinstance(value, (str, int)) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, list):
            raise ValueError("must be a list")
        return tuple(item(v) for v in value)
    return Kind(f"list of {item.name}", convert)


def pattern(regex: str, problem: str, name: str = "string") -> Kind:
    """A string that fully matches ``regex``; ``problem`` completes ``key: ...`` otherwise."""
    compiled = re.compile(regex)

    def convert(value: Any) -> str:
        text = _text(value)
        if not compiled.fullmatch(text):
            raise ValueError(problem)
        return text
    return Kind(name, convert)


def _any(value: Any) -> Any:
    return value


TEXT = Kind("string", _text)
SECRET = Kind("secret string", _secret, secret=True)
BOOL = Kind("true | false", _bool)
DURATION = duration()
def _link(value: Any) -> str:
    _url(value)  # validates
    return _text(value)


URL = Kind("http(s) URL", _url)      # a base URL: the trailing slash is dropped
LINK = Kind("http(s) URL", _link)    # a URL handed to someone else: kept exactly as written
ANY = Kind("any", _any)
SECTION = Kind("section", _any)   # a sub-section read on its own (its rows come from its class)


# --- reading ----------------------------------------------------------------------------


def _key(field: dataclasses.Field) -> str:
    return field.metadata.get("key") or field.name


def _lookup(data: Mapping[str, Any], key: str) -> Any:
    node: Any = data
    for part in key.split("."):
        if not isinstance(node, Mapping):
            return None
        node = node.get(part)
    return node


def _known(cls: type) -> dict[str, set[str]]:
    """First key part -> the set of sub-keys under it (empty for plain keys)."""
    known: dict[str, set[str]] = {}
    for field in dataclasses.fields(cls):
        if "doc" not in field.metadata:
            continue
        head, _, rest = _key(field).partition(".")
        known.setdefault(head, set())
        if rest:
            known[head].add(rest)
    return known


def read(cls: type, data: Any, path: str, errors: list[ConfigError], /, *,
         ignore: tuple[str, ...] = (), **given: Any) -> Any:
    """Build ``cls`` from the mapping ``data`` found at ``path``; append problems to ``errors``.

    Keys in ``ignore`` are read elsewhere (e.g. a provider's ``type``); ``given`` sets
    fields that do not come from the YAML (a section's name). A bad value leaves the
    field at its default, so every problem of the section is reported at once.
    """
    def at(key: str) -> str:
        return f"{path}.{key}" if path and key else (key or path)

    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        errors.append(ConfigError(path, "must be a mapping"))
        data = {}
    known = _known(cls)
    for name, value in data.items():
        if name in ignore:
            continue
        if name not in known:
            errors.append(ConfigError(at(str(name)), "unknown setting"))
        elif known[name]:
            if value is not None and not isinstance(value, Mapping):
                errors.append(ConfigError(at(str(name)), "must be a mapping"))
                continue
            for sub in value or {}:
                if sub not in known[name]:
                    errors.append(ConfigError(at(f"{name}.{sub}"), "unknown setting"))
    values: dict[str, Any] = {}
    for field in dataclasses.fields(cls):
        if field.name in given:
            values[field.name] = given[field.name]
            continue
        if "doc" not in field.metadata:
            continue
        key, kind = _key(field), field.metadata["kind"]
        raw = _lookup(data, key)
        default = default_of(field)
        fallback = None if default is REQUIRED else default
        if raw is None:
            if default is REQUIRED:
                errors.append(ConfigError(at(key), "required"))
            values[field.name] = fallback
            continue
        try:
            values[field.name] = kind(raw)
        except SubError as exc:
            errors.append(ConfigError(at(f"{key}.{exc.key}"), str(exc)))
            values[field.name] = fallback
        except ConfigError as exc:
            errors.append(exc)
            values[field.name] = fallback
        except (ValueError, TypeError) as exc:
            errors.append(ConfigError(at(key), str(exc)))
            values[field.name] = fallback
    instance = cls(**values)
    check = getattr(instance, "problems", None)
    if check is not None:
        errors.extend(ConfigError(at(key), problem) for key, problem in check())
    return instance


def load(cls: type, data: Any, path: str, /, *, ignore: tuple[str, ...] = (), **given: Any) -> Any:
    """``read`` that raises ``ConfigErrors`` (or the single ``ConfigError``) on any problem."""
    errors: list[ConfigError] = []
    instance = read(cls, data, path, errors, ignore=ignore, **given)
    if len(errors) == 1:
        raise errors[0]
    if errors:
        raise ConfigErrors(errors)
    return instance


# --- the reference ----------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    """One line of ``mail2sms config reference``."""

    key: str
    kind: str
    default: str
    doc: str


def rows(cls: type, prefix: str) -> Iterator[Row]:
    """The reference rows of ``cls`` with keys under ``prefix``."""
    for field in dataclasses.fields(cls):
        if "doc" not in field.metadata or field.metadata["kind"] is SECTION:
            continue
        key = f"{prefix}.{_key(field)}" if prefix else _key(field)
        yield Row(key, field.metadata["kind"].name, shown_default(field), field.metadata["doc"])


def shown_default(field: dataclasses.Field) -> str:
    """How a field's default reads in the reference."""
    if field.metadata.get("shown") is not None:
        return field.metadata["shown"]
    value = field.metadata.get("value", field.default)
    if value is REQUIRED:
        return "required"
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and field.metadata["kind"].name.startswith("duration"):
        return _seconds(value)
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{k}: {v}" for k, v in value.items()) + "}"
    if isinstance(value, (tuple, frozenset)):
        return "[" + ", ".join(sorted(str(v) for v in value)) + "]"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _seconds(value: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if value >= size and value % size == 0:
            return f"{int(value // size)}{unit}"
    return f"{value:g}s"
