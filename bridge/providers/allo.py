"""Allo (withallo.com) "Send SMS (France)": JSON ``POST {url}/v1/api/sms``, one number per call.

Verified against Allo's own documentation (help.withallo.com):
  - seed 000 "Send SMS (France)": ``POST https://api.withallo.com/v1/api/sms`` (the ``#france``
    of the page is an anchor, not part of the path), JSON ``sender_id`` / ``to`` (E.164, must
    start with +33) / ``message`` (1-1000 characters); success ``{"data": {"from_number",
    "sender_id", "to_number", "type", "content", "start_date"}}`` - no message id; French sender
    IDs are 3-11 letters/digits with at least one letter and must be verified by Allo;
  - API guides: ``Authorization: Api-Key <key>`` ("Api-Key, not Bearer"); errors are
    ``{"error": {"type", "code", "message", "retryable", ...}}`` (older pages show
    ``{"code", "details"}``; both are read); 401 API_KEY_INVALID/REVOKED/UNAUTHORIZED, 403
    API_KEY_INSUFFICIENT_SCOPE/TRIAL_NOT_ALLOWED/FORBIDDEN, 400 validation, 429 with
    ``Retry-After``; write requests are limited to 5 per second per key;
  - ``GET /v2/api/me`` needs no scope and lists the key's scopes: used by ``check()``.
Assumed: the HTTP status of a success (any 2xx carrying ``data`` is accepted); a 4xx body
with ``retryable: true`` means "not accepted, try later" (TransientError); no Unicode flag is
documented, so ``unicode = False`` like Allmysms (UCS-2 texts go to providers that say so).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import httpx

from bridge.errors import AmbiguousError, ConfigError, PermanentError, TransientError
from bridge.providers.base import Provider, Receipt, Settings, Sms, json_body, post, request, scrub

DEFAULT_URL = "https://api.withallo.com"
MAX_LENGTH = 1000
SENDER_ID = re.compile(r"(?=.*[A-Za-z])[A-Za-z0-9]{3,11}")


class AlloProvider(Provider):
    """Sends through Allo's API with a verified alphanumeric Sender ID (France only)."""

    type = "allo"
    max_batch = 1
    unicode = False
    alphanumeric_sender = True
    max_parts = 6          # 6 x 153 GSM characters = 918 <= 1000; a 7th part could exceed it
    default_rate = 5.0     # documented write limit: 5 requests per second per key

    def __init__(
        self,
        name: str,
        *,
        client: httpx.AsyncClient | None,
        api_key: str,
        url: str = DEFAULT_URL,
        timeout: float = 10.0,
        sender_id: str | None = None,
    ) -> None:
        super().__init__(name)
        self._client = client
        self._api_key = api_key
        self.url = url
        self.timeout = timeout
        self.sender_id = sender_id

    @classmethod
    def from_config(
        cls, name: str, settings: Mapping[str, Any], client: httpx.AsyncClient | None = None
    ) -> AlloProvider:
        """Validate the section; without ``client`` the provider can only be inspected."""
        s = Settings(name, settings, {"api_key", "url", "timeout", "sender_id"})
        sender_id = None
        if settings.get("sender_id") is not None:
            sender_id = s.str("sender_id")
            if not SENDER_ID.fullmatch(sender_id):
                raise ConfigError(s.path("sender_id"), "3-11 letters or digits, at least one letter")
        return cls(
            name,
            client=client,
            api_key=s.str("api_key"),
            url=s.url("url", DEFAULT_URL),
            timeout=s.number("timeout", 10, minimum=0.1),
            sender_id=sender_id,
        )

    async def send(self, sms: Sms) -> Receipt:
        """One call for the single (French) number of ``sms``; checks what Allo would refuse."""
        if len(sms.to) != 1:
            raise ValueError(f"{len(sms.to)} numbers in one call, Allo takes exactly one")
        (number,) = sms.to
        sender = sms.sender or self.sender_id
        if not number.startswith("+33"):
            raise self._refused("this endpoint only sends to French numbers (+33)")
        if not sender:
            raise self._refused(f"no sender ID: set providers.{self.name}.sender_id")
        if not SENDER_ID.fullmatch(sender):
            raise self._refused(f"sender {sender!r} is not 3-11 letters/digits with a letter")
        if not 1 <= len(sms.text) <= MAX_LENGTH:
            raise self._refused(f"message must be 1-{MAX_LENGTH} characters, not {len(sms.text)}")
        payload = {"sender_id": sender, "to": number, "message": sms.text}
        response = await post(
            self._http(), self.name, f"{self.url}/v1/api/sms",
            timeout=self.timeout, json=payload, headers=self._auth(),
        )
        body = self._answer(response)
        data = body.get("data")
        if not isinstance(data, dict):  # accepted by the server, but we cannot tell what happened
            raise AmbiguousError(f"answer without 'data' (HTTP {response.status_code})", provider=self.name)
        sms_id = data.get("id")
        return Receipt(message_ids={} if sms_id in (None, "") else {number: str(sms_id)}, raw=body)

    async def check(self) -> str:
        """``GET /v2/api/me``: the key works and carries the SMS_SEND scope."""
        response = await request(
            self._http(), self.name, "GET", f"{self.url}/v2/api/me",
            timeout=self.timeout, headers=self._auth(),
        )
        body = self._answer(response)
        data = body.get("data") if isinstance(body.get("data"), dict) else {}
        scopes = data.get("scopes")
        if isinstance(scopes, list) and "SMS_SEND" not in scopes:
            raise PermanentError("API key accepted but lacks the SMS_SEND scope", provider=self.name)
        team = data.get("team", {}).get("name") if isinstance(data.get("team"), dict) else None
        return scrub("API key accepted" + (f" (team {team})" if team else ""), self._api_key)

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            raise RuntimeError(f"provider {self.name!r} was built without an HTTP client")
        return self._client

    def _auth(self) -> dict[str, str]:
        return {"Authorization": f"Api-Key {self._api_key}"}

    def _refused(self, text: str) -> PermanentError:
        return PermanentError(scrub(text, self._api_key), provider=self.name)

    def _answer(self, response: httpx.Response) -> dict[str, Any]:
        """The JSON object of a 2xx answer, or the matching exception."""
        status = response.status_code
        body = json_body(response, self.name)
        if response.is_success:
            if not isinstance(body, dict):
                raise AmbiguousError(f"answer is not a JSON object (HTTP {status})", provider=self.name)
            return body
        error = body.get("error") if isinstance(body, dict) else None
        error = error if isinstance(error, dict) else body if isinstance(body, dict) else {}
        code, message = error.get("code"), error.get("message")
        details = error.get("details") or error.get("errors")
        texts = [message] if isinstance(message, str) and message else []
        for detail in details if isinstance(details, list) else []:
            if isinstance(detail, dict) and isinstance(detail.get("message"), str):
                texts.append(detail["message"])
        what = "API key refused" if status == 401 else "not allowed" if status == 403 else "refused"
        text = f"{what} (HTTP {status}" + (f", {code})" if isinstance(code, str) else ")")
        if texts:
            text += " - " + "; ".join(texts)
        text = scrub(text, self._api_key)  # never let the key out, even if echoed back
        code = code if isinstance(code, str) and code else status
        if error.get("retryable") is True and status not in (401, 403):
            raise TransientError(text, provider=self.name, code=code)
        raise PermanentError(text, provider=self.name, code=code)
