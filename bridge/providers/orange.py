"""Orange SMS API (OneAPI-style, OAuth2): ``POST {url}/smsmessaging/v1/outbound/{sender}/requests``.

Coverage, honestly: the OAuth "SMS API" this module targets is documented by Orange for its
Middle East & Africa countries (the sender is a number of one of those contracts); nothing
in Orange's developer documentation shows it delivering to French (+33) numbers, so a send
to France through it will most likely be refused on every call. Seed 002 describes a
different, *legacy* REST-RPC API (sendSMS, credits; a defunct beta) that did serve France.
The provider therefore refuses French numbers (routing skips it, and ``check-config``
refuses an account that could route France through it) unless ``allow_france: true`` says
the operator's Orange contract covers France. Verified (Orange developer portal "getting started" pages for the SMS APIs, the
portal's "API error handling" guide, Symfony Notifier's OrangeSms bridge):
  - token: ``POST https://api.orange.com/oauth/v3/token``, HTTP Basic ``client_id:client_secret``,
    form ``grant_type=client_credentials`` -> ``{"token_type": "Bearer", "access_token",
    "expires_in": "3600"}`` (a *string* in Orange's examples); a token lasts one hour;
  - send: Bearer token, URL-encoded ``tel:+<sender>`` in the path, JSON
    ``{"outboundSMSMessageRequest": {"address", "senderAddress", "outboundSMSTextMessage":
    {"message"}, "senderName"?}}`` -> HTTP 201 echoing it with a ``resourceURL``;
  - errors: ``{"requestError": {"serviceException"|"policyException": {"messageId", "text",
    "variables"}}}``; gateway 401 codes 40 missing / 41 invalid / 42 expired credentials;
  - ``GET {url}/sms/admin/v1/contracts`` lists the bundles and their ``availableUnits``.
Assumed (OneAPI meanings; Orange's own table not found): SVC0001 generic service error ->
TransientError; SVC0002/0003 invalid input, SVC0004 no valid address, SVC0005, SVC0280 too long,
POL* policy (no units left, expired contract, unregistered sender name, too many addresses) and
unknown ids -> PermanentError. Unicode and concatenated texts accepted (defaults kept; a refusal
is SVC0280 -> PermanentError, routing moves on); ~5 SMS/s. A token call sends no SMS: a 4xx
there is a PermanentError (credentials, ``token_url``), anything else a TransientError.
OneAPI's ``clientCorrelator`` is not shown in Orange's examples, so no reference is sent and
``unknown`` jobs cannot be reconciled; a 503 is not documented as "not processed":
ambiguous. No policy code for an opted-out recipient is documented.
"""

from __future__ import annotations

import asyncio
import re
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx

from bridge.errors import AmbiguousError, PermanentError, ProviderError, TransientError
from bridge.providers.base import Capabilities, HttpSettings, ProviderBase, Receipt, Sms
from bridge.providers.calls import as_int, json_body, request
from bridge.settings import BOOL, REQUIRED, SECRET, TEXT, URL, pattern, setting

DEFAULT_URL = "https://api.orange.com"
DEFAULT_TOKEN_URL = "https://api.orange.com/oauth/v3/token"
REFRESH_EARLY = 60.0   # seconds before expiry a cached token is renewed
SENDER = re.compile(r"\+[1-9][0-9]{3,14}")
_TRANSIENT_IDS = {"SVC0001"}


COVERAGE = ("Orange's OAuth SMS API is documented for its Middle East & Africa countries, "
            "not for France (+33)")


@dataclass(frozen=True, kw_only=True)
class OrangeSettings(HttpSettings):
    """``providers.<name>`` with ``type: orange``."""

    client_id: str = setting(REQUIRED, "OAuth2 client id of the Orange developer app", TEXT)
    client_secret: str = setting(REQUIRED, "OAuth2 client secret", SECRET)
    sender: str = setting(REQUIRED, "the contract's sender number, +E.164",
                          pattern(SENDER.pattern, "an international number like +33700000000", "+E.164"))
    sender_name: str | None = setting(None, "registered sender name used when a mail gives no from=", TEXT)
    url: str = setting(DEFAULT_URL, "base URL of the API", URL)
    token_url: str = setting(DEFAULT_TOKEN_URL, "OAuth2 token endpoint", URL)
    allow_france: bool = setting(False, "true only if your Orange contract delivers to +33 numbers", BOOL)


class OrangeProvider(ProviderBase):
    """Sends through Orange's SMS API with a client-credentials token, cached until expiry."""

    type = "orange"
    Settings = OrangeSettings
    # ``senderName``, once registered with Orange
    CAPABILITIES = Capabilities(default_rate=5.0)

    def __init__(self, name: str, settings: OrangeSettings, client: httpx.AsyncClient) -> None:
        super().__init__(name, settings, client)
        self.clock = time.monotonic
        self._token: str | None = None
        self._renew_at = 0.0
        self._lock = asyncio.Lock()

    @classmethod
    def capabilities_for(cls, settings: OrangeSettings) -> Capabilities:
        """France is left out unless ``allow_france`` (see the module's docstring)."""
        if settings.allow_france:
            return cls.CAPABILITIES
        return Capabilities(default_rate=5.0, excluded=frozenset({"FR"}))

    async def send(self, sms: Sms) -> Receipt:
        """One call for the single number of ``sms``; the receipt holds the request's id."""
        number = self.one_number(sms)
        request_body: dict[str, Any] = {
            "address": f"tel:{number}",
            "senderAddress": f"tel:{self.settings.sender}",
            "outboundSMSTextMessage": {"message": sms.text},
        }
        if sms.sender or self.settings.sender_name:
            request_body["senderName"] = sms.sender or self.settings.sender_name
        sender = quote("tel:" + self.settings.sender, safe="")
        url = f"{self.settings.url}/smsmessaging/v1/outbound/{sender}/requests"
        response = await self._authorized("POST", url, json={"outboundSMSMessageRequest": request_body})
        status = response.status_code
        body = json_body(response, self.name)
        if response.is_success:
            accepted = body.get("outboundSMSMessageRequest") if isinstance(body, dict) else None
            if not isinstance(accepted, dict):
                raise AmbiguousError(f"answer without the request (HTTP {status})", provider=self.name)
            resource = accepted.get("resourceURL")
            request_id = resource.rstrip("/").rsplit("/", 1)[-1] if isinstance(resource, str) else ""
            return Receipt(message_ids={number: request_id} if request_id else {}, raw=body)
        raise self._refusal(body, status)

    async def check(self) -> str:
        """A fresh token proves the credentials; the contracts list tells the units left.

        The verdict also says where this API delivers (see the module's docstring).
        """
        verdict = await self._units()
        if self.settings.allow_france:
            return f"{verdict}; France allowed by allow_france (check your contract)"
        return f"{verdict}; {COVERAGE}: French numbers are not routed here"

    async def _units(self) -> str:
        await self._access_token(renew=True)
        response = await self._authorized("GET", f"{self.settings.url}/sms/admin/v1/contracts")
        if not response.is_success:
            return f"credentials accepted; contracts not readable (HTTP {response.status_code})"
        try:
            units = [u for u in _find(response.json(), "availableUnits") if as_int(u) is not None]
        except ValueError:
            units = []
        if not units:
            return "credentials accepted; no SMS bundle listed"
        total = sum(as_int(u) or 0 for u in units)
        return f"credentials accepted; {total} SMS units left in {len(units)} bundle(s)"

    async def _authorized(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        """The call with a Bearer token; on HTTP 401 one fresh token and one retry."""
        for attempt in (1, 2):
            token = await self._access_token(renew=attempt == 2)
            response = await request(
                self.client, self.name, method, url, timeout=self.settings.timeout,
                headers={"Authorization": f"Bearer {token}", "Accept": "application/json"}, **kwargs,
            )
            if response.status_code != 401:
                return response
        raise PermanentError("token refused twice (HTTP 401)", provider=self.name, code=401)

    async def _access_token(self, renew: bool = False) -> str:
        """The cached token, or a new one (``renew``, expired, or expiring within 60 s)."""
        async with self._lock:
            if self._token and not renew and self.clock() < self._renew_at:
                return self._token
            self._token = None
            try:
                # a token call never sends an SMS: even a 503 is a definite "not now"
                response = await request(
                    self.client, self.name, "POST", self.settings.token_url,
                    timeout=self.settings.timeout, definite_503=True,
                    auth=(self.settings.client_id, self.settings.client_secret),
                    data={"grant_type": "client_credentials"}, headers={"Accept": "application/json"},
                )
            except AmbiguousError as exc:  # a token call sends no SMS: nothing went out
                raise TransientError(f"token: {exc}", provider=self.name, code=exc.code) from None
            status = response.status_code
            if 400 <= status < 500:
                what = "client_id/client_secret" if status in (400, 401, 403) else "token endpoint"
                raise PermanentError(f"{what} refused (HTTP {status})", provider=self.name, code=status)
            try:
                body = response.json()
            except ValueError:
                body = None
            token = body.get("access_token") if isinstance(body, dict) else None
            if not (response.is_success and isinstance(token, str) and token):
                raise TransientError(f"token: no token in the answer (HTTP {status})", provider=self.name)
            lifetime = as_int(body.get("expires_in")) or 3600
            self._token, self._renew_at = token, self.clock() + lifetime - REFRESH_EARLY
            return token

    def _refusal(self, body: Any, status: int) -> ProviderError:
        """The exception for a refused send: by requestError messageId, else by HTTP status."""
        error = body.get("requestError") if isinstance(body, dict) else None
        if isinstance(error, dict):
            error = error.get("serviceException") or error.get("policyException")
        message_id = error.get("messageId") if isinstance(error, dict) else None
        if not isinstance(error, dict) or not isinstance(message_id, str):
            gateway = body.get("message") if isinstance(body, dict) else None  # {"code", "message"}
            text = f"refused (HTTP {status})" + (f" - {gateway}" if isinstance(gateway, str) else "")
            return PermanentError(self._scrub(text), provider=self.name, code=status)
        text = error.get("text") if isinstance(error.get("text"), str) else "refused"
        variables = error.get("variables")
        for index, value in enumerate(variables if isinstance(variables, list) else [], start=1):
            text = text.replace(f"%{index}", str(value))
        kind = TransientError if message_id in _TRANSIENT_IDS else PermanentError
        text = self._scrub(f"{message_id}: {text} (HTTP {status})")
        return kind(text, provider=self.name, code=message_id)

    def _scrub(self, text: str) -> str:
        """``text`` without the client secret or the current token (never logged)."""
        return self.scrub(text, self._token)


def _find(value: Any, key: str) -> list[Any]:
    """Every value of ``key`` anywhere in a JSON document (contracts come in several shapes)."""
    if isinstance(value, dict):
        found = [value[key]] if key in value else []
        return found + [v for child in value.values() for v in _find(child, key)]
    if isinstance(value, list):
        return [v for child in value for v in _find(child, key)]
    return []
