"""SMSPartner: JSON ``POST {url}/send`` with the API key in the body, up to 500 numbers.

Verified against SMSPartner's own documentation: "Single Send" (seed 003: fields, the
500-number limit, ``:br:``/``:euro:``, the success answer, error codes 1/2/9/10/11) and
"Single Status" (docpartner.dev, ``GET /v1/message-status?apiKey=&messageId=&phoneNumber=``,
``statut`` Delivered / Not delivered / Waiting, codes 1/2/3/4/10). Not documented, so
handled defensively: which HTTP status carries an error body (any status is read for its
``code``), and 401/403 (treated as a refused key).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import httpx

from bridge.errors import AmbiguousError, PermanentError
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

DEFAULT_URL = "https://api.smspartner.fr/v1"

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


def encode_message(text: str) -> str:
    """The text with SMSPartner's placeholders: line breaks as ``:br:``, € as ``:euro:``.

    Its send API documents these two substitutions; a raw line break or euro sign is not
    promised to survive. Its note about escaping ``"`` is about hand-built JSON: httpx's
    ``json=`` already escapes quotes, so nothing else is touched.
    """
    return _LINE_BREAK.sub(":br:", text).replace("€", ":euro:")


class SmsPartnerProvider(Provider):
    """Sends through SMSPartner's HTTP API (https://www.smspartner.fr)."""

    type = "smspartner"
    max_batch = 500
    unicode = True  # isUnicode=1; SMSPartner must enable Unicode on the account
    alphanumeric_sender = True

    def __init__(
        self,
        name: str,
        *,
        client: httpx.AsyncClient | None,
        api_key: str,
        url: str = DEFAULT_URL,
        timeout: float = 10.0,
        sandbox: bool = False,
        stop_sms: bool = False,
        dlr_url: str | None = None,
        response_url: str | None = None,
    ) -> None:
        super().__init__(name)
        self._client = client
        self._api_key = api_key
        self.url = url
        self.timeout = timeout
        self.sandbox = sandbox
        self.stop_sms = stop_sms
        self.dlr_url = dlr_url
        self.response_url = response_url

    @classmethod
    def from_config(
        cls, name: str, settings: Mapping[str, Any], client: httpx.AsyncClient | None = None
    ) -> SmsPartnerProvider:
        """Validate the section; without ``client`` the provider can only be inspected."""
        known = {"api_key", "url", "timeout", "sandbox", "stop_sms", "dlr_url", "response_url"}
        s = Settings(name, settings, known)
        return cls(
            name,
            client=client,
            api_key=s.str("api_key"),
            url=s.url("url", DEFAULT_URL),
            timeout=s.number("timeout", 10, minimum=0.1),
            sandbox=s.bool("sandbox", False),
            stop_sms=s.bool("stop_sms", False),
            dlr_url=s.optional_url("dlr_url"),
            response_url=s.optional_url("response_url"),
        )

    async def send(self, sms: Sms) -> Receipt:
        """One ``/send`` call for every number of ``sms``; every number gets the message id."""
        if len(sms.to) > self.max_batch:
            raise ValueError(f"{len(sms.to)} numbers in one call, at most {self.max_batch}")
        url, payload = f"{self.url}/send", self._payload(sms)
        response = await post(self._http(), self.name, url, timeout=self.timeout, json=payload)
        body = self._answer(response)
        if not (response.is_success and body.get("success") is True):
            raise self._refusal(body, response.status_code)
        message_id = body.get("message_id")
        return Receipt(
            message_ids={} if message_id is None else {n: str(message_id) for n in sms.to},
            cost=as_cost(body.get("cost")),
            raw=body,
        )

    async def status(self, message_id: str, number: str) -> str | None:
        """Delivery state of ``message_id`` at ``number``: delivered, sent, failed or None.

        SMSPartner keys statuses by message id *and* number (one id covers a whole batch).
        None when the message is unknown to SMSPartner or the answer is not understood.
        """
        url = f"{self.url}/message-status"
        params = {"apiKey": self._api_key, "messageId": message_id, "phoneNumber": number,
                  "_format": "json"}
        response = await request(
            self._http(), self.name, "GET", url, timeout=self.timeout, params=params
        )
        try:
            body = response.json()
        except ValueError:
            return None
        if not isinstance(body, dict):
            return None
        if body.get("success") is not True:
            if response.status_code in (401, 403) or as_int(body.get("code")) in (1, 10):
                raise self._refusal(body, response.status_code)
            return None  # 4: message not found (yet)
        return _STATES.get(str(body.get("statut", "")).strip().lower())

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            raise RuntimeError(f"provider {self.name!r} was built without an HTTP client")
        return self._client

    def _payload(self, sms: Sms) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "apiKey": self._api_key,
            "phoneNumbers": ",".join(sms.to),
            "message": encode_message(sms.text),
            "_format": "json",
        }
        optional = {
            "sender": sms.sender,
            "isUnicode": 1 if sms.unicode else None,
            "sandbox": 1 if self.sandbox else None,
            "isStopSms": 1 if self.stop_sms else None,
            "urlDlr": self.dlr_url,
            "urlResponse": self.response_url,
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
        text = scrub(text, self._api_key)
        return PermanentError(text, provider=self.name, code=code if code is not None else status)

