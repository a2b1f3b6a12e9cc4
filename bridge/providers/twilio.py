"""Twilio Programmable Messaging: form ``POST {url}/2010-04-01/Accounts/{sid}/Messages.json``.

Verified (Twilio's REST API reference as generated into its OpenAPI SDKs - twilio-go
``AccountsMessagesApi``, the ``MessageEnumStatus`` enum - and Twilio's error dictionary
pages 20429, 21211, 21408, 21611, 21617, 30001):
  - HTTP Basic auth ``account_sid:auth_token``; form fields ``To`` (E.164), ``From`` or
    ``MessagingServiceSid``, ``Body`` (at most 1600 characters); success is HTTP 201 with
    the Message resource (``sid``, ``status``, ``price``...);
  - ``GET .../Messages/{sid}.json`` gives ``status``: queued, accepted, scheduled, sending,
    sent, delivered, read, undelivered, failed, canceled, partially_delivered...;
  - a US long code sends one segment per second (error 30001/21611 pages): ``default_rate``.
  - errors are ``{"code", "message", "more_info", "status"}``; 20429 is "HTTP 429, not
    processed, safe to retry"; 21611 is "the From queue is full" (nothing created).
Twilio takes no client reference; an ``unknown`` job is found by its sid, or by listing the
messages to the number (``GET .../Messages.json?To=``, newest first) and matching the body
and creation time; "not found" is only said when that list was complete (fewer entries than
the page size), since a queued message may wait a long time. 21610 (the recipient replied
STOP to this sender) is ``RecipientRefused``: no other provider may text that person.
Assumed: 30001 (queue overflow) is documented as a failure *after* creation, seen through
``status()``; should it come back synchronously it is read as "not accepted, retry later".
Every other code on a 4xx answer is a definite refusal; Twilio picks the encoding itself;
a 503 is not documented as "not processed": ambiguous.

Webhooks (``parse_callback``), verified against Twilio's "Track the message status of
outbound messages" guide (https://www.twilio.com/docs/messaging/guides/track-outbound-message-status),
"Twilio's request to your incoming message webhook URL"
(https://www.twilio.com/docs/messaging/guides/webhook-request) and "Secure webhooks"
(https://www.twilio.com/docs/usage/webhooks/webhooks-security):
  - both are form posts; a status callback carries ``MessageSid`` (our send's ``sid``),
    ``MessageStatus`` (queued, sending, sent, delivered, undelivered, failed, read...),
    ``ErrorCode`` when it failed, ``To``; an incoming message carries ``MessageSid`` (its
    own), ``From``, ``To``, ``Body`` and ``SmsStatus=received``;
  - every request is signed: ``X-Twilio-Signature`` = base64(HMAC-SHA1(auth token, the
    full URL + each POST parameter's name and value, sorted by name)). A missing or wrong
    signature raises ``CallbackForbidden``; the URL with and without the scheme's default
    port is tried, as Twilio's own validators do.
With ``callbacks`` set, every send asks for ``StatusCallback`` = the bridge's DLR URL.
Console: the incoming-message webhook of the number (or of the Messaging Service) must be
set to the bridge's inbound URL, method POST; Twilio does not take it per message.
Twilio never links an incoming message to ours, so ``in_reply_to`` stays empty.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import parse_qsl, urlsplit, urlunsplit

import httpx

from bridge.errors import AmbiguousError, PermanentError, RecipientRefused, TransientError
from bridge.providers.base import (Callback, CallbackForbidden, CallbackRequest, Capabilities, HttpSettings,
                                   ProviderBase, Receipt, Reconciled, Sms, or_none)
from bridge.providers.calls import as_int, json_body, request
from bridge.providers.webhooks import e164, first, is_form, require
from bridge.settings import REQUIRED, SECRET, TEXT, URL, pattern, setting

DEFAULT_URL = "https://api.twilio.com"

#: Twilio error codes read as "not accepted now, may be accepted later or elsewhere"
_TRANSIENT = {20429: "too many requests", 21611: "From queue full", 30001: "queue overflow"}
_REFUSALS = {
    20003: "authentication failed",
    20404: "resource not found (account SID?)",
    21211: "invalid 'To' number",
    21212: "invalid 'From' number",
    21408: "sending to this region is not enabled",
    21602: "message body required",
    21606: "'From' is not a message-capable number of this account",
    21610: "recipient unsubscribed (STOP)",
    21612: "'To' and 'From' cannot be connected",
    21614: "'To' is not a mobile number",
    21617: "body exceeds 1600 characters",
}
#: codes meaning "this recipient refuses this sender": never try another provider
_OPTED_OUT = {21610}
PAGE_SIZE = 50
#: Twilio message ``status`` -> the bridge's normalised state (others: None)
_STATES = {
    "accepted": "sent", "scheduled": "sent", "queued": "sent", "sending": "sent", "sent": "sent",
    "delivered": "delivered", "read": "delivered",
    "undelivered": "failed", "failed": "failed", "canceled": "failed",
}
#: ``MessageStatus`` of a status callback -> ``Callback.state`` (the others are intermediate)
_CALLBACK_STATES = {
    "delivered": "delivered", "read": "delivered",
    "undelivered": "undelivered", "failed": "undelivered", "canceled": "undelivered",
}
#: ``MessageStatus``/``SmsStatus`` values of an incoming message
_INBOUND = {"received", "receiving"}


@dataclass(frozen=True, kw_only=True)
class TwilioSettings(HttpSettings):
    """``providers.<name>`` with ``type: twilio``."""

    account_sid: str = setting(REQUIRED, "Twilio account SID (AC + 32 hex digits)",
                               pattern(r"AC[0-9a-fA-F]{32}", "must be AC followed by 32 hex digits", "SID"))
    auth_token: str = setting(REQUIRED, "Twilio auth token", SECRET)
    sender: str | None = setting(None, "From: a Twilio number or an alphanumeric sender", TEXT, key="from")
    messaging_service_sid: str | None = setting(
        None, "MessagingServiceSid (MG + 32 hex digits), instead of or with from",
        pattern(r"MG[0-9a-fA-F]{32}", "must be MG followed by 32 hex digits", "SID"))
    url: str = setting(DEFAULT_URL, "base URL of the API", URL)

    def problems(self) -> Iterator[tuple[str, str]]:
        """``from`` or ``messaging_service_sid`` is needed."""
        if self.sender is None and self.messaging_service_sid is None:
            yield "from", "required unless messaging_service_sid is set"


class TwilioProvider(ProviderBase):
    """Sends through Twilio's Messages API (https://www.twilio.com)."""

    type = "twilio"
    Settings = TwilioSettings
    # alphanumeric senders where Twilio and the country allow it; Body is capped at 1600
    # characters (10 GSM-7 parts); a long code sends one segment per second
    CAPABILITIES = Capabilities(max_parts=10, default_rate=1.0)

    async def send(self, sms: Sms) -> Receipt:
        """One Message resource for the single number of ``sms``."""
        number = self.one_number(sms)
        form = {"To": number, "Body": sms.text}
        sender = sms.sender or self.settings.sender
        if sender:
            form["From"] = sender
        if self.settings.messaging_service_sid:
            form["MessagingServiceSid"] = self.settings.messaging_service_sid
        if self.callbacks is not None:
            form["StatusCallback"] = self.callbacks.dlr
        response = await self._call("POST", "/Messages.json", data=form)
        body = json_body(response, self.name)
        sid = body.get("sid") if isinstance(body, dict) else None
        if not (isinstance(sid, str) and sid):
            raise AmbiguousError(f"answer without a sid (HTTP {response.status_code})",
                                 provider=self.name)
        return Receipt(message_ids={number: sid}, raw=body)  # price is set later by Twilio

    async def status(self, message_id: str, number: str) -> str | None:
        """``GET .../Messages/{sid}.json``: delivered, sent, failed, or None if unknown."""
        try:
            response = await self._call("GET", f"/Messages/{message_id}.json")
        except PermanentError as exc:
            if exc.code in (404, 20404):
                return None
            raise
        try:
            body = response.json()
        except ValueError:
            return None
        return _STATES.get(str(body.get("status", ""))) if isinstance(body, dict) else None

    async def reconcile(self, sms: Sms, since: float, message_id: str | None) -> Reconciled | None:
        """Settle an ambiguous send: by its sid, or else by listing the messages to the number.

        A message to the number with the same body, created after ``since`` (minus a minute
        of clock skew), is ours. ``not_found`` only when the list was complete.
        """
        return await or_none(self._reconcile(sms, since, message_id))

    async def _reconcile(self, sms: Sms, since: float, message_id: str | None) -> Reconciled | None:
        if message_id:
            state = await self.status(message_id, sms.to[0])
            return (state, message_id) if state else None
        response = await self._call("GET", "/Messages.json", params={"To": sms.to[0], "PageSize": PAGE_SIZE})
        body = json_body(response, self.name)
        messages = body.get("messages") if isinstance(body, dict) else None
        if not isinstance(messages, list):
            return None
        for message in messages:
            if not isinstance(message, dict) or message.get("body") != sms.text:
                continue
            created = _when(message.get("date_created"))
            if created is not None and created >= since - 60:
                state = _STATES.get(str(message.get("status", "")))
                if state:
                    return state, message.get("sid")
        return ("not_found", None) if len(messages) < PAGE_SIZE else None

    def parse_callback(self, request: CallbackRequest) -> list[Callback]:
        """A status callback or an incoming message, once its Twilio signature checks out."""
        self.verify_signature(request)
        fields = request.fields
        status = (first(fields, "MessageStatus", "SmsStatus") or "").lower()
        if status and status not in _INBOUND:
            code = first(fields, "ErrorCode")
            message = first(fields, "ErrorMessage")
            state = _CALLBACK_STATES.get(status)
            reason = " - ".join(p for p in (code, message) if p) or None
            return [Callback(kind="delivery", message_id=require(fields, "MessageSid", "SmsSid"),
                             number=e164(first(fields, "To")), state=state, status=status,
                             reason=reason if state == "undelivered" else None)]
        if "Body" in fields or status in _INBOUND:
            return [Callback(kind="inbound", message_id=require(fields, "MessageSid", "SmsMessageSid", "SmsSid"),
                             number=e164(require(fields, "From")), to=e164(first(fields, "To")),
                             text=str(fields.get("Body") or ""), status=status or "received")]
        raise ValueError("neither a status callback (MessageStatus) nor an incoming message (Body)")

    def verify_signature(self, request: CallbackRequest) -> None:
        """Raise ``CallbackForbidden`` unless ``X-Twilio-Signature`` matches the auth token."""
        given = _header(request.headers, "X-Twilio-Signature")
        if not given:
            raise CallbackForbidden("no X-Twilio-Signature")
        params: list[tuple[str, str]] = []
        if request.method.upper() == "POST" and is_form(request):
            params = parse_qsl(request.body.decode("utf-8"), keep_blank_values=True)
        for url in _url_forms(request.url):
            expected = signature(self.settings.auth_token, url, params)
            if hmac.compare_digest(expected.encode(), given.encode()):
                return
        raise CallbackForbidden("X-Twilio-Signature does not match")

    async def check(self) -> str:
        """``GET .../Accounts/{sid}.json``: the credentials work and the account is active."""
        body = json_body(await self._call("GET", ".json"), self.name)
        state = body.get("status") if isinstance(body, dict) else None
        if state not in (None, "active"):
            raise PermanentError(f"account is {state}", provider=self.name, code=str(state))
        return f"account {self.settings.account_sid} is {state or 'reachable'}"

    async def _call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """An authenticated request; a Twilio error answer becomes the matching exception."""
        s = self.settings
        url = f"{s.url}/2010-04-01/Accounts/{s.account_sid}{path}"
        response = await request(self.client, self.name, method, url, timeout=s.timeout,
                                 auth=(s.account_sid, s.auth_token), **kwargs)
        if response.is_success:
            return response
        try:
            body = response.json()
        except ValueError:
            body = None
        code = as_int(body.get("code")) if isinstance(body, dict) else None
        text = f"HTTP {response.status_code}"
        if code is not None:
            text = f"code {code}: {_TRANSIENT.get(code) or _REFUSALS.get(code) or 'refused'}"
        if isinstance(body, dict) and isinstance(body.get("message"), str):
            text += f" - {body['message']}"
        text = self.scrub(text)
        if code in _OPTED_OUT:
            raise RecipientRefused(text, provider=self.name, code=code, opted_out=True)
        if code in _TRANSIENT:
            raise TransientError(text, provider=self.name, code=code)
        raise PermanentError(text, provider=self.name,
                             code=code if code is not None else response.status_code)


def signature(auth_token: str, url: str, params: list[tuple[str, str]]) -> str:
    """Twilio's webhook signature: base64 HMAC-SHA1 of the URL and the sorted POST parameters.

    Parameters are sorted by name, each name followed by its value(s) (sorted, once each),
    all concatenated after the URL; the key is the account's auth token.
    """
    values: dict[str, set[str]] = {}
    for name, value in params:
        values.setdefault(name, set()).add(value)
    data = url + "".join(name + value for name in sorted(values) for value in sorted(values[name]))
    digest = hmac.new(auth_token.encode("utf-8"), data.encode("utf-8"), hashlib.sha1).digest()
    return base64.b64encode(digest).decode("ascii")


def _url_forms(url: str) -> list[str]:
    """``url`` as given, then without (or with) the scheme's default port.

    Twilio signs the URL as it called it; a proxy may add or drop ``:443``, so its own
    validators try both forms.
    """
    parts = urlsplit(url)
    default = {"https": 443, "http": 80}.get(parts.scheme)
    host = parts.hostname or ""
    host = f"[{host}]" if ":" in host else host  # an IPv6 literal keeps its brackets
    userinfo = parts.netloc.rpartition("@")[0]
    prefix = userinfo + "@" if userinfo else ""
    if parts.port is not None and parts.port == default:
        other = prefix + host
    elif parts.port is None and default is not None:
        other = f"{prefix}{host}:{default}"
    else:
        return [url]
    return [url, urlunsplit(parts._replace(netloc=other))]


def _header(headers: Mapping[str, str], name: str) -> str | None:
    """A header by name, whatever the case of the mapping's keys."""
    value = headers.get(name)
    if value is None:
        value = next((v for k, v in headers.items() if k.lower() == name.lower()), None)
    return value


def _when(value: Any) -> float | None:
    """Epoch seconds from Twilio's RFC 2822 dates (``Sat, 21 Nov 2026 10:00:00 +0000``)."""
    if not isinstance(value, str):
        return None
    try:
        return parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError):
        return None

