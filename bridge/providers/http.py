"""A generic HTTP provider, for SMS gateways without a module of their own.

Nothing here comes from a provider's documentation: the operator describes the call
(``url``, ``method``, ``headers``, a ``body`` or ``form`` template) and what its answers
mean (``success_status``/``success_match``, ``permanent_status``/``permanent_match``,
``message_id_path``). Placeholders: ``{to}`` (E.164), ``{to_digits}`` (no ``+``),
``{text}``, ``{sender}``, ``{parts}``, ``{unicode}`` and ``{low_cost}`` (0/1), ``{reference}``;
``{{`` and ``}}`` are literal braces. In the URL values are percent-encoded; in a string
``body`` inserted raw; in a mapping ``body`` the structure is built first and then dumped as
JSON (a value that is exactly ``"{parts}"``, ``"{unicode}"`` or ``"{low_cost}"`` becomes a
number, every other value stays a string), so a text is always escaped correctly.

Answers, after the shared rules of ``base.request`` (transport failures, 429, 503, 5xx):
a ``permanent_status``, or a ``permanent_match`` on the body, is a refusal; a
``success_status`` whose body passes ``success_match`` (when set) is a success; anything else
(a 2xx that fails ``success_match``, a status in neither list) is ambiguous - the SMS may be
out, and the operator has to say what that answer means.
"""

from __future__ import annotations

import re
import string
from collections.abc import Iterator, Mapping
from typing import Any
from urllib.parse import parse_qsl, quote, urlsplit

import httpx

from bridge.errors import AmbiguousError, ConfigError, PermanentError
from bridge.providers.base import Provider, Receipt, Settings, Sms, request, scrub

PLACEHOLDERS = ("to", "to_digits", "text", "sender", "parts", "unicode", "low_cost", "reference")
_NUMBERS = {"{parts}": "parts", "{unicode}": "unicode", "{low_cost}": "low_cost"}
_SPLIT = re.compile(r"[\s&=?/;,:\"'{}\[\]<>]+")
_PLACEHOLDER = re.compile(r"\{[a-z_]+\}")


def _template(path: str, value: Any) -> str:
    """``value`` if it is a string whose placeholders are all known; ConfigError otherwise."""
    if not isinstance(value, str):
        raise ConfigError(path, "must be a string")
    try:
        fields = list(string.Formatter().parse(value))
    except ValueError as exc:
        raise ConfigError(path, f"bad template: {exc}") from None
    for _, field, spec, conversion in fields:
        if field is not None and field not in PLACEHOLDERS:
            raise ConfigError(path, f"unknown placeholder {{{field}}} (known: {', '.join(PLACEHOLDERS)})")
        if spec or conversion:
            raise ConfigError(path, f"{{{field}}}: placeholders take no format spec or conversion")
    return value


def _statuses(s: Settings, key: str, default: list[int]) -> frozenset[int]:
    value = s.settings.get(key, default)
    if not (isinstance(value, list) and value and all(
            isinstance(v, int) and not isinstance(v, bool) and 100 <= v <= 599 for v in value)):
        raise ConfigError(s.path(key), "must be a non-empty list of HTTP status codes")
    return frozenset(value)


def _regex(s: Settings, key: str) -> re.Pattern[str] | None:
    if s.settings.get(key) is None:
        return None
    try:
        return re.compile(s.str(key), re.DOTALL)
    except re.error as exc:
        raise ConfigError(s.path(key), f"not a regular expression: {exc}") from None


class HttpProvider(Provider):
    """Sends through any HTTP API described in the config; one number per call."""

    type = "http"
    max_batch = 1
    unicode = True
    alphanumeric_sender = True

    def __init__(self, name: str, s: Settings, client: httpx.AsyncClient | None) -> None:
        super().__init__(name)
        self._client = client
        settings = s.settings
        s.url("url")  # validates; the template is kept exactly as written (trailing slash too)
        self.url = _template(s.path("url"), settings["url"])
        self.method = s.str("method", "POST").upper()
        if self.method not in ("GET", "POST", "PUT"):
            raise ConfigError(s.path("method"), "must be GET, POST or PUT")
        headers = settings.get("headers", {})
        if not isinstance(headers, Mapping) or not all(
                isinstance(k, str) and k and isinstance(v, str) for k, v in headers.items()):
            raise ConfigError(s.path("headers"), "must map header names to strings")
        self._headers = dict(headers)
        if settings.get("body") is not None and settings.get("form") is not None:
            raise ConfigError(s.path("form"), "give either body or form, not both")
        self._body: Any = settings.get("body")
        if isinstance(self._body, (Mapping, list)):
            for path, value in _leaves(self._body, s.path("body")):
                _template(path, value)
        elif self._body is not None:
            _template(s.path("body"), self._body)
        self._form = settings.get("form")
        if self._form is not None:
            if not isinstance(self._form, Mapping) or not self._form:
                raise ConfigError(s.path("form"), "must map field names to templates")
            for key, value in self._form.items():
                _template(s.path(f"form.{key}"), value)
        if self.method == "GET" and (self._body is not None or self._form is not None):
            raise ConfigError(s.path("method"), "GET takes no body: put placeholders in url")
        self.sender = s.str("sender") if settings.get("sender") is not None else None
        self.timeout = s.number("timeout", 10, minimum=0.1)
        self.success_status = _statuses(s, "success_status", [200, 201, 202])
        self.permanent_status = _statuses(s, "permanent_status", [400, 401, 403, 404, 422])
        if self.success_status & self.permanent_status:
            raise ConfigError(s.path("permanent_status"), "overlaps success_status")
        self.success_match = _regex(s, "success_match")
        self.permanent_match = _regex(s, "permanent_match")
        path = s.str("message_id_path") if settings.get("message_id_path") is not None else None
        self.message_id_path = path.split(".") if path else None
        parts = settings.get("max_parts", Provider.max_parts)
        if isinstance(parts, bool) or not isinstance(parts, int) or parts < 1:
            raise ConfigError(s.path("max_parts"), "must be a whole number >= 1")
        self.max_parts = parts
        self._secrets = _secrets(self.url, self._headers, self._body, self._form)

    @classmethod
    def from_config(
        cls, name: str, settings: Mapping[str, Any], client: httpx.AsyncClient | None = None
    ) -> HttpProvider:
        """Validate the section; every template is checked now, not at the first SMS."""
        known = {"url", "method", "headers", "body", "form", "sender", "timeout", "success_status",
                 "success_match", "permanent_status", "permanent_match", "message_id_path",
                 "max_parts"}
        return cls(name, Settings(name, settings, known), client)

    async def send(self, sms: Sms) -> Receipt:
        """One call for the single number of ``sms``, classified by the configured rules."""
        if self._client is None:
            raise RuntimeError(f"provider {self.name!r} was built without an HTTP client")
        if len(sms.to) != 1:
            raise ValueError(f"{len(sms.to)} numbers in one call, this provider takes one")
        values: dict[str, Any] = {
            "to": sms.to[0], "to_digits": sms.to[0].removeprefix("+"), "text": sms.text,
            "sender": sms.sender or self.sender or "", "parts": sms.parts,
            "unicode": int(sms.unicode), "low_cost": int(sms.low_cost), "reference": sms.reference,
        }
        encoded = {k: quote(str(v), safe="") for k, v in values.items()}
        kwargs: dict[str, Any] = {"headers": self._headers}
        if isinstance(self._body, (Mapping, list)):
            kwargs["json"] = self._render(self._body, values)
        elif self._body is not None:
            kwargs["content"] = self._body.format(**values).encode("utf-8")
        elif self._form is not None:
            kwargs["data"] = {k: v.format(**values) for k, v in self._form.items()}
        response = await request(self._client, self.name, self.method, self.url.format(**encoded),
                                 timeout=self.timeout, **kwargs)
        status, text = response.status_code, response.text
        if status in self.permanent_status or (self.permanent_match and self.permanent_match.search(text)):
            raise PermanentError(self._describe("refused", response), provider=self.name, code=status)
        if status not in self.success_status:
            raise AmbiguousError(self._describe("answer not described by success_status or "
                                                "permanent_status", response), provider=self.name, code=status)
        if self.success_match and not self.success_match.search(text):
            raise AmbiguousError(self._describe("answer does not match success_match", response),
                                 provider=self.name, code=status)
        try:
            body = response.json()
        except ValueError:
            body = None
        message_id = self._find_id(body)
        return Receipt(message_ids={sms.to[0]: message_id} if message_id else {},
                       raw=body if isinstance(body, dict) else {})

    def _render(self, node: Any, values: Mapping[str, Any]) -> Any:
        """The JSON template with placeholders filled; the caller dumps it (escaping)."""
        if isinstance(node, Mapping):
            return {key: self._render(value, values) for key, value in node.items()}
        if isinstance(node, list):
            return [self._render(value, values) for value in node]
        if isinstance(node, str):
            return values[_NUMBERS[node]] if node in _NUMBERS else node.format(**values)
        return node

    def _find_id(self, body: Any) -> str | None:
        if not self.message_id_path:
            return None
        for key in self.message_id_path:
            if isinstance(body, Mapping):
                body = body.get(key)
            elif isinstance(body, list) and key.isdigit() and int(key) < len(body):
                body = body[int(key)]
            else:
                return None
        return None if body in (None, "") or isinstance(body, (dict, list)) else str(body)

    def _describe(self, what: str, response: httpx.Response) -> str:
        excerpt = " ".join(response.text.split())[:200]
        text = f"{what} (HTTP {response.status_code})" + (f": {excerpt}" if excerpt else "")
        return scrub(text, *self._secrets)


def _leaves(node: Any, path: str = "") -> Iterator[tuple[str, str]]:
    """(config path, string) for every string in a JSON or form template."""
    if isinstance(node, Mapping):
        for key, value in node.items():
            yield from _leaves(value, f"{path}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _leaves(value, f"{path}[{i}]")
    elif isinstance(node, str):
        yield path, node


def _secrets(url: str, headers: Mapping[str, str], body: Any, form: Any) -> list[str]:
    """What the operator wrote as a value (header, query, form or JSON value, words of a text
    body) may be a credential a provider echoes back: every literal piece of 4+ characters,
    longest first, is scrubbed from error texts. Names (keys, fields) are left readable."""
    parts = urlsplit(url)
    values = [v for header in headers.values() for v in (header, *header.split())]
    values += [parts.password or "", *(v for _, v in parse_qsl(parts.query))]
    values += [value for _, value in (*_leaves(body), *_leaves(form))]
    if isinstance(body, str):
        values += [word for word in _SPLIT.split(body) if len(word) >= 8]
    pieces = {p for v in values for p in _PLACEHOLDER.split(v) if len(p.strip()) >= 4}
    return sorted(pieces, key=len, reverse=True)
