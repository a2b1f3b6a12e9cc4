"""SMSPartner provider: scripted answers over MockTransport, one pass over a real socket."""

from __future__ import annotations

import json

import httpx
import pytest

from bridge.errors import AmbiguousError, ConfigError, PermanentError, TransientError
from bridge.providers.base import Sms
from bridge.providers.registry import build_provider
from bridge.providers.smspartner import SmsPartnerProvider, encode_message
from provider_fakes import Answers, FakeHttpServer, Reply, closed_port

KEY = "sp-SECRET-key-0123456789"
SMS = Sms(to=("+33612121515",), text="Hello")


def make(client: httpx.AsyncClient | None, **settings) -> SmsPartnerProvider:
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
                {"apiKey": KEY, "phoneNumbers": "+33612121515", "message": "Hello", "_format": "json"},
                id="minimal",
            ),
            pytest.param(
                {},
                Sms(to=("+33612121515", "+33614141515"), text='Prix: 5€\nDites "oui"', sender="SHOP", unicode=True),
                {"apiKey": KEY, "phoneNumbers": "+33612121515,+33614141515", "_format": "json",
                 "message": 'Prix: 5:euro::br:Dites "oui"', "sender": "SHOP", "isUnicode": 1},
                id="batch-sender-unicode-placeholders",
            ),
            pytest.param(
                {"sandbox": True, "stop_sms": True, "dlr_url": "https://me.example/dlr/",
                 "response_url": "https://me.example/mo"},
                SMS,
                {"apiKey": KEY, "phoneNumbers": "+33612121515", "message": "Hello", "_format": "json",
                 "sandbox": 1, "isStopSms": 1, "urlDlr": "https://me.example/dlr/",
                 "urlResponse": "https://me.example/mo"},
                id="account-options",
            ),
        ],
    )
    async def test_fields_sent(self, settings: dict, sms: Sms, expected: dict) -> None:
        """The JSON body carries exactly the documented fields."""
        answers = Answers(ok())
        async with answers.client() as client:
            await make(client, **settings).send(sms)
        [request] = answers.requests
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
            pytest.param(httpx.Response(429, headers={"Retry-After": "30"}), TransientError, 429, id="429"),
            pytest.param(httpx.Response(503), TransientError, 503, id="503"),
            pytest.param(httpx.Response(500, text="oops"), AmbiguousError, 500, id="500"),
            pytest.param(httpx.Response(200, text="<html>ok</html>"), AmbiguousError, None, id="200-not-json"),
            pytest.param(httpx.Response(200, json={"code": 200}), AmbiguousError, None, id="200-no-success"),
            pytest.param(httpx.Response(200, json=[1]), AmbiguousError, None, id="200-json-list"),
            pytest.param(httpx.ConnectError, TransientError, None, id="connect-error"),
            pytest.param(httpx.ConnectTimeout, TransientError, None, id="connect-timeout"),
            pytest.param(httpx.ReadTimeout, AmbiguousError, None, id="read-timeout"),
            pytest.param(httpx.RemoteProtocolError, AmbiguousError, None, id="connection-dropped"),
        ],
    )
    async def test_failures_are_classified(self, outcome, error: type, code: int | None) -> None:
        """Each failure maps to the exception class the dispatcher relies on; no secret leaks."""
        async with Answers(outcome).client() as client:
            with pytest.raises(error) as caught:
                await make(client).send(SMS)
        assert type(caught.value) is error
        assert (caught.value.provider, caught.value.code) == ("partner", code)
        assert KEY not in str(caught.value) and KEY not in repr(caught.value.args)

    async def test_retry_after_is_passed_on(self) -> None:
        """429 carries the server's Retry-After in seconds."""
        async with Answers(httpx.Response(429, headers={"Retry-After": "30"})).client() as client:
            with pytest.raises(TransientError) as caught:
                await make(client).send(SMS)
        assert caught.value.retry_after == 30

    async def test_constraint_messages_are_joined(self) -> None:
        """Code 9 lists every violated constraint."""
        errors = [{"message": "Message is required"}, {"message": "This phone number is not valid (922264)"}]
        async with Answers(refused(9, errors=errors)).client() as client:
            with pytest.raises(PermanentError, match="Message is required; This phone number is not valid"):
                await make(client).send(SMS)

    async def test_without_client_send_refuses(self) -> None:
        """A provider built only to validate config cannot send."""
        with pytest.raises(RuntimeError):
            await make(None).send(SMS)


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


class TestConfig:
    @pytest.mark.parametrize(
        ("settings", "path"),
        [
            pytest.param({"api_key": None}, "providers.partner.api_key", id="api-key-missing"),
            pytest.param({"api_key": " "}, "providers.partner.api_key", id="api-key-blank"),
            pytest.param({"url": "ftp://api.smspartner.fr"}, "providers.partner.url", id="url-not-http"),
            pytest.param({"timeout": 0}, "providers.partner.timeout", id="timeout-zero"),
            pytest.param({"timeout": "10"}, "providers.partner.timeout", id="timeout-string"),
            pytest.param({"sandbox": "yes"}, "providers.partner.sandbox", id="sandbox-not-bool"),
            pytest.param({"stop_sms": 1}, "providers.partner.stop_sms", id="stop-sms-not-bool"),
            pytest.param({"dlr_url": "not a url"}, "providers.partner.dlr_url", id="dlr-url-bad"),
            pytest.param({"response_url": "mailto:x@y"}, "providers.partner.response_url", id="response-url-bad"),
            pytest.param({"apikey": "x"}, "providers.partner.apikey", id="unknown-key"),
        ],
    )
    def test_bad_values_name_their_key(self, settings: dict, path: str) -> None:
        """A bad value raises ConfigError naming ``providers.<name>.<key>``, never the key."""
        full = {"type": "smspartner", "api_key": KEY, **settings}
        if full["api_key"] is None:
            del full["api_key"]
        with pytest.raises(ConfigError) as caught:
            SmsPartnerProvider.from_config("partner", full)
        assert caught.value.path == path and KEY not in str(caught.value)

    def test_registry_builds_it_with_defaults(self) -> None:
        """``type: smspartner`` resolves to this class with the documented defaults."""
        provider = build_provider("partner", {"type": "smspartner", "api_key": KEY})
        assert isinstance(provider, SmsPartnerProvider)
        assert (provider.url, provider.timeout, provider.max_batch) == ("https://api.smspartner.fr/v1", 10.0, 500)
        assert KEY not in repr(provider)


class TestRealSocket:
    async def test_send_over_loopback(self) -> None:
        """The real HTTP path works: success, slow answer, dropped connection, refused port."""
        scripted = (
            Reply(json={"success": True, "code": 200, "message_id": 9, "cost": 0.04}),
            Reply(json={"success": True}, delay=2.0),   # past the 0.3 s client timeout
            Reply(drop=True),
        )
        with FakeHttpServer(*scripted) as server:
            async with httpx.AsyncClient() as client:
                provider = make(client, url=f"{server.url}/v1", timeout=0.3)
                receipt = await provider.send(SMS)
                with pytest.raises(AmbiguousError):
                    await provider.send(SMS)
                with pytest.raises(AmbiguousError):
                    await provider.send(SMS)
                with pytest.raises(TransientError):
                    await make(client, url=f"http://127.0.0.1:{closed_port()}/v1").send(SMS)
        assert receipt.message_ids == {"+33612121515": "9"}
        first = server.requests[0]
        assert (first.method, first.path) == ("POST", "/v1/send")
        assert first.json()["apiKey"] == KEY and first.json()["phoneNumbers"] == "+33612121515"
        assert len(server.requests) == 3
