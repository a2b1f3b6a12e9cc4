"""Octopush API v1: JSON ``POST {url}/sms-campaign/send`` with ``api-login``/``api-key`` headers.

Verified (Octopush's documentation at dev.octopush.com / octopush.com "Send SMS", "Check SMS
balance", and the Octopush-SMS-API-PHP client):
  - base ``https://api.octopush.com/v1/public``; headers ``api-login`` (account e-mail) and
    ``api-key``; body ``recipients: [{"phone_number": "+33..."}]`` - "campaign (up to 500
    contacts)" -, ``text`` (1-1224 characters), ``type`` ``sms_premium``/``sms_low_cost``,
    ``purpose`` ``alert``/``wholesale``, optional ``sender`` (3-11 letters/digits),
    ``with_replies``, ``simulation_mode``, ``auto_optimize_text`` ("false": the text is sent as
    is, Unicode characters included, instead of being rewritten by Octopush's robot);
  - answer ``{"sms_ticket", "number_of_contacts", "total_cost", "number_of_sms_needed",
    "residual_credit"}``;
  - ``GET {url}/wallet/check-balance`` -> ``{"amount": 12.54, "unit": "euros"}``.
Assumed (no v1 error table found): errors are 4xx with a JSON ``code``/``message``; 401/403
mean refused credentials; every other 4xx is a refusal (PermanentError) described with the
legacy API's return codes when the code matches one (101 bad login, 104/105 no credit, 106
bad sender, 113/114 account blocked, 117 no valid number, 121/122 STOP mention missing);
the success status (any 2xx with ``sms_ticket``); ``default_rate`` (not documented).
``auto_optimize_text`` is always false: the bridge already chose and counted the characters.
``purpose`` follows the job's category (marketing -> ``wholesale``, else ``alert``) unless
set. No client reference field and no lookup by ticket are documented here, so ``unknown``
jobs cannot be reconciled; a 503 is not documented as "not processed": ambiguous.

Webhooks (``parse_callback``), verified against Octopush's "Callbacks" pages
(https://dev.octopush.com/en/sms-gateway-api-documentation/callbacks/, its
"acknowledge-receipt" page and https://dev.octopush.com/en/sms-gateway-api-documentation/inbounds/):
  - POSTs, read as JSON or form alike; a delivery report carries ``message_id`` (the
    ``sms_ticket`` of our send, shared by every number of a campaign), ``number``,
    ``status`` and ``delivery_date`` (and ``channel``: anything but ``sms`` is ignored);
    DELIVERED is final success; NOT_DELIVERED, NOT_ALLOWED, BAD_DESTINATION and
    BLACKLISTED_NUMBER final failures (``reason`` = that word); ACK, UNKNOWN_DELIVERY and
    UNDEFINED intermediate (no state);
  - an incoming SMS carries ``number`` (who wrote), ``text``, ``sim_card_number`` (the number
    it was sent to), ``reception_date`` and ``message_id``: the ticket of *our* SMS it
    answers, when Octopush found one (``in_reply_to``). It has no id of its own, so a
    webhook delivered twice cannot be told from two identical replies.
The send API takes no callback URL. Console: in the Octopush interface, menu "Callbacks",
set the acknowledgement-of-receipt URL to the bridge's DLR URL and the incoming-SMS URL to
its inbound URL (leave the opt-out one elsewhere: it is not read here); replies to a
campaign need ``with_replies: true``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx

from bridge.errors import AmbiguousError, PermanentError
from bridge.providers.base import Callback, CallbackRequest, Capabilities, HttpSettings, ProviderBase, Receipt, Sms
from bridge.providers.calls import answer_object, as_cost, as_int, post, request
from bridge.providers.webhooks import e164, first, require
from bridge.settings import BOOL, REQUIRED, SECRET, TEXT, URL, choice, setting

DEFAULT_URL = "https://api.octopush.com/v1/public"
MAX_LENGTH = 1224
PURPOSES = ("alert", "wholesale")

_REFUSALS = {
    101: "incorrect login details",
    104: "out of credit",
    105: "not enough credit (an order is awaiting validation)",
    106: "invalid sender (3-11 letters or digits)",
    107: "text missing",
    113: "account not validated",
    114: "account under investigation",
    117: "no valid phone number",
    119: "text too long for this type of SMS",
    121: "premium SMS must contain 'STOP au XXXXX'",
    122: "standard SMS must contain 'no PUB=STOP'",
}

#: acknowledgement ``status`` -> ``Callback.state`` (ACK, UNKNOWN_DELIVERY, UNDEFINED: none)
_CALLBACK_STATES = {
    "DELIVERED": "delivered",
    "NOT_DELIVERED": "undelivered", "NOT_ALLOWED": "undelivered",
    "BAD_DESTINATION": "undelivered", "BLACKLISTED_NUMBER": "undelivered",
}


@dataclass(frozen=True, kw_only=True)
class OctopushSettings(HttpSettings):
    """``providers.<name>`` with ``type: octopush``."""

    login: str = setting(REQUIRED, "Octopush account e-mail (api-login header)", TEXT)
    api_key: str = setting(REQUIRED, "Octopush API key (api-key header)", SECRET)
    url: str = setting(DEFAULT_URL, "base URL of the API", URL)
    purpose: str = setting("auto", "auto (from the job's category) | alert | wholesale",
                           choice("auto", *PURPOSES))
    with_replies: bool = setting(False, "with_replies: let recipients answer", BOOL)
    simulate: bool = setting(False, "simulation_mode: Octopush checks but sends nothing", BOOL)


class OctopushProvider(ProviderBase):
    """Sends through Octopush's v1 API (https://www.octopush.com), up to 500 numbers a call."""

    type = "octopush"
    Settings = OctopushSettings
    CAPABILITIES = Capabilities(max_numbers=500, max_parts=8)   # 1224 characters = 8 x 153

    async def send(self, sms: Sms) -> Receipt:
        """One campaign for every number of ``sms``; every number gets the SMS ticket."""
        most = self.capabilities.max_numbers
        if not 1 <= len(sms.to) <= most:
            raise ValueError(f"{len(sms.to)} numbers in one call, 1 to {most} allowed")
        if not 1 <= len(sms.text) <= MAX_LENGTH:
            text = f"text must be 1-{MAX_LENGTH} characters, not {len(sms.text)}"
            raise PermanentError(text, provider=self.name)
        payload: dict[str, Any] = {
            "recipients": [{"phone_number": number} for number in sms.to],
            "text": sms.text,
            "type": "sms_low_cost" if sms.low_cost else "sms_premium",
            "purpose": self.purpose(sms),
            "with_replies": self.settings.with_replies,
            "auto_optimize_text": False,
        }
        if sms.sender:
            payload["sender"] = sms.sender
        if self.settings.simulate:
            payload["simulation_mode"] = True
        response = await post(
            self.client, self.name, f"{self.settings.url}/sms-campaign/send",
            timeout=self.settings.timeout, json=payload, headers=self._auth(),
        )
        body = self._answer(response)
        ticket = body.get("sms_ticket")
        if ticket in (None, ""):  # accepted by the server, but we cannot tell what happened
            status = response.status_code
            raise AmbiguousError(f"answer without 'sms_ticket' (HTTP {status})", provider=self.name)
        cost = as_cost(body.get("total_cost"))
        return Receipt(message_ids={n: str(ticket) for n in sms.to}, cost=cost, raw=body)

    async def check(self) -> str:
        """``GET /wallet/check-balance``: the credentials work; the balance left."""
        response = await request(
            self.client, self.name, "GET", f"{self.settings.url}/wallet/check-balance",
            timeout=self.settings.timeout, headers=self._auth(),
        )
        body = self._answer(response)
        amount, unit = as_cost(body.get("amount")), body.get("unit")
        if amount is None:
            return "credentials accepted"
        return f"credentials accepted; balance {amount:g} {unit if isinstance(unit, str) else ''}".rstrip()

    def parse_callback(self, request: CallbackRequest) -> list[Callback]:
        """An acknowledgement of receipt (``status``) or an incoming SMS (``text``)."""
        fields = request.fields
        if (first(fields, "channel") or "sms").lower() != "sms":
            return []  # voice SMS, e-mail...: nothing the bridge sent
        if "text" in fields:
            return [Callback(kind="inbound", number=e164(require(fields, "number")),
                             text=str(fields.get("text") or ""), to=e164(first(fields, "sim_card_number")),
                             in_reply_to=first(fields, "message_id"), status="received")]
        status = first(fields, "status")
        if status is None:
            raise ValueError("neither an acknowledgement of receipt (status) nor an incoming SMS (text)")
        state = _CALLBACK_STATES.get(status.upper())
        return [Callback(kind="delivery", message_id=require(fields, "message_id"),
                         number=e164(first(fields, "number")), state=state, status=status,
                         reason=status if state == "undelivered" else None)]

    def purpose(self, sms: Sms) -> str:
        """``alert`` for transactional SMS, ``wholesale`` for marketing, unless configured."""
        if self.settings.purpose != "auto":
            return self.settings.purpose
        return "wholesale" if sms.category == "marketing" else "alert"

    def _auth(self) -> dict[str, str]:
        return {"api-login": self.settings.login, "api-key": self.settings.api_key}

    def _answer(self, response: httpx.Response) -> dict[str, Any]:
        """The JSON object of a 2xx answer, or the matching exception."""
        status = response.status_code
        body = answer_object(response, self.name)
        if response.is_success:
            return body
        code = as_int(body.get("code", body.get("error_code")))
        messages = [body[k] for k in ("message", "error", "description") if isinstance(body.get(k), str)]
        message = messages[0] if messages else ""
        if status in (401, 403):
            text = f"login or API key refused (HTTP {status})"
        elif code in _REFUSALS:
            text = f"code {code}: {_REFUSALS[code]} (HTTP {status})"
        else:
            text = f"refused (HTTP {status}" + (f", code {code})" if code is not None else ")")
        if message:
            text += f" - {message}"
        # Never let the key out, even if the provider echoes it back.
        error_code = code if code is not None and status not in (401, 403) else status
        raise PermanentError(self.scrub(text), provider=self.name, code=error_code)
