"""Allmysms HTTP API (not Mail2SMS): JSON ``POST {url}/sms/send/`` with Basic ``login:apiKey``.

Verified (Symfony Notifier's AllMySms bridge and its tests, plus several independent client
integrations of ``api.allmysms.com/sms/send``):
  - HTTP Basic auth with the account login and API key; JSON body ``from`` (optional
    sender), ``to``, ``text``; optional ``simulate`` (also ``date``, ``alerting``,
    ``campaignName``, ``cliMsgId``, unused here);
  - success: HTTP 201 with ``{"code": 100, "description", "smsId", "invalidNumbers",
    "nbContacts", "nbSms", "balance", "cost"}``; other statuses carry ``{"code", "description"}``;
  - return codes 100 sent, 101 scheduled, 102-118 refusals (Allmysms HTTP API v9 list, the
    same numbers as the Mail2SMS statuses of seed 004).
Assumed (not documented where we could read it):
  - which HTTP status goes with which error code: we map by ``code`` whatever the status;
  - one number per call (``max_batch = 1``): ``/sms/send/bulk/`` takes a list, but its answer
    shape is unverified;
  - numbers are sent as ``33612121515`` (no ``+``), the form of Allmysms's own examples;
  - no low-cost flag exists in this API, so ``Sms.low_cost`` is ignored; no Unicode flag
    either, so ``unicode = False`` keeps UCS-2 texts on providers that document it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import httpx

from bridge.errors import AmbiguousError, PermanentError
from bridge.providers.base import Provider, Receipt, Settings, Sms, as_cost, as_int, json_body, post, scrub

DEFAULT_URL = "https://api.allmysms.com"

_ACCEPTED = {100: "sent", 101: "scheduled"}
_REFUSALS = {
    102: "no account matches this login and API key",
    # 103/104: definitely not sent - routing may fail over to another provider on them.
    103: "SMS credit exhausted",
    104: "insufficient credit",
    105: "empty request",
    106: "malformed request",
    107: "malformed request",
    108: "wrong client code",
    109: "malformed request",
    110: "empty message",
    111: "message too long",
    112: "malformed request",
    113: "some numbers invalid or not served",
    114: "no valid phone number",
    115: "invalid date",
    117: "link too long",
    118: "master account does not exist",
}


class AllmysmsProvider(Provider):
    """Sends through Allmysms's HTTP API (https://www.allmysms.com)."""

    type = "allmysms"
    max_batch = 1
    unicode = False
    alphanumeric_sender = True

    def __init__(
        self,
        name: str,
        *,
        client: httpx.AsyncClient | None,
        login: str,
        api_key: str,
        url: str = DEFAULT_URL,
        timeout: float = 10.0,
        simulate: bool = False,
    ) -> None:
        super().__init__(name)
        self._client = client
        self.login = login
        self._api_key = api_key
        self.url = url
        self.timeout = timeout
        self.simulate = simulate

    @classmethod
    def from_config(
        cls, name: str, settings: Mapping[str, Any], client: httpx.AsyncClient | None = None
    ) -> AllmysmsProvider:
        """Validate the section; without ``client`` the provider can only be inspected."""
        s = Settings(name, settings, {"login", "api_key", "url", "timeout", "simulate"})
        return cls(
            name,
            client=client,
            login=s.str("login"),
            api_key=s.str("api_key"),
            url=s.url("url", DEFAULT_URL),
            timeout=s.number("timeout", 10, minimum=0.1),
            simulate=s.bool("simulate", False),
        )

    async def send(self, sms: Sms) -> Receipt:
        """One ``/sms/send/`` call for the single number of ``sms``."""
        if self._client is None:
            raise RuntimeError(f"provider {self.name!r} was built without an HTTP client")
        if len(sms.to) != 1:
            raise ValueError(f"{len(sms.to)} numbers in one call, Allmysms takes exactly one")
        (number,) = sms.to
        payload: dict[str, Any] = {"to": number.removeprefix("+"), "text": sms.text}
        if sms.sender:
            payload["from"] = sms.sender
        if self.simulate:
            payload["simulate"] = 1
        response = await post(
            self._client,
            self.name,
            f"{self.url}/sms/send/",
            timeout=self.timeout,
            json=payload,
            auth=(self.login, self._api_key),
        )
        status = response.status_code
        if status in (401, 403):
            raise PermanentError(
                f"login or API key refused (HTTP {status})", provider=self.name, code=status
            )
        body = json_body(response, self.name)
        code = as_int(body.get("code")) if isinstance(body, dict) else None
        if code is None:
            if response.is_success:  # accepted by the server, but we cannot tell what happened
                raise AmbiguousError(f"answer without a code (HTTP {status})", provider=self.name)
            raise PermanentError(f"refused (HTTP {status})", provider=self.name, code=status)
        if code in _ACCEPTED and response.is_success:
            sms_id = body.get("smsId")
            return Receipt(
                message_ids={} if sms_id in (None, "") else {number: str(sms_id)},
                cost=as_cost(body.get("cost")),
                raw=body,
            )
        raise self._refusal(code, body.get("description"))

    def _refusal(self, code: int, description: Any) -> PermanentError:
        text = f"code {code}: {_REFUSALS.get(code, 'refused')}"
        if isinstance(description, str) and description:
            text += f" - {description}"
        # Never let the key out, even if the provider echoes it back.
        return PermanentError(scrub(text, self._api_key), provider=self.name, code=code)

