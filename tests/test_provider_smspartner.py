"""SMSPartner's own answers (MockTransport); the shared rules are in test_provider_contract."""

from __future__ import annotations

import json

import httpx
import pytest

from bridge.errors import AmbiguousError, PermanentError
from bridge.providers.base import Sms
from bridge.providers.registry import validate
from bridge.providers.smspartner import SmsPartnerProvider, encode_message
from provider_fakes import Answers, raised_by, requests_of

KEY = "sp-SECRET-key-0123456789"
SMS = Sms(to=("+33612121515",), text="Hello")


def make(client: httpx.AsyncClient, **settings) -> SmsPartnerProvider:
    return SmsPartnerProvider.from_config("partner", {"type": "smspartner", "api_key": KEY, **settings}, client)


def ok(**extra) -> httpx.Response:
    body = {"success": True, "code": 200, "message_id": 307, "nb_sms": 1, "cost": 0.038, "currency": "EUR"}
    return httpx.Response(200, json={**body, **extra})


def refused(code: int, status: int = 200, **extra) -> httpx.Response:
    return httpx.Response(status, json={"success": False, "code": code, **extra})


class TestRequest:
    @pytest.mark.parametrize(
        ("settings", "sms", "expected"),
        [
            pytest.param(
                {}, SMS,
                {"apiKey": KEY, "phoneNumbers": "+33612121515", "message": "Hello", "_format": "json",
                 "gamme": 1},
                id="minimal-premium",
            ),
            pytest.param(
                {}, Sms(to=("+33612121515",), text="Hello", low_cost=True, reference="m2s-42-1"),
                {"apiKey": KEY, "phoneNumbers": "+33612121515", "message": "Hello", "_format": "json",
                 "gamme": 2, "tag": "m2s-42-1"},
                id="lc1-low-cost-gamme-and-tag",
            ),
            pytest.param(
                {},
                Sms(to=("+33612121515", "+33614141515"), text='Prix: 5€\nDites "oui"', sender="SHOP", unicode=True),
                {"apiKey": KEY, "phoneNumbers": "+33612121515,+33614141515", "_format": "json",
                 "message": 'Prix: 5:euro::br:Dites "oui"', "sender": "SHOP", "isUnicode": 1, "gamme": 1},
                id="batch-sender-unicode-placeholders",
            ),
            pytest.param(
                {"sandbox": True, "stop_sms": True, "dlr_url": "https://me.example/dlr/",
                 "response_url": "https://me.example/mo"},
                SMS,
                {"apiKey": KEY, "phoneNumbers": "+33612121515", "message": "Hello", "_format": "json",
                 "gamme": 1, "sandbox": 1, "isStopSms": 1, "urlDlr": "https://me.example/dlr/",
                 "urlResponse": "https://me.example/mo"},
                id="account-options",
            ),
        ],
    )
    async def test_fields_sent(self, settings: dict, sms: Sms, expected: dict) -> None:
        """The JSON body carries exactly the documented fields."""
        [request] = await requests_of(lambda c: make(c, **settings), sms, ok())
        assert (request.method, str(request.url)) == ("POST", "https://api.smspartner.fr/v1/send")
        assert request.headers["content-type"] == "application/json"
        assert json.loads(request.content) == expected

    async def test_custom_url(self) -> None:
        """``url`` replaces the API base, trailing slash or not."""
        answers = Answers(ok())
        async with answers.client() as client:
            await make(client, url="https://sp.example/v1/").send(SMS)
        assert str(answers.requests[0].url) == "https://sp.example/v1/send"

    @pytest.mark.parametrize(
        ("text", "expected"),
        [("a\r\nb\rc\nd", "a:br:b:br:c:br:d"), ("10 €", "10 :euro:"), ('say "hi" \\ ok', 'say "hi" \\ ok')],
        ids=["line-breaks", "euro", "quotes-untouched"],
    )
    def test_encode_message(self, text: str, expected: str) -> None:
        """Only the two documented placeholders are applied."""
        assert encode_message(text) == expected

    @pytest.mark.parametrize(
        ("reference", "tag"),
        [("m2s-123456789-12", "m2s-123456789-12"), ("M2S-1-1", "m2s-1-1"),
         ("m2s-123456789012345-1", None), ("job-1,job-2", None)],
        ids=["fits", "lowercased", "too-long", "comma"],
    )
    async def test_reference_goes_in_tag_when_it_fits(self, reference: str, tag: str | None) -> None:
        """``tag`` is "up to 20 characters, no spaces, lowercase only" (seed 003)."""
        answers = Answers(ok())
        async with answers.client() as client:
            await make(client).send(Sms(to=("+33612121515",), text="Hi", reference=reference))
        assert json.loads(answers.requests[0].content).get("tag") == tag


class TestAnswers:
    async def test_success_gives_receipt(self) -> None:
        """Every number maps to the message id; the cost is kept."""
        answers = Answers(ok())
        async with answers.client() as client:
            receipt = await make(client).send(Sms(to=("+33612121515", "+33614141515"), text="Hi"))
        assert receipt.message_ids == {"+33612121515": "307", "+33614141515": "307"}
        assert receipt.cost == 0.038
        assert receipt.raw["nb_sms"] == 1

    @pytest.mark.parametrize(
        ("outcome", "error", "code"),
        [
            pytest.param(refused(1), PermanentError, 1, id="1-key-required"),
            pytest.param(refused(2), PermanentError, 2, id="2-number-required"),
            pytest.param(refused(9, errors=[{"elementId": "x", "message": "Message is required"}]),
                         PermanentError, 9, id="9-constraints"),
            pytest.param(refused(10, message=f"Invalid API key {KEY}"), PermanentError, 10, id="10-bad-key"),
            pytest.param(refused(11), PermanentError, 11, id="11-no-credit"),
            pytest.param(refused(77), PermanentError, 77, id="unknown-code"),
            pytest.param(refused(9, status=400, errors=[{"message": "Sender cannot exceed 11 characters"}]),
                         PermanentError, 9, id="400-with-code"),
            pytest.param(httpx.Response(401, text="no"), PermanentError, 401, id="401"),
            pytest.param(httpx.Response(403, json={"success": False, "code": 10}), PermanentError, 403, id="403"),
            pytest.param(httpx.Response(404, text="<html>"), PermanentError, 404, id="404-not-json"),
            pytest.param(httpx.Response(200, text="<html>ok</html>"), AmbiguousError, None, id="200-not-json"),
            pytest.param(httpx.Response(200, json={"code": 200}), AmbiguousError, None, id="200-no-success"),
            pytest.param(httpx.Response(200, json=[1]), AmbiguousError, None, id="200-json-list"),
        ],
    )
    async def test_failures_are_classified(self, outcome, error: type, code: int | None) -> None:
        """Each failure maps to the exception class the dispatcher relies on; no secret leaks."""
        caught = await raised_by(make, SMS, outcome)
        assert type(caught) is error
        assert (caught.provider, caught.code) == ("partner", code)
        assert KEY not in str(caught) and KEY not in repr(caught.args)

    async def test_constraint_messages_are_joined(self) -> None:
        """Code 9 lists every violated constraint."""
        errors = [{"message": "Message is required"}, {"message": "This phone number is not valid (922264)"}]
        async with Answers(refused(9, errors=errors)).client() as client:
            with pytest.raises(PermanentError, match="Message is required; This phone number is not valid"):
                await make(client).send(SMS)


class TestStatus:
    @pytest.mark.parametrize(
        ("answer", "state"),
        [
            ({"success": True, "code": 200, "statut": "Delivered"}, "delivered"),
            ({"success": True, "code": 200, "statut": "Not delivered"}, "failed"),
            ({"success": True, "code": 200, "statut": "Waiting"}, "sent"),
            ({"success": True, "code": 200, "statut": "Something new"}, None),
            ({"success": False, "code": 4, "message": "Message not found"}, None),
        ],
        ids=["delivered", "not-delivered", "waiting", "unknown-statut", "not-found"],
    )
    async def test_states_are_normalised(self, answer: dict, state: str | None) -> None:
        """SMSPartner's statut becomes delivered / failed / sent, or None."""
        answers = Answers(httpx.Response(200, json=answer))
        async with answers.client() as client:
            assert await make(client).status("307", "+33612121515") == state
        [request] = answers.requests
        assert request.method == "GET" and request.url.path == "/v1/message-status"
        assert dict(request.url.params) == {
            "apiKey": KEY, "messageId": "307", "phoneNumber": "+33612121515", "_format": "json"
        }

    async def test_bad_key_is_permanent(self) -> None:
        """Code 10 on a status query is a PermanentError without the key in it."""
        async with Answers(refused(10, message="Invalid API key")).client() as client:
            with pytest.raises(PermanentError) as caught:
                await make(client).status("307", "+33612121515")
        assert caught.value.code == 10 and KEY not in str(caught.value)


class TestReconcile:
    @pytest.mark.parametrize(
        ("answer", "expected"),
        [
            pytest.param({"success": True, "code": 200, "StatutResponse_List": [
                {"phoneNumber": "+33612121515", "status": "Delivered", "messageId": 307}]},
                ("delivered", "307"), id="delivered"),
            pytest.param({"success": True, "code": 200, "message_id": "308", "StatutResponse_List": [
                {"phoneNumber": "+33612121515", "status": "Waiting"}]}, ("sent", "308"), id="waiting"),
            pytest.param({"success": True, "code": 200, "StatutResponse_List": [
                {"phoneNumber": "+33612121515", "status": "Not delivered"}]}, ("failed", None), id="not-delivered"),
            pytest.param({"success": True, "code": 200, "StatutResponse_List": [
                {"phoneNumber": "+33699999999", "status": "Delivered"}]}, ("not_found", None), id="other-number"),
            pytest.param({"success": False, "code": 4, "message": "Message not found"}, ("not_found", None),
                         id="code-4"),
            pytest.param({"success": True, "code": 200}, None, id="no-list"),
        ],
    )
    async def test_by_tag(self, answer: dict, expected) -> None:
        """The reference is looked up with ``bulk-status-by-tag``; code 4 means never received."""
        answers = Answers(httpx.Response(200, json=answer))
        async with answers.client() as client:
            sms = Sms(to=("+33612121515",), text="Hi", reference="m2s-7-1")
            assert await make(client).reconcile(sms, 0.0, None) == expected
        [request] = answers.requests
        assert request.url.path == "/v1/bulk-status-by-tag"
        assert dict(request.url.params) == {"apiKey": KEY, "tag": "m2s-7-1", "_format": "json"}

    async def test_by_message_id_without_a_tag(self) -> None:
        """A reference that did not fit in ``tag`` falls back to the message id."""
        answers = Answers(httpx.Response(200, json={"success": True, "code": 200, "statut": "Delivered"}))
        async with answers.client() as client:
            sms = Sms(to=("+33612121515",), text="Hi", reference="job-1,job-2")
            assert await make(client).reconcile(sms, 0.0, "307") == ("delivered", "307")
        assert answers.requests[0].url.path == "/v1/message-status"


class TestCheck:
    async def test_credits(self) -> None:
        """``check()`` reads ``/v1/me``: premium and low-cost credits, the balance."""
        body = {"success": True, "code": 200, "user": {"username": "me@example.com"},
                "credits": {"creditSms": 269, "creditSmsECO": 444, "toSend": 0, "solde": "10.5",
                            "currency": "EUR", "balance": "10.5"}}
        answers = Answers(httpx.Response(200, json=body))
        async with answers.client() as client:
            verdict = await make(client).check()
        assert verdict == "API key accepted; 269 premium and 444 low-cost SMS credits, balance 10.5 EUR"
        assert answers.requests[0].url.path == "/v1/me"
        assert dict(answers.requests[0].url.params) == {"apiKey": KEY, "_format": "json"}

    async def test_bad_key(self) -> None:
        """Code 10 fails the check, without the key in the message."""
        async with Answers(refused(10, message=f"Invalid API key {KEY}")).client() as client:
            with pytest.raises(PermanentError) as caught:
                await make(client).check()
        assert caught.value.code == 10 and KEY not in str(caught.value)


class TestConfig:
    def test_defaults_and_capabilities(self) -> None:
        """The documented defaults: the public URL, 10 s, 500 numbers per call, Unicode."""
        settings = validate("partner", {"type": "smspartner", "api_key": KEY})
        assert (settings.url, settings.timeout) == ("https://api.smspartner.fr/v1", 10.0)
        caps = SmsPartnerProvider.CAPABILITIES
        assert (caps.max_numbers, caps.unicode, caps.alphanumeric_sender) == (500, True, True)
        assert KEY not in repr(settings)
