"""Allo provider: its own answers over MockTransport; shared rules: test_provider_contract."""

from __future__ import annotations

import json

import httpx
import pytest

from bridge.errors import AmbiguousError, PermanentError, TransientError
from bridge.providers.allo import AlloProvider
from bridge.providers.base import Sms
from bridge.providers.registry import validate
from provider_fakes import Answers, raised_by, requests_of

KEY = "allo-SECRET-key-0123456789"
SMS = Sms(to=("+33612345678",), text="Bonjour")


def make(client: httpx.AsyncClient, **settings) -> AlloProvider:
    base = {"type": "allo", "api_key": KEY, "sender_id": "MyCompany"}
    return AlloProvider.from_config("allo", {**base, **settings}, client)


def sent(**data) -> httpx.Response:
    body = {"from_number": None, "sender_id": "MyCompany", "to_number": "+33612345678",
            "type": "OUTBOUND", "content": "Bonjour", "start_date": "2024-01-15T10:30:00", **data}
    return httpx.Response(200, json={"data": body})


def error(status: int, code: str, message: str = "", **extra) -> httpx.Response:
    return httpx.Response(status, json={"error": {"type": "x", "code": code, "message": message, **extra}})


class TestRequest:
    @pytest.mark.parametrize(
        ("settings", "sms", "expected"),
        [
            pytest.param({}, SMS, {"sender_id": "MyCompany", "to": "+33612345678", "message": "Bonjour"},
                         id="configured-sender"),
            pytest.param({}, Sms(to=("+33612345678",), text="Hi", sender="SHOP24"),
                         {"sender_id": "SHOP24", "to": "+33612345678", "message": "Hi"}, id="sms-sender-wins"),
            pytest.param({"sender_id": None}, Sms(to=("+33612345678",), text="x" * 1000, sender="ABC"),
                         {"sender_id": "ABC", "to": "+33612345678", "message": "x" * 1000}, id="1000-chars"),
        ],
    )
    async def test_fields_sent(self, settings: dict, sms: Sms, expected: dict) -> None:
        """URL, ``Api-Key`` header and the JSON body are exactly the documented ones."""
        [request] = await requests_of(lambda c: make(c, **settings), sms, sent())
        assert (request.method, str(request.url)) == ("POST", "https://api.withallo.com/v1/api/sms")
        assert request.headers["authorization"] == f"Api-Key {KEY}"
        assert json.loads(request.content) == expected

    @pytest.mark.parametrize(
        ("settings", "sms", "match"),
        [
            pytest.param({}, Sms(to=SMS.to, text="x" * 1001), "1-1000 characters", id="too-long"),
            pytest.param({}, Sms(to=SMS.to, text=""), "1-1000 characters", id="empty"),
            pytest.param({}, Sms(to=("+32470123456",), text="Hi"), r"French numbers \(\+33\)", id="not-french"),
            pytest.param({}, Sms(to=SMS.to, text="Hi", sender="MY SHOP"), "letters/digits", id="sender-space"),
            pytest.param({}, Sms(to=SMS.to, text="Hi", sender="12345"), "letters/digits", id="sender-no-letter"),
            pytest.param({"sender_id": None}, SMS, "providers.allo.sender_id", id="no-sender"),
        ],
    )
    async def test_refused_before_any_call(self, settings: dict, sms: Sms, match: str) -> None:
        """What Allo documents as invalid is a PermanentError without a request."""
        answers = Answers(sent())
        async with answers.client() as client:
            with pytest.raises(PermanentError, match=match):
                await make(client, **settings).send(sms)
        assert answers.requests == []

    async def test_one_number_per_call(self) -> None:
        """A batch is a programming error: max_numbers is 1."""
        async with Answers(sent()).client() as client:
            with pytest.raises(ValueError):
                await make(client).send(Sms(to=("+33600000001", "+33600000002"), text="x"))


class TestAnswers:
    async def test_success_gives_receipt(self) -> None:
        """The documented answer has no id: an empty receipt map, the answer kept."""
        async with Answers(sent()).client() as client:
            receipt = await make(client).send(SMS)
        assert receipt.message_ids == {} and receipt.raw["data"]["type"] == "OUTBOUND"

    async def test_id_is_kept_when_present(self) -> None:
        """Should Allo add an id to the answer, it becomes the provider message id."""
        async with Answers(sent(id="sms_123")).client() as client:
            receipt = await make(client).send(SMS)
        assert receipt.message_ids == {"+33612345678": "sms_123"}

    @pytest.mark.parametrize(
        ("outcome", "error_class", "code"),
        [
            pytest.param(error(401, "API_KEY_INVALID", f"bad key {KEY}"), PermanentError, "API_KEY_INVALID",
                         id="401-invalid-echoing-key"),
            pytest.param(error(401, "API_KEY_REVOKED"), PermanentError, "API_KEY_REVOKED", id="401-revoked"),
            pytest.param(httpx.Response(401, json={"code": "API_KEY_INVALID", "details": None}),
                         PermanentError, "API_KEY_INVALID", id="401-v1-shape"),
            pytest.param(httpx.Response(403, json={"code": "API_KEY_INSUFFICIENT_SCOPE",
                                                   "details": [{"message": "required=SMS_SEND", "field": "scope"}]}),
                         PermanentError, "API_KEY_INSUFFICIENT_SCOPE", id="403-scope"),
            pytest.param(error(403, "API_KEY_TRIAL_NOT_ALLOWED", retryable=True), PermanentError,
                         "API_KEY_TRIAL_NOT_ALLOWED", id="403-trial-never-transient"),
            pytest.param(error(400, "INVALID_REQUEST_BODY", "bad json"), PermanentError, "INVALID_REQUEST_BODY",
                         id="400-validation"),
            pytest.param(error(409, "CONFLICT", retryable=True), TransientError, "CONFLICT", id="409-retryable"),
            pytest.param(httpx.Response(404, text="<html>"), PermanentError, 404, id="404-not-json"),
            pytest.param(error(429, "RATE_LIMIT_EXCEEDED", retryable=True, retry_after_seconds=1),
                         TransientError, 429, id="429"),
            pytest.param(httpx.Response(200, text="OK"), AmbiguousError, None, id="200-not-json"),
            pytest.param(httpx.Response(200, json={"ok": True}), AmbiguousError, None, id="200-no-data"),
            pytest.param(httpx.Response(200, json=["x"]), AmbiguousError, None, id="200-json-list"),
        ],
    )
    async def test_failures_are_classified(self, outcome, error_class: type, code) -> None:
        """Each failure maps to the exception class the dispatcher relies on; no secret leaks."""
        caught = await raised_by(make, SMS, outcome)
        assert type(caught) is error_class
        assert (caught.provider, caught.code) == ("allo", code)
        assert KEY not in str(caught) and KEY not in repr(caught.args)

    async def test_messages_are_kept(self) -> None:
        """Allo's own wording and field details are part of the error."""
        answer = httpx.Response(403, json={"code": "API_KEY_INSUFFICIENT_SCOPE",
                                           "details": [{"message": "required=SMS_SEND"}]})
        async with Answers(answer).client() as client:
            expected = r"not allowed \(HTTP 403, API_KEY_INSUFFICIENT_SCOPE\) - required=SMS_SEND"
            with pytest.raises(PermanentError, match=expected):
                await make(client).send(SMS)


class TestCheck:
    @pytest.mark.parametrize(
        ("answer", "verdict"),
        [
            ({"data": {"scopes": ["SMS_SEND"], "team": {"id": "t", "name": "Acme"}}}, "API key accepted (team Acme)"),
            ({"data": {"api_key_id": "api-1"}}, "API key accepted"),
        ],
        ids=["with-team", "minimal"],
    )
    async def test_me_endpoint(self, answer: dict, verdict: str) -> None:
        """``GET /v2/api/me`` with the key gives a one-line verdict."""
        answers = Answers(httpx.Response(200, json=answer))
        async with answers.client() as client:
            assert await make(client).check() == verdict
        [request] = answers.requests
        assert (request.method, str(request.url)) == ("GET", "https://api.withallo.com/v2/api/me")
        assert request.headers["authorization"] == f"Api-Key {KEY}"

    @pytest.mark.parametrize(
        "answer",
        [httpx.Response(200, json={"data": {"scopes": ["CONTACTS_READ"]}}), error(401, "API_KEY_INVALID")],
        ids=["missing-sms-scope", "401"],
    )
    async def test_refusals(self, answer: httpx.Response) -> None:
        """A key that cannot send fails the check."""
        async with Answers(answer).client() as client:
            with pytest.raises(PermanentError) as caught:
                await make(client).check()
        assert KEY not in str(caught.value)


class TestConfig:
    def test_defaults_and_capabilities(self) -> None:
        """Documented defaults; capabilities follow the 1000-character, one-number endpoint."""
        settings = validate("allo", {"type": "allo", "api_key": KEY})
        assert (settings.url, settings.timeout, settings.sender_id) == ("https://api.withallo.com", 10.0, None)
        caps = AlloProvider.CAPABILITIES
        assert (caps.max_numbers, caps.unicode, caps.max_parts, caps.default_rate) == (1, False, 6, 5.0)
        assert caps.carries("FR") and not caps.carries("BE") and not caps.carries("RE")
        assert 6 * 153 <= 1000 < 7 * 153
        assert KEY not in repr(settings)
