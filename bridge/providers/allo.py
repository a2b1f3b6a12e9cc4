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
documented, so ``unicode = False`` like Allmysms (UCS-2 texts go to providers that say so);
no client reference field and no status lookup are documented, so ``unknown`` jobs cannot
be reconciled; no error code for an opted-out recipient is documented; a 503 is not
documented as "not processed", so it stays ambiguous.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import httpx

from bridge.errors import AmbiguousError, PermanentError, TransientError
from bridge.providers.base import Capabilities, HttpSettings, ProviderBase, Receipt, Sms
from bridge.providers.calls import answer_object, post, request
from bridge.settings import REQUIRED, SECRET, URL, pattern, setting

DEFAULT_URL = "https://api.withallo.com"
MAX_LENGTH = 1000
SENDER_ID = re.compile(r"(?=.*[A-Za-z])[A-Za-z0-9]{3,11}")


@dataclass(frozen=True, kw_only=True)
class AlloSettings(HttpSettings):
    """``providers.<name>`` with ``type: allo``."""

    api_key: str = setting(REQUIRED, "Allo API key (sent as Authorization: Api-Key ...)", SECRET)
    url: str = setting(DEFAULT_URL, "base URL of the API", URL)
    sender_id: str | None = setting(None, "verified Sender ID used when a mail gives no from=",
                                    pattern(SENDER_ID.pattern, "3-11 letters or digits, at least one letter",
                                            "sender ID"))


class AlloProvider(ProviderBase):
    """Sends through Allo's API with a verified alphanumeric Sender ID (France only)."""

    type = "allo"
    Settings = AlloSettings
    # 6 x 153 GSM characters = 918 <= 1000; a 7th part could exceed it. Documented write
    # limit: 5 requests per second per key. The endpoint only takes +33 numbers.
    CAPABILITIES = Capabilities(unicode=False, max_parts=6, default_rate=5.0,
                                countries=frozenset({"FR"}))

    async def send(self, sms: Sms) -> Receipt:
        """One call for the single (French) number of ``sms``; checks what Allo would refuse."""
        number = self.one_number(sms)
        sender = sms.sender or self.settings.sender_id
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
            self.client, self.name, f"{self.settings.url}/v1/api/sms",
            timeout=self.settings.timeout, json=payload, headers=self._auth(),
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
            self.client, self.name, "GET", f"{self.settings.url}/v2/api/me",
            timeout=self.settings.timeout, headers=self._auth(),
        )
        body = self._answer(response)
        data = body.get("data") if isinstance(body.get("data"), dict) else {}
        scopes = data.get("scopes")
        if isinstance(scopes, list) and "SMS_SEND" not in scopes:
            raise PermanentError("API key accepted but lacks the SMS_SEND scope", provider=self.name)
        team = data.get("team", {}).get("name") if isinstance(data.get("team"), dict) else None
        return self.scrub("API key accepted" + (f" (team {team})" if team else ""))

    def _auth(self) -> dict[str, str]:
        return {"Authorization": f"Api-Key {self.settings.api_key}"}

    def _refused(self, text: str) -> PermanentError:
        return PermanentError(self.scrub(text), provider=self.name)

    def _answer(self, response: httpx.Response) -> dict[str, Any]:
        """The JSON object of a 2xx answer, or the matching exception."""
        status = response.status_code
        body = answer_object(response, self.name)
        if response.is_success:
            return body
        error = body.get("error") if isinstance(body.get("error"), dict) else body
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
        text = self.scrub(text)  # never let the key out, even if echoed back
        code = code if isinstance(code, str) and code else status
        if error.get("retryable") is True and status not in (401, 403):
            raise TransientError(text, provider=self.name, code=code)
        raise PermanentError(text, provider=self.name, code=code)
