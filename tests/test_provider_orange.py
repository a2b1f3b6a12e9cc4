"""Orange's own answers: OAuth2 token cache, send, error mapping, coverage (France refused).

The shared rules (timeouts, refused connections, 429, 5xx, secrets) are in test_provider_contract.
"""

from __future__ import annotations

import base64
import json
from urllib.parse import parse_qs

import httpx
import pytest

from bridge.errors import AmbiguousError, ConfigError, PermanentError, TransientError
from bridge.providers.base import Sms
from bridge.config import parse_config
from bridge.providers.orange import COVERAGE, OrangeProvider
from bridge.providers.registry import validate
from bridge.routing import incapable
from provider_fakes import Answers, raised_by

CLIENT_ID = "orange-client-id"
SECRET = "orange-SECRET-0123456789"
TOKEN = "tok-SECRET-first"
SMS = Sms(to=("+33612121515",), text="Hello")
SEND_URL = "https://api.orange.com/smsmessaging/v1/outbound/tel%3A%2B33700000000/requests"
BASIC = "Basic " + base64.b64encode(f"{CLIENT_ID}:{SECRET}".encode()).decode()


class Clock:
    """A settable monotonic clock."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make(client: httpx.AsyncClient, clock: Clock | None = None, **settings) -> OrangeProvider:
    base = {"type": "orange", "client_id": CLIENT_ID, "client_secret": SECRET, "sender": "+33700000000"}
    provider = OrangeProvider.from_config("orange", {**base, **settings}, client)
    if clock is not None:
        provider.clock = clock
    return provider


def token(value: str = TOKEN, expires_in: int | str = "3600") -> httpx.Response:
    return httpx.Response(200, json={"token_type": "Bearer", "access_token": value, "expires_in": expires_in})


def created(request_id: str = "a1b2c3") -> httpx.Response:
    body = {"outboundSMSMessageRequest": {
        "address": ["tel:+33612121515"], "senderAddress": "tel:+33700000000",
        "outboundSMSTextMessage": {"message": "Hello"},
        "resourceURL": f"{SEND_URL}/{request_id}",
    }}
    return httpx.Response(201, json=body)


def request_error(kind: str, message_id: str, text: str, variables: list | None = None, status: int = 400):
    exception = {"messageId": message_id, "text": text, "variables": variables or []}
    return httpx.Response(status, json={"requestError": {kind: exception}})


def expired() -> httpx.Response:
    return httpx.Response(401, json={"code": 42, "message": "Expired credentials", "description": "expired"})


def bearer(request: httpx.Request) -> str:
    return request.headers["authorization"].removeprefix("Bearer ")


class TestRequest:
    @pytest.mark.parametrize(
        ("settings", "sms", "expected"),
        [
            pytest.param({}, SMS, {"address": "tel:+33612121515", "senderAddress": "tel:+33700000000",
                                   "outboundSMSTextMessage": {"message": "Hello"}}, id="minimal"),
            pytest.param({"sender_name": "MyShop"}, SMS,
                         {"address": "tel:+33612121515", "senderAddress": "tel:+33700000000",
                          "outboundSMSTextMessage": {"message": "Hello"}, "senderName": "MyShop"},
                         id="configured-sender-name"),
            pytest.param({"sender_name": "MyShop"}, Sms(to=SMS.to, text="Réunion €", sender="OTHER"),
                         {"address": "tel:+33612121515", "senderAddress": "tel:+33700000000",
                          "outboundSMSTextMessage": {"message": "Réunion €"}, "senderName": "OTHER"},
                         id="sms-sender-wins-unicode"),
        ],
    )
    async def test_token_then_send(self, settings: dict, sms: Sms, expected: dict) -> None:
        """Token by Basic auth and client_credentials; send with Bearer to the encoded sender."""
        answers = Answers(token(), created())
        async with answers.client() as client:
            await make(client, **settings).send(sms)
        token_request, send_request = answers.requests
        assert (token_request.method, str(token_request.url)) == ("POST", "https://api.orange.com/oauth/v3/token")
        assert token_request.headers["authorization"] == BASIC
        assert parse_qs(token_request.content.decode()) == {"grant_type": ["client_credentials"]}
        assert (send_request.method, str(send_request.url)) == ("POST", SEND_URL)
        assert send_request.url.raw_path == b"/smsmessaging/v1/outbound/tel%3A%2B33700000000/requests"
        assert bearer(send_request) == TOKEN
        assert json.loads(send_request.content) == {"outboundSMSMessageRequest": expected}

    async def test_one_number_per_call(self) -> None:
        """A batch is a programming error: max_numbers is 1."""
        async with Answers(token(), created()).client() as client:
            with pytest.raises(ValueError):
                await make(client).send(Sms(to=("+33600000001", "+33600000002"), text="x"))


class TestToken:
    async def test_fetched_once_for_two_sends(self) -> None:
        """The token is cached: two sends, one token call."""
        answers = Answers(token(), created("one"), created("two"))
        async with answers.client() as client:
            provider = make(client, Clock())
            first, second = await provider.send(SMS), await provider.send(SMS)
        assert [r.url.path for r in answers.requests].count("/oauth/v3/token") == 1
        assert first.message_ids == {"+33612121515": "one"} and second.message_ids == {"+33612121515": "two"}

    @pytest.mark.parametrize(
        ("elapsed", "token_calls"),
        [(3600 - 61, 1), (3600 - 59, 2), (7200, 2)],
        ids=["still-fresh", "renewed-60s-early", "long-expired"],
    )
    async def test_renewed_before_expiry(self, elapsed: float, token_calls: int) -> None:
        """``expires_in`` (a string at Orange) drives renewal, 60 s early."""
        clock = Clock()
        renewal = (token("tok-SECRET-second"),) if token_calls == 2 else ()
        answers = Answers(token(TOKEN), created(), *renewal, created())
        async with answers.client() as client:
            provider = make(client, clock)
            await provider.send(SMS)
            clock.now += elapsed
            await provider.send(SMS)
        tokens = [r for r in answers.requests if r.url.path == "/oauth/v3/token"]
        assert len(tokens) == token_calls
        assert bearer(answers.requests[-1]) == (TOKEN if token_calls == 1 else "tok-SECRET-second")

    async def test_one_refresh_on_401(self) -> None:
        """A 401 on send renews the token once and the retry succeeds."""
        answers = Answers(token(TOKEN), expired(), token("tok-SECRET-second"), created("ok"))
        async with answers.client() as client:
            receipt = await make(client, Clock()).send(SMS)
        paths = [r.url.path for r in answers.requests]
        assert paths == ["/oauth/v3/token", "/smsmessaging/v1/outbound/tel:+33700000000/requests"] * 2
        assert bearer(answers.requests[3]) == "tok-SECRET-second"
        assert receipt.message_ids == {"+33612121515": "ok"}

    async def test_second_401_is_permanent(self) -> None:
        """Two 401 in a row: the credentials do not work; no third attempt."""
        answers = Answers(token(TOKEN), expired(), token("tok-SECRET-second"), expired())
        async with answers.client() as client:
            with pytest.raises(PermanentError) as caught:
                await make(client, Clock()).send(SMS)
        assert len(answers.requests) == 4 and caught.value.code == 401
        assert "tok-SECRET" not in str(caught.value)

    @pytest.mark.parametrize(
        ("outcome", "error_class", "code"),
        [
            pytest.param(httpx.Response(401, json={"error": "invalid_client", "error_description": SECRET}),
                         PermanentError, 401, id="401"),
            pytest.param(httpx.Response(400, json={"error": "invalid_grant"}), PermanentError, 400, id="400"),
            pytest.param(httpx.Response(403, text="denied"), PermanentError, 403, id="403"),
            pytest.param(httpx.Response(503, headers={"Retry-After": "7"}), TransientError, 503, id="503"),
            pytest.param(httpx.Response(429), TransientError, 429, id="429"),
            pytest.param(httpx.Response(500), TransientError, 500, id="500-nothing-sent"),
            pytest.param(httpx.Response(404, text="<html>"), PermanentError, 404, id="404-wrong-token-url"),
            pytest.param(httpx.Response(200, text="<html>"), TransientError, None, id="200-not-json"),
            pytest.param(httpx.Response(200, json={"token_type": "Bearer"}), TransientError, None, id="200-no-token"),
            pytest.param(httpx.ConnectError, TransientError, None, id="connect-error"),
            pytest.param(httpx.ReadTimeout, TransientError, None, id="read-timeout-nothing-sent"),
        ],
    )
    async def test_token_failures(self, outcome, error_class: type, code) -> None:
        """A 4xx is permanent (credentials, URL); anything else is transient: no SMS was sent."""
        answers = Answers(outcome)
        async with answers.client() as client:
            with pytest.raises(error_class) as caught:
                await make(client).send(SMS)
        assert type(caught.value) is error_class and caught.value.code == code
        assert all(r.url.path == "/oauth/v3/token" for r in answers.requests)
        assert SECRET not in str(caught.value) and SECRET not in repr(caught.value.args)

    async def test_token_retry_after_is_passed_on(self) -> None:
        """A 503 from the token endpoint keeps the server's Retry-After."""
        caught = await raised_by(make, SMS, httpx.Response(503, headers={"Retry-After": "7"}))
        assert isinstance(caught, TransientError)
        assert caught.retry_after == 7


class TestAnswers:
    @pytest.mark.parametrize(
        ("outcome", "error_class", "code"),
        [
            pytest.param(request_error("serviceException", "SVC0001", "A service error occurred. Error code is %1",
                                       ["503"]), TransientError, "SVC0001", id="SVC0001-service-error"),
            pytest.param(request_error("serviceException", "SVC0002", "Invalid input value for message part %1",
                                       ["senderName"]), PermanentError, "SVC0002", id="SVC0002-invalid-input"),
            pytest.param(request_error("serviceException", "SVC0003", "Invalid input value %1", ["x"]),
                         PermanentError, "SVC0003", id="SVC0003"),
            pytest.param(request_error("serviceException", "SVC0004", "No valid addresses provided in message part %1",
                                       ["address"]), PermanentError, "SVC0004", id="SVC0004-no-valid-address"),
            pytest.param(request_error("serviceException", "SVC0280", "Message too long. Maximum length is %1",
                                       ["160"]), PermanentError, "SVC0280", id="SVC0280-too-long"),
            pytest.param(request_error("policyException", "POL0001", "Policy error: %1", ["no more units"], 403),
                         PermanentError, "POL0001", id="POL0001-no-units"),
            pytest.param(request_error("policyException", "POL0003", "Too many addresses"), PermanentError,
                         "POL0003", id="POL0003-too-many"),
            pytest.param(request_error("serviceException", "SVC9999", f"echo {SECRET}"), PermanentError, "SVC9999",
                         id="unknown-id-echoing-secret"),
            pytest.param(httpx.Response(403, json={"code": 50, "message": "Access denied"}), PermanentError, 403,
                         id="403-gateway"),
            pytest.param(httpx.Response(404, text="<html>"), PermanentError, 404, id="404-not-json"),
            pytest.param(httpx.Response(400, json={"requestError": {}}), PermanentError, 400, id="400-empty-error"),
            pytest.param(httpx.Response(201, text="Created"), AmbiguousError, None, id="201-not-json"),
            pytest.param(httpx.Response(201, json={"other": 1}), AmbiguousError, None, id="201-no-request"),
        ],
    )
    async def test_failures_are_classified(self, outcome, error_class: type, code) -> None:
        """Each send failure maps to the class the dispatcher relies on; no secret leaks."""
        caught = await raised_by(make, SMS, token(), outcome)
        assert type(caught) is error_class
        assert (caught.provider, caught.code) == ("orange", code)
        for secret in (SECRET, TOKEN):
            assert secret not in str(caught) and secret not in repr(caught.args)

    async def test_variables_fill_the_text(self) -> None:
        """OneAPI ``%1`` placeholders are replaced by the variables."""
        answer = request_error("serviceException", "SVC0004", "No valid addresses provided in message part %1",
                               ["address"])
        async with Answers(token(), answer).client() as client:
            with pytest.raises(PermanentError, match="SVC0004: No valid addresses provided in message part address"):
                await make(client).send(SMS)

    async def test_receipt_without_resource_url(self) -> None:
        """A 201 without resourceURL is accepted, with no provider id."""
        async with Answers(token(), httpx.Response(201, json={"outboundSMSMessageRequest": {}})).client() as client:
            receipt = await make(client).send(SMS)
        assert receipt.message_ids == {}


class TestCheck:
    @pytest.mark.parametrize(
        ("answer", "verdict"),
        [
            (httpx.Response(200, json={"partnerContracts": {"contracts": [{"serviceContracts": [
                {"country": "FRA", "availableUnits": 120}, {"country": "BEL", "availableUnits": "30"}]}]}}),
             "credentials accepted; 150 SMS units left in 2 bundle(s)"),
            (httpx.Response(200, json=[{"country": "FRA", "availableUnits": 7, "status": "ACTIVE"}]),
             "credentials accepted; 7 SMS units left in 1 bundle(s)"),
            (httpx.Response(200, json=[]), "credentials accepted; no SMS bundle listed"),
            (httpx.Response(403, json={"code": 50}), "credentials accepted; contracts not readable (HTTP 403)"),
        ],
        ids=["nested", "flat-list", "empty", "contracts-refused"],
    )
    async def test_verdicts(self, answer: httpx.Response, verdict: str) -> None:
        """A fresh token, then the contracts list, as one line."""
        answers = Answers(token(), answer)
        async with answers.client() as client:
            assert await make(client, allow_france=True).check() == verdict + (
                "; France allowed by allow_france (check your contract)")
        contracts = answers.requests[1]
        assert (contracts.method, str(contracts.url)) == ("GET", "https://api.orange.com/sms/admin/v1/contracts")
        assert bearer(contracts) == TOKEN

    async def test_refused_credentials(self) -> None:
        """Refused credentials fail the check."""
        async with Answers(httpx.Response(401, json={"error": "invalid_client"})).client() as client:
            with pytest.raises(PermanentError):
                await make(client).check()


class TestConfig:
    def test_defaults_and_capabilities(self) -> None:
        """Documented defaults; short sender numbers (+2250000) are accepted; France left out."""
        full = {"type": "orange", "client_id": CLIENT_ID, "client_secret": SECRET, "sender": "+2250000"}
        settings = validate("orange", full)
        assert (settings.url, settings.token_url, settings.timeout, settings.allow_france) == (
            "https://api.orange.com", "https://api.orange.com/oauth/v3/token", 10.0, False)
        caps = OrangeProvider.capabilities_for(settings)
        assert (caps.max_numbers, caps.unicode, caps.alphanumeric_sender, caps.default_rate) == (1, True, True, 5.0)
        assert SECRET not in repr(settings)


class TestFrance:
    """Orange's OAuth SMS API is documented for Middle East & Africa, not for +33."""

    async def test_routing_skips_it_for_french_numbers(self) -> None:
        """Without ``allow_france`` the route skips Orange for +33, not for +225."""
        async with httpx.AsyncClient() as client:
            provider = make(client)
            allowed = make(client, allow_france=True)
            why = incapable(provider, unicode=False, sender=None, parts=1, number="+33612121515")
            assert why == "does not deliver to FR"
            assert incapable(provider, unicode=False, sender=None, parts=1, number="+2250707070707") is None
            assert incapable(allowed, unicode=False, sender=None, parts=1, number="+33612121515") is None

    async def test_check_says_where_it_delivers(self) -> None:
        """``providers check`` reports the documented coverage with the units left."""
        async with Answers(token(), httpx.Response(200, json=[])).client() as client:
            verdict = await make(client).check()
        assert verdict == f"credentials accepted; no SMS bundle listed; {COVERAGE}: French numbers are not routed here"

    @pytest.mark.parametrize(
        ("account", "problem"),
        [
            pytest.param({"route": ["orange"]}, "accounts.a.route", id="route"),
            pytest.param({"route": ["outbox"], "lowcost_route": ["orange"]}, "accounts.a.lowcost_route",
                         id="lowcost-route"),
            pytest.param({"route": ["outbox"], "country_routes": {"FR": ["orange"]}},
                         "accounts.a.country_routes.FR", id="country-route-fr"),
            pytest.param({"route": ["orange"], "country_routes": {"FR": ["outbox"]}}, None, id="fr-goes-elsewhere"),
            pytest.param({"route": ["orange"], "allowed_countries": ["CI", "SN"]}, None, id="no-french-numbers"),
        ],
    )
    def test_check_config_refuses_a_french_route(self, tmp_path, account: dict, problem: str | None) -> None:
        """An account that may text France through Orange is a config error naming the route."""
        orange = {"type": "orange", "client_id": CLIENT_ID, "client_secret": SECRET, "sender": "+2250000"}
        data = {"smtp": {"recipients": ["m@example.com"]},
                "providers": {"orange": orange, "outbox": {"type": "file", "path": str(tmp_path / "o")}},
                "accounts": {"a": {"api_key": "k", **account}}}
        if problem is None:
            parse_config(data)
        else:
            with pytest.raises(ConfigError) as caught:
                parse_config(data)
            assert [e.path for e in caught.value.errors] == [problem]
            assert "allow_france" in str(caught.value)
            data["providers"]["orange"]["allow_france"] = True
            parse_config(data)
