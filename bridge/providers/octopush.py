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
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import httpx

from bridge.errors import AmbiguousError, ConfigError, PermanentError
from bridge.providers.base import (
    Provider,
    Receipt,
    Settings,
    Sms,
    as_cost,
    as_int,
    json_body,
    post,
    request,
    scrub,
)

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


class OctopushProvider(Provider):
    """Sends through Octopush's v1 API (https://www.octopush.com), up to 500 numbers a call."""

    type = "octopush"
    max_batch = 500
    unicode = True
    alphanumeric_sender = True
    max_parts = 8          # 1224 characters = 8 x 153
    default_rate = 10.0

    def __init__(
        self,
        name: str,
        *,
        client: httpx.AsyncClient | None,
        login: str,
        api_key: str,
        url: str = DEFAULT_URL,
        timeout: float = 10.0,
        purpose: str = "alert",
        with_replies: bool = False,
        simulate: bool = False,
    ) -> None:
        super().__init__(name)
        self._client = client
        self.login = login
        self._api_key = api_key
        self.url = url
        self.timeout = timeout
        self.purpose = purpose
        self.with_replies = with_replies
        self.simulate = simulate

    @classmethod
    def from_config(
        cls, name: str, settings: Mapping[str, Any], client: httpx.AsyncClient | None = None
    ) -> OctopushProvider:
        """Validate the section; without ``client`` the provider can only be inspected."""
        known = {"login", "api_key", "url", "timeout", "purpose", "with_replies", "simulate"}
        s = Settings(name, settings, known)
        purpose = s.str("purpose", "alert")
        if purpose not in PURPOSES:
            raise ConfigError(s.path("purpose"), "must be 'alert' (transactional) or 'wholesale' (marketing)")
        return cls(
            name,
            client=client,
            login=s.str("login"),
            api_key=s.str("api_key"),
            url=s.url("url", DEFAULT_URL),
            timeout=s.number("timeout", 10, minimum=0.1),
            purpose=purpose,
            with_replies=s.bool("with_replies", False),
            simulate=s.bool("simulate", False),
        )

    async def send(self, sms: Sms) -> Receipt:
        """One campaign for every number of ``sms``; every number gets the SMS ticket."""
        if not 1 <= len(sms.to) <= self.max_batch:
            raise ValueError(f"{len(sms.to)} numbers in one call, 1 to {self.max_batch} allowed")
        if not 1 <= len(sms.text) <= MAX_LENGTH:
            text = f"text must be 1-{MAX_LENGTH} characters, not {len(sms.text)}"
            raise PermanentError(text, provider=self.name)
        payload: dict[str, Any] = {
            "recipients": [{"phone_number": number} for number in sms.to],
            "text": sms.text,
            "type": "sms_low_cost" if sms.low_cost else "sms_premium",
            "purpose": self.purpose,
            "with_replies": self.with_replies,
            "auto_optimize_text": False,
        }
        if sms.sender:
            payload["sender"] = sms.sender
        if self.simulate:
            payload["simulation_mode"] = True
        response = await post(
            self._http(), self.name, f"{self.url}/sms-campaign/send",
            timeout=self.timeout, json=payload, headers=self._auth(),
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
            self._http(), self.name, "GET", f"{self.url}/wallet/check-balance",
            timeout=self.timeout, headers=self._auth(),
        )
        body = self._answer(response)
        amount, unit = as_cost(body.get("amount")), body.get("unit")
        if amount is None:
            return "credentials accepted"
        return f"credentials accepted; balance {amount:g} {unit if isinstance(unit, str) else ''}".rstrip()

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            raise RuntimeError(f"provider {self.name!r} was built without an HTTP client")
        return self._client

    def _auth(self) -> dict[str, str]:
        return {"api-login": self.login, "api-key": self._api_key}

    def _answer(self, response: httpx.Response) -> dict[str, Any]:
        """The JSON object of a 2xx answer, or the matching exception."""
        status = response.status_code
        body = json_body(response, self.name)
        if response.is_success:
            if not isinstance(body, dict):
                raise AmbiguousError(f"answer is not a JSON object (HTTP {status})", provider=self.name)
            return body
        body = body if isinstance(body, dict) else {}
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
        raise PermanentError(scrub(text, self._api_key), provider=self.name, code=error_code)
