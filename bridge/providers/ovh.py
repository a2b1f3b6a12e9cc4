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
    INVALID_CREDENTIAL / NOT_GRANTED_CALL HTTP 403);
  - ``noStopClause``: false (OVH's default) marks the SMS commercial: with a custom sender
    OVH appends "STOP 36111" to the text (which may need one more billed part) and holds
    it outside the legal hours (nights, Sundays, holidays); true marks it non-commercial,
    sent at once and as written. ``no_stop_clause`` is therefore set per category:
    transactional true, marketing false (the bridge's own STOP mention then sits next to
    OVH's);
  - ``tag`` on a job, and ``GET /sms/{service}/outgoing?tag=`` listing the ids of the sent
    SMS carrying it (OVHcloud's "API SMS" guide on tracing campaigns): used to reconcile.
Assumed (not documented where we could read it):
  - ``coding: 8bit`` is OVH's UCS-2 (their own estimate calls the classes 7bits/unicode);
  - without a sender, ``senderForResponse: true`` makes OVH use its short number;
  - one number per call (``max_numbers = 1``): the cookbook recommends a single receiver for
    on-the-fly sending and documents no cap, nor how ``ids`` line up with ``validReceivers``
    (we pair them in order when the lengths agree);
  - which statuses carry "no credit": any other 4xx is read as a definite refusal;
  - an SMS not yet in ``outgoing`` may still wait in ``jobs`` (held for the night), so an
    empty ``outgoing`` answer is "cannot tell", never "not found";
  - a 503 is not documented as "not processed": ambiguous.

Webhooks (``parse_callback``). OVHcloud's current guides do not describe them; what is used
comes from OVH's former "CallBack" documentation as quoted in ovh/docs issue #1496
(https://github.com/ovh/docs/issues/1496) and the OVH community forum thread it cites, so
it is reported-but-unofficial: a delivery report is a GET whose query carries ``id`` (the
SMS id, as in the job answer's ``ids``), ``ptt`` (a detailed state code), ``date``,
``description`` (the DLR state: 0 pending, 1 success, 2 failed, 4 waiting, 8 buffered,
16 error) and ``descriptionDlr`` (its wording); a reply is a POST of ``id``, ``keyword``,
``message``, ``senderid`` (who wrote), ``shortcode`` (the number written to) and ``tag``
(the tag of our job, i.e. our reference). Read here: DLR 1 is delivered, 2 and 16
undelivered, others intermediate; without a DLR state, ptt 4 is delivered, ptt 5, 8, 20,
21, 23-29, 33, 39, 73, 74, 76, 202 are failures, the others (1-3 retrying/accepted, 6
unknown) intermediate; ``reason`` is ``ptt N``. Assumed: the number, when OVH adds one, is
in ``receiver`` or ``number``; which of ``description``/``descriptionDlr`` holds the digit
(either is read). The job API takes no callback URL. Console (or API): set the SMS
account's delivery callback ("Options générales" in the manager, ``callBack`` of
``PUT /sms/{service}``) to the bridge's DLR URL, and ``smsResponse`` to
``{responseType: cgi, cgiUrl: <the bridge's inbound URL>}``; replies only come back to SMS
sent from OVH's short number (``senderForResponse``, i.e. without a sender).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import httpx

from bridge.errors import AmbiguousError, PermanentError, TransientError
from bridge.providers.base import (Callback, CallbackRequest, Capabilities, HttpSettings, ProviderBase,
                                   Receipt, Reconciled, Sms, or_none)
from bridge.providers.calls import as_int, digits, json_body, request
from bridge.providers.webhooks import e164, first, require
from bridge.settings import REQUIRED, SECRET, TEXT, URL, Kind, setting

DEFAULT_URL = "https://eu.api.ovh.com/1.0"
#: DLR state of a delivery report -> ``Callback.state`` (0, 4, 8: none yet)
_DLR_STATES = {1: "delivered", 2: "undelivered", 16: "undelivered"}
#: ptt codes of a final failure (4 is delivered; 1-3 and 6 are not final)
_PTT_FAILED = frozenset({5, 8, 20, 21, 23, 24, 25, 26, 27, 28, 29, 33, 39, 73, 74, 76, 202})


def signature(secret: str, consumer: str, method: str, url: str, body: str, timestamp: int) -> str:
    """OVH's request signature: ``$1$`` and the SHA-1 of the six fields joined by ``+``."""
    raw = "+".join([secret, consumer, method.upper(), url, body, str(timestamp)])
    return "$1$" + hashlib.sha1(raw.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class StopClause:
    """``noStopClause`` per message category."""

    transactional: bool = True
    marketing: bool = False


def _no_stop_clause(value: Any) -> StopClause:
    """``true``/``false`` for every category, or ``{transactional: .., marketing: ..}``."""
    if isinstance(value, bool):
        return StopClause(value, value)
    if isinstance(value, Mapping) and set(value) <= {"transactional", "marketing"} \
            and all(isinstance(v, bool) for v in value.values()):
        return StopClause(**value)
    raise ValueError("must be true, false or {transactional: true|false, marketing: true|false}")


@dataclass(frozen=True, kw_only=True)
class OvhSettings(HttpSettings):
    """``providers.<name>`` with ``type: ovh``."""

    application_key: str = setting(REQUIRED, "OVH application key (X-Ovh-Application)", SECRET)
    application_secret: str = setting(REQUIRED, "OVH application secret (signs requests)", SECRET)
    consumer_key: str = setting(REQUIRED, "OVH consumer key (X-Ovh-Consumer)", SECRET)
    service_name: str = setting(REQUIRED, "the SMS account, e.g. sms-ab12345-1", TEXT)
    url: str = setting(DEFAULT_URL, "base URL of the API", URL)
    sender: str | None = setting(None, "sender validated in the OVH manager, used when a mail gives no from=", TEXT)
    no_stop_clause: StopClause = setting(
        StopClause(), "noStopClause per category (false: OVH adds STOP 36111 and holds SMS at night)",
        Kind("bool or {transactional, marketing}", _no_stop_clause),
        shown="{transactional: true, marketing: false}")


def dlr_state(dlr: int | None, ptt: int | None) -> str | None:
    """``delivered``/``undelivered``/None from OVH's DLR state, else from its ptt code."""
    if dlr is not None:
        return _DLR_STATES.get(dlr)
    if ptt == 4:
        return "delivered"
    return "undelivered" if ptt in _PTT_FAILED else None


class OvhProvider(ProviderBase):
    """Sends through the OVHcloud SMS API (https://www.ovhcloud.com/fr/sms/)."""

    type = "ovh"
    Settings = OvhSettings
    CAPABILITIES = Capabilities()   # a sender validated in the OVH manager (11 characters)

    def __init__(self, name: str, settings: OvhSettings, client: httpx.AsyncClient) -> None:
        super().__init__(name, settings, client)
        self.clock = time.time
        self._offset: int | None = None  # server time - local time, read once

    async def send(self, sms: Sms) -> Receipt:
        """One job for the numbers of ``sms``; numbers OVH calls invalid are refused."""
        if len(sms.to) > self.capabilities.max_numbers:
            raise ValueError(f"{len(sms.to)} numbers in one call, at most {self.capabilities.max_numbers}")
        sender = sms.sender or self.settings.sender
        payload: dict[str, Any] = {
            "receivers": list(sms.to), "message": sms.text, "charset": "UTF-8",
            "coding": "8bit" if sms.unicode else "7bit", "priority": "high",
            "noStopClause": self.no_stop_clause(sms), "senderForResponse": sender is None,
        }
        if sender:
            payload["sender"] = sender
        if sms.reference:
            payload["tag"] = sms.reference
        response = await self._call("POST", f"/sms/{self.settings.service_name}/jobs", payload)
        body = json_body(response, self.name)
        if not (isinstance(body, dict) and isinstance(body.get("validReceivers"), list)):
            raise AmbiguousError(f"answer without validReceivers (HTTP {response.status_code})",
                                 provider=self.name)
        invalid = {digits(n) for n in body.get("invalidReceivers") or []}
        refused = [n for n in sms.to if digits(n) in invalid]
        valid = list(body["validReceivers"])
        if not valid:
            if refused:  # nothing went out: the next provider of the route may take them
                raise PermanentError(f"invalid receivers: {', '.join(refused)}",
                                     provider=self.name, code="invalidReceivers")
            raise AmbiguousError("answer lists no receiver at all", provider=self.name)
        ids = body.get("ids") if isinstance(body.get("ids"), list) else []
        ours = {digits(n): n for n in sms.to}
        pairs = zip(valid, ids) if len(ids) == len(valid) else ()
        return Receipt(  # totalCreditsRemoved is in OVH credits, not money: left in raw
            message_ids={ours[digits(n)]: str(i) for n, i in pairs if digits(n) in ours},
            rejected={n: "invalid receiver (OVH invalidReceivers)" for n in refused},
            raw=body,
        )

    def no_stop_clause(self, sms: Sms) -> bool:
        """``noStopClause`` for the category of ``sms`` (see the module's docstring)."""
        clause = self.settings.no_stop_clause
        return clause.marketing if sms.category == "marketing" else clause.transactional

    async def reconcile(self, sms: Sms, since: float, message_id: str | None) -> Reconciled | None:
        """``GET /sms/{service}/outgoing?tag=<reference>``: an id there means it was sent."""
        return await or_none(self._reconcile(sms, since, message_id))

    async def _reconcile(self, sms: Sms, since: float, message_id: str | None) -> Reconciled | None:
        if not sms.reference:
            return None
        query = urlencode({"tag": sms.reference})
        response = await self._call("GET", f"/sms/{self.settings.service_name}/outgoing?{query}")
        ids = json_body(response, self.name)
        if isinstance(ids, list) and ids:
            return "sent", str(ids[0])
        return None  # maybe still waiting in /jobs (held for the night): cannot tell

    def parse_callback(self, request: CallbackRequest) -> list[Callback]:
        """A delivery report (``ptt``/``description``) or a reply (``message``, ``senderid``)."""
        fields = request.fields
        if "message" in fields and first(fields, "senderid"):
            return [Callback(kind="inbound", message_id=first(fields, "id"), number=e164(fields["senderid"]),
                             to=e164(first(fields, "shortcode")), text=str(fields.get("message") or ""),
                             reference=first(fields, "tag"), status="received")]
        dlr = next((as_int(v) for v in (first(fields, "dlr"), first(fields, "description"),
                                        first(fields, "descriptionDlr")) if as_int(v) is not None), None)
        ptt = as_int(first(fields, "ptt"))
        if dlr is None and ptt is None:
            raise ValueError("neither a delivery report (ptt, description) nor a reply (message, senderid)")
        state = dlr_state(dlr, ptt)
        status = " ".join(f"{name} {code}" for name, code in (("dlr", dlr), ("ptt", ptt)) if code is not None)
        reason = f"ptt {ptt}" if ptt is not None else first(fields, "descriptionDlr") or f"dlr {dlr}"
        return [Callback(kind="delivery", message_id=require(fields, "id"),
                         number=e164(first(fields, "receiver", "number")), reference=first(fields, "tag"),
                         state=state, status=status, reason=reason if state == "undelivered" else None)]

    async def check(self) -> str:
        """``GET /sms/{service_name}``: the credits left on the SMS account."""
        service = self.settings.service_name
        body = json_body(await self._call("GET", f"/sms/{service}"), self.name)
        credits = body.get("creditsLeft") if isinstance(body, dict) else None
        if credits is None:
            return f"{service} answered, without creditsLeft"
        return f"{credits} credits left on {service}"

    async def _call(self, method: str, path: str, payload: Any = None) -> httpx.Response:
        """A signed request; a refusal (4xx) becomes ``PermanentError``."""
        client = self.client
        url = str(httpx.URL(self.settings.url + path))
        body = "" if payload is None else json.dumps(payload)
        now = int(self.clock()) + await self._server_offset(client)
        headers = {
            "X-Ovh-Application": self.settings.application_key,
            "X-Ovh-Consumer": self.settings.consumer_key,
            "X-Ovh-Timestamp": str(now),
            "X-Ovh-Signature": signature(self.settings.application_secret, self.settings.consumer_key,
                                         method, url, body, now),
        }
        if payload is not None:
            headers["Content-Type"] = "application/json; charset=utf-8"
        response = await request(client, self.name, method, url, timeout=self.settings.timeout,
                                 headers=headers, content=body.encode("utf-8") if body else None)
        if response.is_success:
            return response
        raise self._refusal(response)

    async def _server_offset(self, client: httpx.AsyncClient) -> int:
        if self._offset is None:
            try:
                response = await request(client, self.name, "GET", f"{self.settings.url}/auth/time",
                                         timeout=self.settings.timeout)
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
        text = self.scrub(text)
        return PermanentError(text, provider=self.name, code=code or status)
