"""The Mail2SMS subject: ``login@apiKey|mobile1;mobile2|from=SENDER|date=...|lc=0|1``.

Fields are separated by ``|`` and may carry surrounding whitespace. The first field is the
login and the API key, split at the *first* ``@`` (the key may contain anything but ``|``);
the second lists the numbers, separated by ``;`` (``,`` is accepted too); the rest are
``name=value`` options in any order, each at most once, possibly empty (``from=|date=``).
A blank subject is status 105; anything else out of shape is 109.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from bridge.errors import StatusError

#: Options the subject may carry. ``from``, ``date`` and ``lc`` are Allmysms'; ``type``
#: (``marketing`` or ``transactional``) is the bridge's own extension.
KNOWN_OPTIONS = frozenset({"from", "date", "lc", "type"})
CATEGORIES = ("transactional", "marketing")


@dataclass(frozen=True)
class Subject:
    """A parsed subject; values are as written (checked later by their own rules)."""

    login: str
    api_key: str = field(repr=False)
    numbers: tuple[str, ...]
    options: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))

    @property
    def sender(self) -> str | None:
        """The ``from=`` value, or None when absent or empty."""
        return self.options.get("from") or None

    @property
    def date(self) -> str | None:
        """The ``date=`` value, or None when absent or empty."""
        return self.options.get("date") or None

    @property
    def category(self) -> str | None:
        """``marketing`` or ``transactional`` from ``type=``, or None (the account decides)."""
        return self.options.get("type", "").lower() or None

    @property
    def low_cost(self) -> bool:
        """True for ``lc=1`` (low-cost route); ``lc=0`` or nothing is premium."""
        return self.options.get("lc") == "1"

    def redacted(self) -> str:
        """The subject as received but with the API key hidden, for replies and logs."""
        parts = [f"{self.login}@***", ";".join(self.numbers)]
        parts += [f"{name}={value}" for name, value in self.options.items()]
        return "|".join(parts)


def parse_subject(subject: str) -> Subject:
    """Parse a decoded subject line; raise ``StatusError`` 105 (blank) or 109 (malformed)."""
    if not subject or not subject.strip():
        raise StatusError(105)
    fields = [f.strip() for f in subject.strip().split("|")]
    login, sep, api_key = fields[0].partition("@")
    login, api_key = login.strip(), api_key.strip()
    if not sep or not login or not api_key:
        raise StatusError(109, note="the subject must start with login@apiKey")
    if any(c.isspace() for c in login):
        raise StatusError(109, note="the login cannot contain spaces")
    if len(fields) < 2:
        raise StatusError(109, note="the numbers are missing after login@apiKey|")
    numbers = tuple(n.strip() for n in fields[1].replace(",", ";").split(";") if n.strip())
    return Subject(login, api_key, numbers, MappingProxyType(_parse_options(fields[2:])))


def _parse_options(fields: list[str]) -> dict[str, str]:
    options: dict[str, str] = {}
    for item in fields:
        if not item:
            continue  # "a|b||" or a trailing "|": nothing to read, nothing wrong
        name, sep, value = item.partition("=")
        name = name.strip().lower()
        if not sep:
            raise StatusError(109, note=f"option {item[:30]!r} is not name=value")
        if name not in KNOWN_OPTIONS:
            raise StatusError(109, note=f"unknown option {name[:30]!r}")
        if name in options:
            raise StatusError(109, note=f"option {name!r} given twice")
        value = value.strip()
        if name == "lc" and value not in ("", "0", "1"):
            raise StatusError(109, note="lc= must be 0 or 1")
        if name == "type" and value.lower() not in ("", *CATEGORIES):
            raise StatusError(109, note="type= must be marketing or transactional")
        options[name] = value
    return options
