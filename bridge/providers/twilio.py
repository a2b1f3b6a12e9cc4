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
Assumed: 30001 (queue overflow) is documented as a failure *after* creation, seen through
``status()``; should it come back synchronously it is read as "not accepted, retry later".
Every other code on a 4xx answer is a definite refusal; Twilio picks the encoding itself.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from typing import Any

import httpx

from bridge.errors import AmbiguousError, ConfigError, PermanentError, TransientError
from bridge.providers.base import Provider, Receipt, Settings, Sms, as_int, json_body, request, scrub

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
#: Twilio message ``status`` -> the bridge's normalised state (others: None)
_STATES = {
    "accepted": "sent", "scheduled": "sent", "queued": "sent", "sending": "sent", "sent": "sent",
    "delivered": "delivered", "read": "delivered",
    "undelivered": "failed", "failed": "failed", "canceled": "failed",
}


class TwilioProvider(Provider):
    """Sends through Twilio's Messages API (https://www.twilio.com)."""

    type = "twilio"
    max_batch = 1
    unicode = True
    alphanumeric_sender = True  # where Twilio and the destination country allow it
    max_parts = 10              # Body is capped at 1600 characters (10 GSM-7 parts)
    default_rate = 1.0          # a long code sends one segment per second

    def __init__(self, name: str, *, client: httpx.AsyncClient | None, account_sid: str,
                 auth_token: str, sender: str | None = None,
                 messaging_service_sid: str | None = None, url: str = DEFAULT_URL,
                 timeout: float = 10.0) -> None:
        super().__init__(name)
        self._client = client
        self.account_sid = account_sid
        self._token = auth_token
        self.sender = sender
        self.messaging_service_sid = messaging_service_sid
        self.url = url
        self.timeout = timeout

    @classmethod
    def from_config(
        cls, name: str, settings: Mapping[str, Any], client: httpx.AsyncClient | None = None
    ) -> TwilioProvider:
        """Validate the section; ``from`` or ``messaging_service_sid`` is required."""
        known = {"account_sid", "auth_token", "from", "messaging_service_sid", "url", "timeout"}
        s = Settings(name, settings, known)
        account_sid = _sid(s, "account_sid", "AC")
        has_service = settings.get("messaging_service_sid") is not None
        service = _sid(s, "messaging_service_sid", "MG") if has_service else None
        sender = s.str("from") if settings.get("from") is not None else None
        if sender is None and service is None:
            raise ConfigError(s.path("from"), "required unless messaging_service_sid is set")
        return cls(name, client=client, account_sid=account_sid, auth_token=s.str("auth_token"),
                   sender=sender, messaging_service_sid=service, url=s.url("url", DEFAULT_URL),
                   timeout=s.number("timeout", 10, minimum=0.1))

    async def send(self, sms: Sms) -> Receipt:
        """One Message resource for the single number of ``sms``."""
        if len(sms.to) != 1:
            raise ValueError(f"{len(sms.to)} numbers in one call, Twilio takes exactly one")
        (number,) = sms.to
        form = {"To": number, "Body": sms.text}
        sender = sms.sender or self.sender
        if sender:
            form["From"] = sender
        if self.messaging_service_sid:
            form["MessagingServiceSid"] = self.messaging_service_sid
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

    async def reconcile(self, sms: Sms, since: float, message_id: str | None) -> tuple[str, str | None] | None:
        """Settle an ambiguous send: by its sid, or else by listing messages to the number.

        ``GET .../Messages.json?To=&DateSent>=`` lists what Twilio created for the number
        since that day; a message with the same body created after ``since`` (minus a
        minute of clock skew) is ours. None when nothing matches: it was never created.
        """
        if message_id:
            return await super().reconcile(sms, since, message_id)
        day = datetime.fromtimestamp(since, timezone.utc).strftime("%Y-%m-%d")
        response = await self._call(
            "GET", "/Messages.json", params={"To": sms.to[0], "DateSent>": day, "PageSize": 50}
        )
        body = json_body(response, self.name)
        for message in body.get("messages", []) if isinstance(body, dict) else []:
            if not isinstance(message, dict) or message.get("body") != sms.text:
                continue
            created = _when(message.get("date_created"))
            if created is not None and created >= since - 60:
                state = _STATES.get(str(message.get("status", "")))
                if state:
                    return state, message.get("sid")
        return None

    async def check(self) -> str:
        """``GET .../Accounts/{sid}.json``: the credentials work and the account is active."""
        body = json_body(await self._call("GET", ".json"), self.name)
        state = body.get("status") if isinstance(body, dict) else None
        if state not in (None, "active"):
            raise PermanentError(f"account is {state}", provider=self.name, code=str(state))
        return f"account {self.account_sid} is {state or 'reachable'}"

    async def _call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """An authenticated request; a Twilio error answer becomes the matching exception."""
        if self._client is None:
            raise RuntimeError(f"provider {self.name!r} was built without an HTTP client")
        url = f"{self.url}/2010-04-01/Accounts/{self.account_sid}{path}"
        response = await request(self._client, self.name, method, url, timeout=self.timeout,
                                 auth=(self.account_sid, self._token), **kwargs)
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
        text = scrub(text, self._token)
        if code in _TRANSIENT:
            raise TransientError(text, provider=self.name, code=code)
        raise PermanentError(text, provider=self.name,
                             code=code if code is not None else response.status_code)


def _when(value: Any) -> float | None:
    """Epoch seconds from Twilio's RFC 2822 dates (``Sat, 21 Nov 2026 10:00:00 +0000``)."""
    if not isinstance(value, str):
        return None
    try:
        return parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError):
        return None


def _sid(s: Settings, key: str, prefix: str) -> str:
    value = s.str(key)
    if not re.fullmatch(prefix + r"[0-9a-fA-F]{32}", value):
        raise ConfigError(s.path(key), f"must be {prefix} followed by 32 hex digits")
    return value
