"""SMSPartner: JSON ``POST {url}/send`` with the API key in the body, up to 500 numbers.

Verified against SMSPartner's own documentation: "Single Send" (seed 003: fields, the
500-number limit, ``:br:``/``:euro:``, ``tag`` "up to 20 characters, no spaces, lowercase
only", the success answer, error codes 1/2/9/10/11); ``gamme`` 1 premium / 2 low cost,
premium when omitted (not in seed 003: SMSPartner's current send page, as reported by
issue 10's review of the official documentation); "Single Status"
(docpartner.dev, ``GET /v1/message-status?apiKey=&messageId=&phoneNumber=``, ``statut``
Delivered / Not delivered / Waiting, codes 1/2/3/4/10) and "Status by Tag"
(``GET /v1/bulk-status-by-tag?apiKey=&tag=``); "Credits" (``GET /v1/me?apiKey=`` ->
``credits: {creditSms, creditSmsECO, toSend, balance, currency}``), used by ``check()``.
Assumed: the by-tag answer has the shape of
"Status by Message" (``StatutResponse_List`` of ``phoneNumber``/``status``); a successful
by-tag answer without our number, or code 4, means SMSPartner never registered the SMS;
which HTTP status carries an error body (any status is read for its ``code``); 401/403
mean a refused key; a 503 is not documented as "not processed", so it stays ambiguous.
No refusal code for an opted-out recipient is documented (SMSPartner keeps its own STOP
list and drops those numbers silently).

Webhooks (``parse_callback``). Verified: SMSPartner's "Webhooks" page
(https://www.docpartner.dev/api/sms-partner/gestion-des-webhooks): a reply to a short-code
campaign is a JSON POST ``{"type": "response" | "stop", "phone_number", "text",
"message_id"}``; a reply to a rented long number is ``{"msisdn", "to", "messageId", "text",
"type": "text", "keyword", "message-timestamp"}``, one webhook per part for a long SMS
(``concat-ref``/``concat-part``/``concat-total``, each read as its own event); the send
fields ``urlResponse`` and ``urlDlr`` (single send page). Assumed, not verified (no page
describing what is posted to ``urlDlr`` was found): a delivery report carries the message
id (``msgId``, or ``messageId``/``message_id``), the number (``phoneNumber``, or
``phone_number``/``msisdn``), the status word of "Single Status" (``status`` or ``statut``:
Delivered, Not delivered, Waiting) and the ``tag`` we sent; Delivered is final success,
Not delivered final failure (``reason`` = the status word, or a ``reason``/``error`` field
when one is there), anything else intermediate. Also assumed: the short-code reply's
``message_id`` is the id of *our* SMS it answers (``in_reply_to``), not an id of the reply.
With ``callbacks`` set, each send carries ``urlDlr``/``urlResponse`` = the bridge's URLs,
unless ``dlr_url``/``response_url`` are configured (an explicit setting wins). Console:
nothing is needed per message; replies to sends made without ``urlResponse`` go to the
"URL de réception des réponses" of the account's API SMS settings, which may be set to the
bridge's inbound URL as well.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import httpx

from bridge.errors import AmbiguousError, PermanentError
from bridge.providers.base import (Callback, CallbackRequest, Capabilities, HttpSettings, ProviderBase,
                                   Receipt, Reconciled, Sms, or_none)
from bridge.providers.calls import as_cost, as_int, digits, json_body, post, request
from bridge.providers.webhooks import e164, first, require
from bridge.settings import BOOL, LINK, REQUIRED, SECRET, URL, setting

DEFAULT_URL = "https://api.smspartner.fr/v1"
TAG = re.compile(r"[a-z0-9_-]{1,20}")   # "up to 20 characters, no spaces, lowercase only"

_REFUSALS = {
    1: "API key required",
    2: "phone number required",
    3: "message id required",
    4: "message not found",
    9: "constraints not met",
    10: "invalid API key",
    # 11 is a definite "not accepted": nothing was sent, so routing may fail over to the
    # next provider on code=11 although the error is permanent *for this provider*.
    11: "insufficient credits",
}
#: SMSPartner's delivery ``statut`` -> the bridge's normalised state
_STATES = {"delivered": "delivered", "not delivered": "failed", "waiting": "sent"}
_LINE_BREAK = re.compile(r"\r\n|\r|\n")
#: delivery report status word -> ``Callback.state`` (assumed words, see the docstring)
_CALLBACK_STATES = {"delivered": "delivered", "not delivered": "undelivered",
                    "undelivered": "undelivered", "failed": "undelivered"}
#: ``type`` of a reply to a short-code campaign
_SHORT_CODE_REPLIES = ("response", "stop")


def encode_message(text: str) -> str:
    """The text with SMSPartner's placeholders: line breaks as ``:br:``, € as ``:euro:``.

    Its send API documents these two substitutions; a raw line break or euro sign is not
    promised to survive. Its note about escaping ``"`` is about hand-built JSON: httpx's
    ``json=`` already escapes quotes, so nothing else is touched.
    """
    return _LINE_BREAK.sub(":br:", text).replace("€", ":euro:")


def tag_for(reference: str) -> str | None:
    """The ``tag`` SMSPartner accepts for ``reference``, or None when it does not fit."""
    tag = reference.lower()
    return tag if TAG.fullmatch(tag) else None


@dataclass(frozen=True, kw_only=True)
class SmsPartnerSettings(HttpSettings):
    """``providers.<name>`` with ``type: smspartner``."""

    api_key: str = setting(REQUIRED, "SMSPartner API key", SECRET)
    url: str = setting(DEFAULT_URL, "base URL of the API", URL)
    sandbox: bool = setting(False, "sandbox=1: SMSPartner accepts but sends nothing", BOOL)
    stop_sms: bool = setting(False, "isStopSms=1: SMSPartner appends its STOP notice", BOOL)
    dlr_url: str | None = setting(None, "urlDlr: where SMSPartner posts delivery reports", LINK)
    response_url: str | None = setting(None, "urlResponse: where SMSPartner posts replies", LINK)


class SmsPartnerProvider(ProviderBase):
    """Sends through SMSPartner's HTTP API (https://www.smspartner.fr)."""

    type = "smspartner"
    Settings = SmsPartnerSettings
    # isUnicode=1; SMSPartner must enable Unicode on the account
    CAPABILITIES = Capabilities(max_numbers=500)

    async def send(self, sms: Sms) -> Receipt:
        """One ``/send`` call for every number of ``sms``; every number gets the message id."""
        if len(sms.to) > self.capabilities.max_numbers:
            raise ValueError(f"{len(sms.to)} numbers in one call, at most {self.capabilities.max_numbers}")
        url, payload = f"{self.settings.url}/send", self._payload(sms)
        response = await post(self.client, self.name, url, timeout=self.settings.timeout, json=payload)
        body = self._answer(response)
        if not (response.is_success and body.get("success") is True):
            raise self._refusal(body, response.status_code)
        message_id = body.get("message_id")
        return Receipt(
            message_ids={} if message_id is None else {n: str(message_id) for n in sms.to},
            cost=as_cost(body.get("cost")),
            raw=body,
        )

    async def reconcile(self, sms: Sms, since: float, message_id: str | None) -> Reconciled | None:
        """By ``tag`` (the reference) when it was sent, else by message id and number."""
        return await or_none(self._reconcile(sms, since, message_id))

    async def _reconcile(self, sms: Sms, since: float, message_id: str | None) -> Reconciled | None:
        tag = tag_for(sms.reference) if sms.reference else None
        if tag is not None:
            return await self._by_tag(tag, sms.to[0])
        if message_id:
            state = await self.status(message_id, sms.to[0])
            return (state, message_id) if state else None
        return None

    async def check(self) -> str:
        """``GET /v1/me``: the key works; premium and low-cost SMS credits left."""
        body, status = await self._lookup("me", {})
        credits = body.get("credits") if isinstance(body, dict) else None
        if not isinstance(credits, dict):
            return f"API key accepted (HTTP {status}), without a credits figure"
        premium, low_cost = as_int(credits.get("creditSms")), as_int(credits.get("creditSmsECO"))
        verdict = f"API key accepted; {premium} premium and {low_cost} low-cost SMS credits"
        if credits.get("balance") is not None:
            verdict += f", balance {credits['balance']} {credits.get('currency') or ''}".rstrip()
        return verdict

    def parse_callback(self, request: CallbackRequest) -> list[Callback]:
        """A reply (short code or long number) or a delivery report (see the docstring)."""
        fields = request.fields
        kind = (first(fields, "type") or "").lower()
        if kind in _SHORT_CODE_REPLIES:
            return [Callback(kind="inbound", number=e164(require(fields, "phone_number")),
                             text=str(fields.get("text") or ""), status=kind,
                             in_reply_to=first(fields, "message_id"))]
        if "text" in fields and first(fields, "msisdn"):
            return [Callback(kind="inbound", message_id=first(fields, "messageId"),
                             number=e164(fields["msisdn"]), to=e164(first(fields, "to")),
                             text=str(fields.get("text") or ""), status="received")]
        status = first(fields, "status", "statut")
        if status is None:
            raise ValueError("neither a reply (type, text) nor a delivery report (status)")
        state = _CALLBACK_STATES.get(status.lower())
        return [Callback(kind="delivery", message_id=require(fields, "msgId", "messageId", "message_id"),
                         number=e164(first(fields, "phoneNumber", "phone_number", "msisdn")),
                         reference=first(fields, "tag"), state=state, status=status,
                         reason=(first(fields, "reason", "error") or status) if state == "undelivered" else None)]

    async def status(self, message_id: str, number: str) -> str | None:
        """Delivery state of ``message_id`` at ``number``: delivered, sent, failed or None.

        SMSPartner keys statuses by message id *and* number (one id covers a whole batch).
        None when the message is unknown to SMSPartner or the answer is not understood.
        """
        params = {"messageId": message_id, "phoneNumber": number}
        body, status = await self._lookup("message-status", params)
        if body is None or body.get("success") is not True:
            return None  # 4: message not found (yet)
        return _STATES.get(str(body.get("statut", "")).strip().lower())

    async def _by_tag(self, tag: str, number: str) -> Reconciled | None:
        body, status = await self._lookup("bulk-status-by-tag", {"tag": tag})
        if body is None:
            return None
        if body.get("success") is not True:
            return ("not_found", None) if as_int(body.get("code")) == 4 else None
        entries = body.get("StatutResponse_List")
        if not isinstance(entries, list):
            return None
        for entry in entries:
            if isinstance(entry, dict) and digits(entry.get("phoneNumber")) == digits(number):
                state = _STATES.get(str(entry.get("status", entry.get("statut", ""))).strip().lower())
                found = entry.get("messageId", body.get("message_id"))
                return (state, None if found is None else str(found)) if state else None
        return "not_found", None

    async def _lookup(self, path: str, params: dict[str, str]) -> tuple[dict[str, Any] | None, int]:
        """A GET on a status endpoint: its JSON object, or None when not understood."""
        params = {"apiKey": self.settings.api_key, **params, "_format": "json"}
        response = await request(self.client, self.name, "GET", f"{self.settings.url}/{path}",
                                 timeout=self.settings.timeout, params=params)
        try:
            body = response.json()
        except ValueError:
            return None, response.status_code
        if not isinstance(body, dict):
            return None, response.status_code
        if response.status_code in (401, 403) or as_int(body.get("code")) in (1, 10):
            raise self._refusal(body, response.status_code)
        return body, response.status_code

    def _payload(self, sms: Sms) -> dict[str, Any]:
        s = self.settings
        payload: dict[str, Any] = {
            "apiKey": s.api_key,
            "phoneNumbers": ",".join(sms.to),
            "message": encode_message(sms.text),
            "gamme": 2 if sms.low_cost else 1,
            "_format": "json",
        }
        optional = {
            "sender": sms.sender,
            "tag": tag_for(sms.reference) if sms.reference else None,
            "isUnicode": 1 if sms.unicode else None,
            "sandbox": 1 if s.sandbox else None,
            "isStopSms": 1 if s.stop_sms else None,
            "urlDlr": s.dlr_url or (self.callbacks.dlr if self.callbacks else None),
            "urlResponse": s.response_url or (self.callbacks.inbound if self.callbacks else None),
        }
        payload.update({key: value for key, value in optional.items() if value is not None})
        return payload

    def _answer(self, response: httpx.Response) -> dict[str, Any]:
        """The JSON answer carrying ``success``, or the matching exception."""
        status = response.status_code
        if status in (401, 403):
            raise PermanentError(f"API key refused (HTTP {status})", provider=self.name, code=status)
        body = json_body(response, self.name)
        if isinstance(body, dict) and "success" in body:
            return body
        if response.is_success:  # accepted by the server, but we cannot tell what happened
            raise AmbiguousError(f"answer without 'success' (HTTP {status})", provider=self.name)
        raise PermanentError(f"refused (HTTP {status})", provider=self.name, code=status)

    def _refusal(self, body: Mapping[str, Any], status: int) -> PermanentError:
        code = as_int(body.get("code"))
        errors = body.get("errors")
        details = [
            e["message"] for e in (errors if isinstance(errors, list) else [])
            if isinstance(e, dict) and isinstance(e.get("message"), str)
        ]
        if not details and isinstance(body.get("message"), str):
            details = [body["message"]]
        if code is None:
            text = f"refused (HTTP {status})"
        else:
            text = f"code {code}: {_REFUSALS.get(code, 'refused')}"
        if details:
            text += " - " + "; ".join(details)
        # Never let the key out, even if the provider echoes it back.
        return PermanentError(self.scrub(text), provider=self.name,
                              code=code if code is not None else status)
