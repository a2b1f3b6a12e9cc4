"""Vonage (Nexmo) SMS API: form ``POST {url}/sms/json`` with the key and secret in the body.

Verified (Vonage's SMS API OpenAPI definition ``sms.yml`` v1.2.0 with its ``x-errors`` list;
the "Troubleshooting SMS" guide; the Developer API "Get Balance" reference):
  - form fields ``api_key``, ``api_secret``, ``from`` (number or alphanumeric), ``to``
    (digits only, ``\\d{7,15}``), ``text``, ``type`` (text/unicode), ``client-ref`` (100 chars);
  - the answer is HTTP 200 whatever happened: ``{"message-count", "messages": [{"status",
    "message-id", "to", "message-price", "remaining-balance", "error-text"}]}``, one entry
    per part of a long text; status 0 means "accepted for delivery", any other value means
    it was not queued;
  - statuses 1 Throttled, 2 Missing Parameters, 3 Invalid Parameters, 4 Invalid Credentials,
    5 Internal Error, 6 Invalid Message, 7 Number Barred, 8 Partner Account Barred,
    9 Partner Quota Violation (no credit), 10 Too Many Existing Binds ("back-off and retry"),
    11 Account Not Enabled For HTTP, 12 Message Too Long, 14 Invalid Signature, 15 Invalid
    Sender Address, 22 Invalid Network Code, 23 Invalid Callback Url, 29 Non-Whitelisted
    Destination, 32 Signature And API Secret Disallowed, 33 Number De-activated;
  - ``GET {url}/account/get-balance?api_key=&api_secret=`` -> ``{"value": EUR, "autoReload"}``.
Decided: 1 and 10 are transient; 5 (an error *inside* Vonage while processing) is ambiguous,
as an HTTP 500 would be: at-most-once beats a possible duplicate; a long text whose parts
got different statuses is ambiguous too (some parts are out). Assumed: the default account
throughput of 30 requests per second (``default_rate``) and the usual 8-part limit.
Status 7 (number barred: on Vonage's list of numbers that may not receive messages) is
``RecipientRefused``: no other provider may be tried. ``client-ref`` carries our reference,
but finding a message by it needs Vonage's separate Reports API, so ``unknown`` jobs are
not reconciled here; a 503 is not documented as "not processed": ambiguous.

Webhooks (``parse_callback``), verified against the same ``sms.yml`` (``DeliveryReceipt``,
``InboundMessage``, the send field ``callback``) and Vonage's "Delivery receipts" guide
(https://developer.vonage.com/messaging/sms/guides/delivery-receipts):
  - a delivery receipt carries ``messageId`` (the send answer's ``message-id``),
    ``msisdn`` (the recipient), ``to`` (our sender), ``status`` (delivered, expired,
    failed, rejected, accepted, buffered, unknown), ``err-code`` and ``client-ref``
    (our reference); delivered is final success, expired/failed/rejected final failure
    (``reason`` = ``err-code N``), accepted/buffered intermediate; ``unknown`` is read as
    "cannot tell" (no state), not as a failure;
  - an inbound SMS carries ``msisdn`` (who wrote), ``to`` (our virtual number),
    ``messageId`` (its own id), ``text``, ``type``; a long SMS arrives as one webhook per
    part (``concat-ref``/``concat-part``/``concat-total``), read as ``Callback.part`` (the
    bridge joins the parts before it forwards the text);
  - Vonage sends either as GET query, form POST or JSON POST, as set in the dashboard: all
    three arrive as ``fields``.
With ``callbacks`` set, each send asks for ``callback`` = the bridge's DLR URL (overriding
the dashboard's). Dashboard: the inbound URL is set per number (or as the account's default
"Inbound SMS webhook"); the account must use the SMS API for SMS, not the Messages API.
Signed webhooks (https://developer.vonage.com/getting-started/concepts/signing-messages):
with ``signature_secret`` set (the account's signature secret, and signed webhooks enabled
by Vonage), every webhook must carry ``sig``: the fields other than ``sig`` sorted by name,
each written ``&name=value`` with ``&`` and ``=`` in values replaced by ``_``, then hashed
with the dashboard's algorithm (``md5hash``: MD5 of that string followed by the secret;
``md5``, ``sha1``, ``sha256``, ``sha512``: HMAC keyed by the secret), hex, any case. A
missing or wrong ``sig`` is ``CallbackForbidden`` (403). Without it only the secret in the
URL path authenticates a webhook.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from typing import Any

import httpx

from bridge.errors import AmbiguousError, PermanentError, RecipientRefused, TransientError
from bridge.providers.base import Callback, CallbackForbidden, CallbackRequest, Capabilities, HttpSettings, ProviderBase, Receipt, Sms
from bridge.providers.calls import as_int, json_body, request
from bridge.providers.webhooks import e164, first, require
from bridge.settings import REQUIRED, SECRET, TEXT, URL, choice, setting

DEFAULT_URL = "https://rest.nexmo.com"

_TRANSIENT = {1: "throttled", 10: "too many existing binds"}
_AMBIGUOUS = {5: "internal error"}
_BARRED = {7}
_REFUSALS = {
    2: "missing parameters", 3: "invalid parameters", 4: "invalid credentials",
    6: "invalid message", 7: "number barred", 8: "partner account barred",
    # 9: definitely not sent - routing may fail over to another provider on it.
    9: "partner quota violation (no credit)", 11: "account not enabled for HTTP",
    12: "message too long", 14: "invalid signature", 15: "invalid sender address",
    22: "invalid network code", 23: "invalid callback URL", 29: "non-whitelisted destination",
    32: "signature and API secret disallowed", 33: "number de-activated",
}
#: delivery receipt ``status`` -> ``Callback.state`` (accepted, buffered, unknown: none)
_CALLBACK_STATES = {
    "delivered": "delivered",
    "expired": "undelivered", "failed": "undelivered", "rejected": "undelivered",
}


def _price(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


@dataclass(frozen=True, kw_only=True)
class VonageSettings(HttpSettings):
    """``providers.<name>`` with ``type: vonage``."""

    api_key: str = setting(REQUIRED, "Vonage API key", TEXT)
    api_secret: str = setting(REQUIRED, "Vonage API secret", SECRET)
    sender: str = setting(REQUIRED, "from: a number or an alphanumeric sender", TEXT, key="from")
    url: str = setting(DEFAULT_URL, "base URL of the API", URL)
    signature_secret: str | None = setting(None, "signature secret: webhooks must carry a valid sig", SECRET)
    signature_method: str = setting("md5hash", "the dashboard's signature algorithm",
                                    choice("md5hash", "md5", "sha1", "sha256", "sha512"))


def _part(fields: Any) -> tuple[str, int, int] | None:
    """(``concat-ref``, ``concat-part``, ``concat-total``) of one part of a long inbound SMS."""
    ref, number, total = (first(fields, f"concat-{n}") for n in ("ref", "part", "total"))
    if not (ref and number and total and number.isdigit() and total.isdigit()):
        return None
    index, count = int(number), int(total)
    if not 1 <= index <= count <= 255:
        raise ValueError(f"concat-part {index} of {count} is not a part of a long SMS")
    return (ref, index, count) if count > 1 else None


def signature(fields: dict[str, Any], secret: str, method: str = "md5hash") -> str:
    """Vonage's ``sig`` over ``fields`` (``sig`` itself left out), lowercase hex."""
    data = "".join(f"&{name}={str(fields[name]).replace('&', '_').replace('=', '_')}"
                   for name in sorted(fields) if name != "sig")
    if method == "md5hash":
        return hashlib.md5((data + secret).encode("utf-8")).hexdigest()
    return hmac.new(secret.encode("utf-8"), data.encode("utf-8"), method).hexdigest()


class VonageProvider(ProviderBase):
    """Sends through Vonage's SMS API (https://developer.vonage.com/messaging/sms)."""

    type = "vonage"
    Settings = VonageSettings
    # alphanumeric senders not in every country (Vonage "Global Messaging")
    CAPABILITIES = Capabilities(default_rate=30.0)

    async def send(self, sms: Sms) -> Receipt:
        """One ``/sms/json`` call; every part of the text must come back with status 0."""
        number = self.one_number(sms)
        s = self.settings
        form = {"api_key": s.api_key, "api_secret": s.api_secret, "from": sms.sender or s.sender, "to": number.removeprefix("+"), "text": sms.text}
        if sms.unicode:
            form["type"] = "unicode"
        if sms.reference:
            form["client-ref"] = sms.reference[:100]
        if self.callbacks is not None:
            form["callback"] = self.callbacks.dlr
        response = await self._get_or_post("POST", "/sms/json", data=form)
        body = json_body(response, self.name)
        parts = body.get("messages") if isinstance(body, dict) else None
        if not (isinstance(parts, list) and parts and all(isinstance(p, dict) for p in parts)):
            raise AmbiguousError(f"answer without messages (HTTP {response.status_code})",
                                 provider=self.name)
        statuses = [as_int(p.get("status")) for p in parts]
        failed = [(s, p) for s, p in zip(statuses, parts) if s != 0]
        if not failed:
            prices = [_price(p.get("message-price")) for p in parts]
            ids = [str(p["message-id"]) for p in parts if p.get("message-id")]
            return Receipt(message_ids={number: ids[0]} if ids else {},
                           cost=sum(prices) if None not in prices else None, raw=body)
        status, part = failed[0]
        text = f"status {status}: " + (_TRANSIENT.get(status) or _AMBIGUOUS.get(status)
                                       or _REFUSALS.get(status) or "refused")
        if isinstance(part.get("error-text"), str) and part["error-text"]:
            text += f" - {part['error-text']}"
        text = self.scrub(text)
        if len(failed) < len(parts):  # some parts were accepted and are on their way
            raise AmbiguousError(f"{len(parts) - len(failed)} of {len(parts)} parts accepted; "
                                 + text, provider=self.name, code=status)
        if status in _BARRED:
            raise RecipientRefused(text, provider=self.name, code=status, opted_out=False)
        if status in _TRANSIENT:
            raise TransientError(text, provider=self.name, code=status)
        if status in _AMBIGUOUS or status is None:
            raise AmbiguousError(text, provider=self.name, code=status)
        raise PermanentError(text, provider=self.name, code=status)

    def parse_callback(self, request: CallbackRequest) -> list[Callback]:
        """A delivery receipt (``status`` + ``messageId``) or an inbound SMS (``text``)."""
        fields = request.fields
        secret = self.settings.signature_secret
        if secret:
            given = first(fields, "sig")
            expected = signature(dict(fields), secret, self.settings.signature_method)
            if not given or not hmac.compare_digest(given.lower().encode(), expected.encode()):
                raise CallbackForbidden("sig missing or wrong" if given else "no sig")
        status = (first(fields, "status") or "").lower()
        if status:
            state = _CALLBACK_STATES.get(status)
            code = first(fields, "err-code")
            return [Callback(kind="delivery", message_id=require(fields, "messageId", "message-id"),
                             number=e164(first(fields, "msisdn")), reference=first(fields, "client-ref"),
                             state=state, status=status,
                             reason=f"err-code {code}" if state == "undelivered" and code else None)]
        if "text" in fields or first(fields, "type") in ("text", "unicode", "binary"):
            return [Callback(kind="inbound", message_id=require(fields, "messageId", "message-id"),
                             number=e164(require(fields, "msisdn")), to=e164(first(fields, "to")),
                             text=str(fields.get("text") or ""), status="received", part=_part(fields))]
        raise ValueError("neither a delivery receipt (status) nor an inbound SMS (text)")

    async def check(self) -> str:
        """``GET /account/get-balance``: the account balance in euros."""
        params = {"api_key": self.settings.api_key, "api_secret": self.settings.api_secret}
        response = await self._get_or_post("GET", "/account/get-balance", params=params)
        body = json_body(response, self.name)
        value = body.get("value") if isinstance(body, dict) else None
        return "answered, without a balance" if value is None else f"balance {value} EUR"

    async def _get_or_post(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """A request; a 4xx answer is a refusal (Vonage puts SMS errors in a 200 body)."""
        response = await request(self.client, self.name, method, self.settings.url + path,
                                 timeout=self.settings.timeout, **kwargs)
        if response.status_code >= 400:
            what = "API key or secret refused" if response.status_code in (401, 403) else "refused"
            raise PermanentError(f"{what} (HTTP {response.status_code})", provider=self.name,
                                 code=response.status_code)
        return response
