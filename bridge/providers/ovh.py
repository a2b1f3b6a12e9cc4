"""OVHcloud SMS API: signed JSON ``POST {url}/sms/{service_name}/jobs``.

Verified (OVHcloud "API SMS Cookbook" guide; the API schema ``eu.api.ovh.com/1.0/sms.json``
as generated into the ``@ovh-api/sms`` typings; the official ``ovh/python-ovh`` client):
  - every call carries ``X-Ovh-Application``, ``X-Ovh-Consumer``, ``X-Ovh-Timestamp`` and
    ``X-Ovh-Signature = "$1$" + sha1_hex(AS+"+"+CK+"+"+METHOD+"+"+full_url+"+"+body+"+"+ts)``,
    the timestamp being server time: local time plus the offset read once from the unsigned
    ``GET {url}/auth/time`` (a bare integer);
  - job fields ``receivers``, ``message``, ``sender``, ``senderForResponse``, ``noStopClause``,
    ``coding`` ("7bit"/"8bit"), ``charset`` ("UTF-8"), ``priority`` ("high"...); the answer
    ``sms.SmsSendingReport`` ``{ids, invalidReceivers, validReceivers, totalCreditsRemoved}``;
  - ``GET /sms/{service_name}`` answers ``sms.Account`` with ``creditsLeft``;
  - errors are ``{"errorCode", "httpCode", "message"}`` (INVALID_SIGNATURE is HTTP 400,
    INVALID_CREDENTIAL / NOT_GRANTED_CALL HTTP 403).
Assumed (not documented where we could read it):
  - ``coding: 8bit`` is OVH's UCS-2 (their own estimate calls the classes 7bits/unicode);
  - without a sender, ``senderForResponse: true`` makes OVH use its short number;
  - one number per call (``max_batch = 1``): the cookbook recommends a single receiver for
    on-the-fly sending and documents no cap, nor how ``ids`` line up with ``validReceivers``
    (we pair them in order when the lengths agree);
  - which statuses carry "no credit": any other 4xx is read as a definite refusal.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Mapping
from typing import Any

import httpx

from bridge.errors import AmbiguousError, PermanentError, TransientError
from bridge.providers.base import Provider, Receipt, Settings, Sms, json_body, request, scrub

DEFAULT_URL = "https://eu.api.ovh.com/1.0"


def signature(secret: str, consumer: str, method: str, url: str, body: str, timestamp: int) -> str:
    """OVH's request signature: ``$1$`` and the SHA-1 of the six fields joined by ``+``."""
    raw = "+".join([secret, consumer, method.upper(), url, body, str(timestamp)])
    return "$1$" + hashlib.sha1(raw.encode("utf-8")).hexdigest()


def _digits(number: Any) -> str:
    """``+33612...``, ``0033612...`` and ``33612...`` compare equal."""
    text = "".join(ch for ch in str(number) if ch.isdigit())
    return text[2:] if text.startswith("00") else text


class OvhProvider(Provider):
    """Sends through the OVHcloud SMS API (https://www.ovhcloud.com/fr/sms/)."""

    type = "ovh"
    max_batch = 1
    unicode = True
    alphanumeric_sender = True  # a sender validated in the OVH manager (11 characters)

    def __init__(self, name: str, *, client: httpx.AsyncClient | None, application_key: str,
                 application_secret: str, consumer_key: str, service_name: str,
                 url: str = DEFAULT_URL, timeout: float = 10.0, sender: str | None = None,
                 no_stop_clause: bool = False, clock: Callable[[], float] = time.time) -> None:
        super().__init__(name)
        self._client = client
        self.application_key = application_key
        self._secret = application_secret
        self._consumer = consumer_key
        self.service_name = service_name
        self.url = url
        self.timeout = timeout
        self.sender = sender
        self.no_stop_clause = no_stop_clause
        self.clock = clock
        self._offset: int | None = None  # server time - local time, read once

    @classmethod
    def from_config(
        cls, name: str, settings: Mapping[str, Any], client: httpx.AsyncClient | None = None
    ) -> OvhProvider:
        """Validate the section; without ``client`` the provider can only be inspected."""
        known = {"application_key", "application_secret", "consumer_key", "service_name", "url",
                 "timeout", "sender", "no_stop_clause"}
        s = Settings(name, settings, known)
        return cls(
            name, client=client,
            application_key=s.str("application_key"),
            application_secret=s.str("application_secret"),
            consumer_key=s.str("consumer_key"),
            service_name=s.str("service_name"),
            url=s.url("url", DEFAULT_URL),
            timeout=s.number("timeout", 10, minimum=0.1),
            sender=s.str("sender") if settings.get("sender") is not None else None,
            no_stop_clause=s.bool("no_stop_clause", False),
        )

    async def send(self, sms: Sms) -> Receipt:
        """One job for the numbers of ``sms``; numbers OVH calls invalid are refused."""
        if len(sms.to) > self.max_batch:
            raise ValueError(f"{len(sms.to)} numbers in one call, at most {self.max_batch}")
        sender = sms.sender or self.sender
        payload: dict[str, Any] = {
            "receivers": list(sms.to), "message": sms.text, "charset": "UTF-8",
            "coding": "8bit" if sms.unicode else "7bit", "priority": "high",
            "noStopClause": self.no_stop_clause, "senderForResponse": sender is None,
        }
        if sender:
            payload["sender"] = sender
        response = await self._call("POST", f"/sms/{self.service_name}/jobs", payload)
        body = json_body(response, self.name)
        if not (isinstance(body, dict) and isinstance(body.get("validReceivers"), list)):
            raise AmbiguousError(f"answer without validReceivers (HTTP {response.status_code})",
                                 provider=self.name)
        invalid = {_digits(n) for n in body.get("invalidReceivers") or []}
        refused = [n for n in sms.to if _digits(n) in invalid]
        valid = list(body["validReceivers"])
        if not valid:
            if refused:  # nothing went out: the next provider of the route may take them
                raise PermanentError(f"invalid receivers: {', '.join(refused)}",
                                     provider=self.name, code="invalidReceivers")
            raise AmbiguousError("answer lists no receiver at all", provider=self.name)
        ids = body.get("ids") if isinstance(body.get("ids"), list) else []
        ours = {_digits(n): n for n in sms.to}
        pairs = zip(valid, ids) if len(ids) == len(valid) else ()
        return Receipt(  # totalCreditsRemoved is in OVH credits, not money: left in raw
            message_ids={ours[_digits(n)]: str(i) for n, i in pairs if _digits(n) in ours},
            rejected={n: "invalid receiver (OVH invalidReceivers)" for n in refused},
            raw=body,
        )

    async def check(self) -> str:
        """``GET /sms/{service_name}``: the credits left on the SMS account."""
        body = json_body(await self._call("GET", f"/sms/{self.service_name}"), self.name)
        credits = body.get("creditsLeft") if isinstance(body, dict) else None
        if credits is None:
            return f"{self.service_name} answered, without creditsLeft"
        return f"{credits} credits left on {self.service_name}"

    async def _call(self, method: str, path: str, payload: Any = None) -> httpx.Response:
        """A signed request; a refusal (4xx) becomes ``PermanentError``."""
        client = self._http()
        url = str(httpx.URL(self.url + path))
        body = "" if payload is None else json.dumps(payload)
        now = int(self.clock()) + await self._server_offset(client)
        headers = {
            "X-Ovh-Application": self.application_key,
            "X-Ovh-Consumer": self._consumer,
            "X-Ovh-Timestamp": str(now),
            "X-Ovh-Signature": signature(self._secret, self._consumer, method, url, body, now),
        }
        if payload is not None:
            headers["Content-Type"] = "application/json; charset=utf-8"
        response = await request(client, self.name, method, url, timeout=self.timeout,
                                 headers=headers, content=body.encode("utf-8") if body else None)
        if response.is_success:
            return response
        raise self._refusal(response)

    async def _server_offset(self, client: httpx.AsyncClient) -> int:
        if self._offset is None:
            try:
                response = await request(client, self.name, "GET", f"{self.url}/auth/time",
                                         timeout=self.timeout)
            except AmbiguousError as exc:  # only the clock was asked: no SMS went out
                raise TransientError(f"server time: {exc}", provider=self.name) from None
            try:
                server = int(response.text.strip()) if response.is_success else None
            except ValueError:
                server = None
            if server is None:
                raise PermanentError(f"no server time at /auth/time (HTTP {response.status_code})",
                                     provider=self.name, code=response.status_code)
            self._offset = server - int(self.clock())
        return self._offset

    def _refusal(self, response: httpx.Response) -> PermanentError:
        status = response.status_code
        try:
            body = response.json()
        except ValueError:
            body = None
        body = body if isinstance(body, dict) else {}
        code = body.get("errorCode") if isinstance(body.get("errorCode"), str) else None
        if code == "INVALID_SIGNATURE":
            self._offset = None  # read the server clock again before the next call
        text = f"refused (HTTP {status}{', ' + code if code else ''})"
        if isinstance(body.get("message"), str) and body["message"]:
            text += f" - {body['message']}"
        text = scrub(text, self._secret, self._consumer, self.application_key)
        return PermanentError(text, provider=self.name, code=code or status)

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            raise RuntimeError(f"provider {self.name!r} was built without an HTTP client")
        return self._client
