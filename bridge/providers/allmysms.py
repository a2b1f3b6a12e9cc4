"""Allmysms HTTP API (not Mail2SMS): JSON ``POST {url}/sms/send/`` with Basic ``login:apiKey``.

Verified (Symfony Notifier's AllMySms bridge and its tests, plus several independent client
integrations of ``api.allmysms.com/sms/send``):
  - HTTP Basic auth with the account login and API key; JSON body ``from`` (optional
    sender), ``to``, ``text``; optional ``simulate`` (also ``date``, ``alerting``,
    ``campaignName``, ``cliMsgId``, unused here);
  - success: HTTP 201 with ``{"code": 100, "description", "smsId", "invalidNumbers",
    "nbContacts", "nbSms", "balance", "cost"}``; other statuses carry ``{"code", "description"}``;
  - ``cliMsgId``: the client's own message id, sent with our reference;
  - return codes 100 sent, 101 scheduled, 102-118 refusals (Allmysms HTTP API v9 list, the
    same numbers as the Mail2SMS statuses of seed 004).
Assumed (not documented where we could read it):
  - which HTTP status goes with which error code: we map by ``code`` whatever the status;
  - one number per call (``max_numbers = 1``): ``/sms/send/bulk/`` takes a list, but its answer
    shape is unverified;
  - numbers are sent as ``33612121515`` (no ``+``), the form of Allmysms's own examples;
  - no low-cost flag exists in this API, so ``Sms.low_cost`` is ignored; no Unicode flag
    either, so ``unicode = False`` keeps UCS-2 texts on providers that document it;
  - no status lookup by ``cliMsgId`` is documented: ``unknown`` jobs cannot be reconciled;
  - a 503 is not documented as "not processed": ambiguous. No code means "opted out".

Webhooks (``parse_callback``). Verified only that they exist: Allmysms's API page
(https://www.allmysms.com/api/api-http-envoi-sms-pro/) offers a real-time webhook for
delivery reports and replies; their fields were not found in any documentation we could
read. Taken from an independent integration (EsupPortail/esup-smsu-api, its Allmysms
"BackChannelAck"): a delivery report carries ``smsId`` (the send answer's ``smsId``),
``phoneNumber``, ``status``, ``statusText`` and ``receptionDate``, status ``1`` meaning
delivered and any other value a failure (``reason`` = ``status N`` and the statusText).
Assumed, not verified: ``cliMsgId`` is echoed when present (``reference``); a reply
carries ``phoneNumber`` and ``message`` (or ``text``), with the ``smsId`` of our SMS it
answers when there is one. The send API documents no callback URL per message. Console:
set the delivery-report and reply webhook URLs of the Allmysms account (customer area, API
settings) to the bridge's DLR and inbound URLs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bridge.errors import AmbiguousError, PermanentError
from bridge.providers.base import Callback, CallbackRequest, Capabilities, HttpSettings, ProviderBase, Receipt, Sms
from bridge.providers.calls import as_cost, as_int, json_body, post
from bridge.providers.webhooks import e164, first, require
from bridge.settings import BOOL, REQUIRED, SECRET, TEXT, URL, setting

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


@dataclass(frozen=True, kw_only=True)
class AllmysmsSettings(HttpSettings):
    """``providers.<name>`` with ``type: allmysms``."""

    login: str = setting(REQUIRED, "Allmysms account login (HTTP Basic user)", TEXT)
    api_key: str = setting(REQUIRED, "Allmysms API key (HTTP Basic password)", SECRET)
    url: str = setting(DEFAULT_URL, "base URL of the API", URL)
    simulate: bool = setting(False, "simulate=1: Allmysms checks the request but sends nothing", BOOL)


class AllmysmsProvider(ProviderBase):
    """Sends through Allmysms's HTTP API (https://www.allmysms.com)."""

    type = "allmysms"
    Settings = AllmysmsSettings
    CAPABILITIES = Capabilities(unicode=False)

    async def send(self, sms: Sms) -> Receipt:
        """One ``/sms/send/`` call for the single number of ``sms``."""
        number = self.one_number(sms)
        payload: dict[str, Any] = {"to": number.removeprefix("+"), "text": sms.text}
        if sms.sender:
            payload["from"] = sms.sender
        if sms.reference:
            payload["cliMsgId"] = sms.reference
        if self.settings.simulate:
            payload["simulate"] = 1
        response = await post(
            self.client,
            self.name,
            f"{self.settings.url}/sms/send/",
            timeout=self.settings.timeout,
            json=payload,
            auth=(self.settings.login, self.settings.api_key),
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

    def parse_callback(self, request: CallbackRequest) -> list[Callback]:
        """A reply (``message``/``text``) or a delivery report (``status``); shapes assumed."""
        fields = request.fields
        text = first(fields, "message", "text")
        if text is not None and first(fields, "status") is None:
            return [Callback(kind="inbound", number=e164(require(fields, "phoneNumber", "from")),
                             text=str(fields.get("message", fields.get("text")) or ""),
                             in_reply_to=first(fields, "smsId"), status="received")]
        status = first(fields, "status")
        if status is None:
            raise ValueError("neither a delivery report (status) nor a reply (message)")
        delivered = status == "1"
        reason = " - ".join(p for p in (f"status {status}", first(fields, "statusText")) if p)
        return [Callback(kind="delivery", message_id=require(fields, "smsId"),
                         number=e164(first(fields, "phoneNumber")), reference=first(fields, "cliMsgId"),
                         state="delivered" if delivered else "undelivered", status=status,
                         reason=None if delivered else reason)]

    def _refusal(self, code: int, description: Any) -> PermanentError:
        text = f"code {code}: {_REFUSALS.get(code, 'refused')}"
        if isinstance(description, str) and description:
            text += f" - {description}"
        # Never let the key out, even if the provider echoes it back.
        return PermanentError(self.scrub(text), provider=self.name, code=code)

