"""A generic HTTP provider, for SMS gateways without a module of their own.

Nothing here comes from a provider's documentation: the operator describes the call
(``url``, ``method``, ``headers``, a ``body`` or ``form`` template) and what its answers
mean (``success_status``/``success_match``, ``permanent_status``/``permanent_match``,
``opted_out_match``, ``message_id_path``). Placeholders: ``{to}`` (E.164), ``{to_digits}``
(no ``+``), ``{text}``, ``{sender}``, ``{parts}``, ``{unicode}`` and ``{low_cost}`` (0/1),
``{reference}``; ``{{`` and ``}}`` are literal braces. In the URL values are
percent-encoded; in a string ``body`` inserted raw; in a mapping ``body`` the structure is
built first and then dumped as JSON (a value that is exactly ``"{parts}"``, ``"{unicode}"``
or ``"{low_cost}"`` becomes a number, every other value stays a string), so a text is
always escaped correctly.

Answers, after the shared rules of ``calls.request`` (transport failures, 429, 5xx; a 503
is a definite "not processed" only with ``definite_503: true``): an ``opted_out_match`` on
the body is ``RecipientRefused``; a ``permanent_status``, or a ``permanent_match`` on the
body, is a refusal; a ``success_status`` whose body passes ``success_match`` (when set) is a
success; anything else is ambiguous - the SMS may be out, and the operator has to say what
that answer means.

Reconciliation (``reconcile_url``, a GET template with ``{reference}``, ``{to}``,
``{to_digits}``): 404 is ``not_found``; a 2xx JSON answer whose value at
``reconcile_state_path`` is ``sent``/``accepted`` is sent, ``delivered`` delivered,
``failed``/``undelivered``/``rejected`` failed; anything else, or a transport error, is
"cannot tell". ``check_url`` (GET, any 2xx) makes ``providers check`` meaningful.
"""

from __future__ import annotations

import re
import string
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, quote, urlsplit

import httpx

from bridge.errors import AmbiguousError, PermanentError, ProviderError, RecipientRefused
from bridge.providers.base import Capabilities, HttpSettings, ProviderBase, Receipt, Reconciled, Sms
from bridge.providers.calls import request
from bridge.settings import BOOL, REQUIRED, TEXT, Kind, choice, integer, setting

PLACEHOLDERS = ("to", "to_digits", "text", "sender", "parts", "unicode", "low_cost", "reference")
LOOKUP_PLACEHOLDERS = ("reference", "to", "to_digits")
_RECONCILED = {"sent": "sent", "accepted": "sent", "delivered": "delivered",
               "failed": "failed", "undelivered": "failed", "rejected": "failed"}
_NUMBERS = {"{parts}": "parts", "{unicode}": "unicode", "{low_cost}": "low_cost"}
_SPLIT = re.compile(r"[\s&=?/;,:\"'{}\[\]<>]+")
_PLACEHOLDER = re.compile(r"\{[a-z_]+\}")


def _template(value: Any, known: tuple[str, ...] = PLACEHOLDERS) -> str:
    """``value`` if it is a string whose placeholders are all known; ValueError otherwise."""
    if not isinstance(value, str):
        raise ValueError("must be a string")
    try:
        fields = list(string.Formatter().parse(value))
    except ValueError as exc:
        raise ValueError(f"bad template: {exc}") from None
    for _, field, spec, conversion in fields:
        if field is not None and field not in known:
            raise ValueError(f"unknown placeholder {{{field}}} (known: {', '.join(known)})")
        if spec or conversion:
            raise ValueError(f"{{{field}}}: placeholders take no format spec or conversion")
    return value


def _url_template(known: tuple[str, ...]) -> Kind:
    def convert(value: Any) -> str:
        text = _template(value, known)
        sample = text.format(**{k: "x" for k in known})
        parsed = httpx.URL(sample)
        if parsed.scheme not in ("http", "https") or not parsed.host:
            raise ValueError("not an http(s) URL")
        return text
    # may carry a key in its query: never printed (repr) and scrubbed from errors
    return Kind("URL template", convert, secret=True)


def _statuses(value: Any) -> frozenset[int]:
    if not (isinstance(value, list) and value and all(
            isinstance(v, int) and not isinstance(v, bool) and 100 <= v <= 599 for v in value)):
        raise ValueError("must be a non-empty list of HTTP status codes")
    return frozenset(value)


def _regex(value: Any) -> re.Pattern[str]:
    if not isinstance(value, str) or not value:
        raise ValueError("must be a non-empty regular expression")
    try:
        return re.compile(value, re.DOTALL)
    except re.error as exc:
        raise ValueError(f"not a regular expression: {exc}") from None


def _headers(value: Any) -> Mapping[str, str]:
    if not isinstance(value, Mapping) or not all(
            isinstance(k, str) and k and isinstance(v, str) for k, v in value.items()):
        raise ValueError("must map header names to strings")
    return dict(value)


def _body(value: Any) -> Any:
    if not isinstance(value, (str, Mapping, list)):
        raise ValueError("must be a string, or a mapping/list sent as JSON")
    return value


def _form(value: Any) -> Mapping[str, Any]:
    if not isinstance(value, Mapping) or not value:
        raise ValueError("must map field names to templates")
    return value


def _path(value: Any) -> tuple[str, ...]:
    if not isinstance(value, str) or not value.strip():
        raise ValueError("must be a dot path such as data.id")
    return tuple(value.strip().split("."))


STATUSES = Kind("list of HTTP statuses", _statuses)
REGEX = Kind("regular expression", _regex)
PATH = Kind("dot path", _path)


@dataclass(frozen=True, kw_only=True)
class HttpProviderSettings(HttpSettings):
    """``providers.<name>`` with ``type: http``."""

    url: str = setting(REQUIRED, "URL template of the send call (placeholders percent-encoded)",
                       _url_template(PLACEHOLDERS))
    method: str = setting("POST", "GET | POST | PUT", Kind("GET | POST | PUT", lambda v: choice(
        "GET", "POST", "PUT")(v.upper() if isinstance(v, str) else v)))
    headers: Mapping[str, str] | None = setting(None, "headers sent with every call (templates not expanded)",
                                                Kind("mapping of strings", _headers, secret=True))
    body: Any = setting(None, "body template: a string, or a mapping/list sent as JSON", Kind("string or JSON", _body, secret=True))
    form: Mapping[str, Any] | None = setting(None, "form fields (templates), instead of body", Kind("mapping", _form, secret=True))
    sender: str | None = setting(None, "{sender} when a mail gives no from=", TEXT)
    success_status: frozenset[int] = setting(frozenset({200, 201, 202}), "statuses meaning accepted", STATUSES)
    success_match: re.Pattern[str] | None = setting(None, "regex the body of a success must match", REGEX)
    permanent_status: frozenset[int] = setting(frozenset({400, 401, 403, 404, 422}),
                                               "statuses meaning refused for good", STATUSES)
    permanent_match: re.Pattern[str] | None = setting(None, "regex on the body meaning refused for good", REGEX)
    opted_out_match: re.Pattern[str] | None = setting(
        None, "regex on the body meaning the recipient opted out (no failover)", REGEX)
    message_id_path: tuple[str, ...] | None = setting(None, "dot path of the message id in a JSON answer", PATH)
    max_parts: int = setting(8, "most concatenated parts the gateway takes", integer(1))
    definite_503: bool = setting(False, "true if the gateway documents that a 503 processed nothing", BOOL)
    reconcile_url: str | None = setting(
        None, "GET template ({reference}, {to}, {to_digits}) to look an unknown job up",
        _url_template(LOOKUP_PLACEHOLDERS))
    reconcile_state_path: tuple[str, ...] = setting(("status",), "dot path of the state in the lookup answer",
                                                    PATH, shown="status")
    reconcile_id_path: tuple[str, ...] = setting(("id",), "dot path of the message id in the lookup answer",
                                                 PATH, shown="id")
    check_url: str | None = setting(None, "GET URL for providers check (any 2xx is ok)", _url_template(()))

    def problems(self) -> Iterator[tuple[str, str]]:
        """Templates, and settings that contradict each other."""
        if self.body is not None and self.form is not None:
            yield "form", "give either body or form, not both"
        if self.method == "GET" and (self.body is not None or self.form is not None):
            yield "method", "GET takes no body: put placeholders in url"
        if self.success_status & self.permanent_status:
            yield "permanent_status", "overlaps success_status"
        leaves = _leaves(self.body, "body") if not isinstance(self.body, str) else [("body", self.body)]
        for path, value in (*leaves, *_leaves(self.form or {}, "form")):
            try:
                _template(value)
            except ValueError as exc:
                yield path, str(exc)
        for key, value in (self.form or {}).items():
            if not isinstance(value, str):
                yield f"form.{key}", "must be a string"


class HttpProvider(ProviderBase):
    """Sends through any HTTP API described in the config; one number per call."""

    type = "http"
    Settings = HttpProviderSettings

    def __init__(self, name: str, settings: HttpProviderSettings, client: httpx.AsyncClient) -> None:
        super().__init__(name, settings, client)
        self.can_check = settings.check_url is not None
        self.can_reconcile = settings.reconcile_url is not None
        self._secrets = _secrets(settings.url, settings.headers or {}, settings.body, settings.form)
        for url in (settings.reconcile_url, settings.check_url):
            if url:
                self._secrets += _secrets(url, {}, None, None)

    @classmethod
    def capabilities_for(cls, settings: HttpProviderSettings) -> Capabilities:
        """``max_parts`` is configured per instance."""
        return Capabilities(max_parts=settings.max_parts)

    async def send(self, sms: Sms) -> Receipt:
        """One call for the single number of ``sms``, classified by the configured rules."""
        s = self.settings
        number = self.one_number(sms)
        values: dict[str, Any] = {
            "to": number, "to_digits": number.removeprefix("+"), "text": sms.text,
            "sender": sms.sender or s.sender or "", "parts": sms.parts,
            "unicode": int(sms.unicode), "low_cost": int(sms.low_cost), "reference": sms.reference,
        }
        encoded = {k: quote(str(v), safe="") for k, v in values.items()}
        kwargs: dict[str, Any] = {"headers": s.headers or {}}
        if isinstance(s.body, (Mapping, list)):
            kwargs["json"] = render(s.body, values)
        elif s.body is not None:
            kwargs["content"] = s.body.format(**values).encode("utf-8")
        elif s.form is not None:
            kwargs["data"] = {k: v.format(**values) for k, v in s.form.items()}
        response = await request(self.client, self.name, s.method, s.url.format(**encoded),
                                 timeout=s.timeout, definite_503=s.definite_503, **kwargs)
        status, text = response.status_code, response.text
        if s.opted_out_match and s.opted_out_match.search(text):
            raise RecipientRefused(self._describe("recipient opted out", response), provider=self.name,
                                   code=status, opted_out=True)
        if status in s.permanent_status or (s.permanent_match and s.permanent_match.search(text)):
            raise PermanentError(self._describe("refused", response), provider=self.name, code=status)
        if status not in s.success_status:
            raise AmbiguousError(self._describe("answer not described by success_status or "
                                                "permanent_status", response), provider=self.name, code=status)
        if s.success_match and not s.success_match.search(text):
            raise AmbiguousError(self._describe("answer does not match success_match", response),
                                 provider=self.name, code=status)
        try:
            body = response.json()
        except ValueError:
            body = None
        message_id = _find(body, s.message_id_path) if s.message_id_path else None
        return Receipt(message_ids={number: message_id} if message_id else {},
                       raw=body if isinstance(body, dict) else {})

    async def reconcile(self, sms: Sms, since: float, message_id: str | None) -> Reconciled | None:
        """GET ``reconcile_url``: 404 not found; a known state at ``reconcile_state_path``."""
        s = self.settings
        if s.reconcile_url is None:
            return None
        number = sms.to[0]
        values = {"reference": sms.reference, "to": number, "to_digits": number.removeprefix("+")}
        url = s.reconcile_url.format(**{k: quote(v, safe="") for k, v in values.items()})
        try:
            response = await request(self.client, self.name, "GET", url, timeout=s.timeout,
                                     headers=s.headers or {})
        except ProviderError:
            return None
        if response.status_code == 404:
            return "not_found", None
        if not response.is_success:
            return None
        try:
            body = response.json()
        except ValueError:
            return None
        state = _RECONCILED.get(str(_find(body, s.reconcile_state_path) or "").strip().lower())
        return (state, _find(body, s.reconcile_id_path) or message_id) if state else None

    async def check(self) -> str:
        """GET ``check_url``: any 2xx means the gateway answers and takes the headers."""
        if self.settings.check_url is None:
            raise RuntimeError("no check_url: see can_check")
        response = await request(self.client, self.name, "GET", self.settings.check_url,
                                 timeout=self.settings.timeout, headers=self.settings.headers or {})
        if not response.is_success:
            raise PermanentError(self._describe("check_url refused", response), provider=self.name,
                                 code=response.status_code)
        return f"check_url answered HTTP {response.status_code}"

    def _describe(self, what: str, response: httpx.Response) -> str:
        excerpt = " ".join(response.text.split())[:200]
        text = f"{what} (HTTP {response.status_code})" + (f": {excerpt}" if excerpt else "")
        return self.scrub(text, *self._secrets)


def render(node: Any, values: Mapping[str, Any]) -> Any:
    """The JSON template with placeholders filled; the caller dumps it (escaping)."""
    if isinstance(node, Mapping):
        return {key: render(value, values) for key, value in node.items()}
    if isinstance(node, list):
        return [render(value, values) for value in node]
    if isinstance(node, str):
        return values[_NUMBERS[node]] if node in _NUMBERS else node.format(**values)
    return node


def _find(body: Any, path: tuple[str, ...]) -> str | None:
    """The scalar at ``path`` (keys, or list indexes) in a JSON document, as a string."""
    for key in path:
        if isinstance(body, Mapping):
            body = body.get(key)
        elif isinstance(body, list) and key.isdigit() and int(key) < len(body):
            body = body[int(key)]
        else:
            return None
    return None if body in (None, "") or isinstance(body, (dict, list)) else str(body)


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
