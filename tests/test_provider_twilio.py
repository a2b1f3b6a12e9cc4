"""Twilio provider: its own answers over MockTransport; shared rules: test_provider_contract."""

from __future__ import annotations

import base64
from urllib.parse import parse_qs

import httpx
import pytest

from bridge.errors import AmbiguousError, PermanentError, RecipientRefused, TransientError
from bridge.providers.base import Sms
from bridge.providers.twilio import TwilioProvider
from bridge.providers.registry import validate
from provider_fakes import Answers, raised_by, requests_of

SID = "AC" + "0123456789abcdef" * 2
TOKEN = "twilio-SECRET-token-0123456789"
SERVICE = "MG" + "fedcba9876543210" * 2
MESSAGES = f"https://api.twilio.com/2010-04-01/Accounts/{SID}/Messages.json"
BASIC = "Basic " + base64.b64encode(f"{SID}:{TOKEN}".encode()).decode()
SMS = Sms(to=("+33612121515",), text="Hello")


def make(client: httpx.AsyncClient, **settings) -> TwilioProvider:
    base = {"type": "twilio", "account_sid": SID, "auth_token": TOKEN, "from": "+15005550006"}
    full = {k: v for k, v in {**base, **settings}.items() if v is not None}
    return TwilioProvider.from_config("tw", full, client)


def created(**extra) -> httpx.Response:
    body = {"sid": "SM" + "1" * 32, "status": "queued", "to": "+33612121515", "price": None,
            "error_code": None, **extra}
    return httpx.Response(201, json=body)


def twilio_error(code: int, status: int = 400, message: str = "refused") -> httpx.Response:
    return httpx.Response(status, json={"code": code, "message": message, "status": status,
                                        "more_info": f"https://www.twilio.com/docs/errors/{code}"})


def form(request: httpx.Request) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(request.content.decode()).items()}


class TestRequest:
    @pytest.mark.parametrize(
        ("settings", "sms", "expected"),
        [
            pytest.param({}, SMS, {"To": "+33612121515", "Body": "Hello", "From": "+15005550006"}, id="from"),
            pytest.param({"from": None, "messaging_service_sid": SERVICE}, SMS,
                         {"To": "+33612121515", "Body": "Hello", "MessagingServiceSid": SERVICE}, id="service-only"),
            pytest.param({"messaging_service_sid": SERVICE},
                         Sms(to=("+33612121515",), text="Été & co\n☀", sender="MYSHOP", unicode=True),
                         {"To": "+33612121515", "Body": "Été & co\n☀", "From": "MYSHOP",
                          "MessagingServiceSid": SERVICE}, id="sms-sender-unicode-service"),
        ],
    )
    async def test_fields_sent(self, settings: dict, sms: Sms, expected: dict) -> None:
        """URL, Basic auth and the form body are exactly the documented ones."""
        [request] = await requests_of(lambda c: make(c, **settings), sms, created())
        assert (request.method, str(request.url)) == ("POST", MESSAGES)
        assert request.headers["authorization"] == BASIC
        assert request.headers["content-type"] == "application/x-www-form-urlencoded"
        assert form(request) == expected


class TestAnswers:
    async def test_success_gives_receipt(self) -> None:
        """201 with a sid: the sid is the message id."""
        async with Answers(created()).client() as client:
            receipt = await make(client).send(SMS)
        assert receipt.message_ids == {"+33612121515": "SM" + "1" * 32}
        assert receipt.raw["status"] == "queued"

    @pytest.mark.parametrize(
        ("outcome", "error", "code"),
        [
            pytest.param(twilio_error(21211), PermanentError, 21211, id="21211-invalid-to"),
            pytest.param(twilio_error(21408), PermanentError, 21408, id="21408-region-disabled"),
            pytest.param(twilio_error(21610), RecipientRefused, 21610, id="21610-unsubscribed-no-failover"),
            pytest.param(twilio_error(21614), PermanentError, 21614, id="21614-not-mobile"),
            pytest.param(twilio_error(21606), PermanentError, 21606, id="21606-bad-from"),
            pytest.param(twilio_error(21617), PermanentError, 21617, id="21617-too-long"),
            pytest.param(twilio_error(20003, 401, f"Authenticate {TOKEN}"), PermanentError, 20003,
                         id="20003-auth-echoed"),
            pytest.param(twilio_error(20404, 404), PermanentError, 20404, id="20404-wrong-account"),
            pytest.param(twilio_error(21611), TransientError, 21611, id="21611-from-queue-full"),
            pytest.param(twilio_error(30001), TransientError, 30001, id="30001-queue-overflow"),
            pytest.param(twilio_error(29999), PermanentError, 29999, id="unknown-code"),
            pytest.param(httpx.Response(400, text="<html>"), PermanentError, 400, id="400-not-json"),
            pytest.param(httpx.Response(201, text="<html>"), AmbiguousError, None, id="201-not-json"),
            pytest.param(httpx.Response(201, json={"status": "queued"}), AmbiguousError, None, id="201-no-sid"),
        ],
    )
    async def test_failures_are_classified(self, outcome, error: type, code) -> None:
        """Each failure maps to the exception class the dispatcher relies on; no secret leaks."""
        caught = await raised_by(make, SMS, outcome)
        assert type(caught) is error and (caught.provider, caught.code) == ("tw", code)
        assert TOKEN not in str(caught) and TOKEN not in repr(caught.args)


class TestStatus:
    @pytest.mark.parametrize(
        ("answer", "state"),
        [
            (httpx.Response(200, json={"status": "queued"}), "sent"),
            (httpx.Response(200, json={"status": "sending"}), "sent"),
            (httpx.Response(200, json={"status": "sent"}), "sent"),
            (httpx.Response(200, json={"status": "delivered"}), "delivered"),
            (httpx.Response(200, json={"status": "undelivered", "error_code": 30003}), "failed"),
            (httpx.Response(200, json={"status": "failed", "error_code": 30001}), "failed"),
            (httpx.Response(200, json={"status": "receiving"}), None),
            (httpx.Response(200, text="<html>"), None),
            (twilio_error(20404, 404), None),
        ],
        ids=["queued", "sending", "sent", "delivered", "undelivered", "failed-30001", "other", "not-json",
             "not-found"],
    )
    async def test_states_are_normalised(self, answer: httpx.Response, state: str | None) -> None:
        """Twilio's status becomes sent / delivered / failed, or None."""
        answers = Answers(answer)
        async with answers.client() as client:
            assert await make(client).status("SM" + "2" * 32, "+33612121515") == state
        [request] = answers.requests
        assert request.method == "GET" and str(request.url) == (
            f"https://api.twilio.com/2010-04-01/Accounts/{SID}/Messages/SM{'2' * 32}.json")

    async def test_bad_token_is_permanent(self) -> None:
        """20003 on a status query is a PermanentError without the token."""
        async with Answers(twilio_error(20003, 401, TOKEN)).client() as client:
            with pytest.raises(PermanentError) as caught:
                await make(client).status("SM" + "2" * 32, "+33612121515")
        assert caught.value.code == 20003 and TOKEN not in str(caught.value)


class TestReconcile:
    def listing(self, *messages: dict) -> httpx.Response:
        return httpx.Response(200, json={"messages": list(messages)})

    async def test_by_sid(self) -> None:
        """A known sid is looked up directly."""
        answers = Answers(httpx.Response(200, json={"status": "delivered"}))
        async with answers.client() as client:
            assert await make(client).reconcile(SMS, 0.0, "SM" + "3" * 32) == ("delivered", "SM" + "3" * 32)

    @pytest.mark.parametrize(
        ("messages", "expected"),
        [
            pytest.param([{"sid": "SMa", "body": "Hello", "status": "sent",
                           "date_created": "Tue, 01 Dec 2026 09:00:10 +0000"}], ("sent", "SMa"), id="found"),
            pytest.param([{"sid": "SMb", "body": "Other", "status": "sent",
                           "date_created": "Tue, 01 Dec 2026 09:00:10 +0000"}], ("not_found", None),
                         id="complete-list-without-it"),
            pytest.param([{"sid": "SMc", "body": "Hello", "status": "sent",
                           "date_created": "Mon, 30 Nov 2026 09:00:10 +0000"}], ("not_found", None),
                         id="same-text-a-day-before"),
            pytest.param([{"sid": f"SM{i}", "body": "Other", "status": "sent",
                           "date_created": "Tue, 01 Dec 2026 09:00:10 +0000"} for i in range(50)], None,
                         id="full-page-cannot-tell"),
        ],
    )
    async def test_by_listing_the_number(self, messages: list, expected) -> None:
        """Without a sid, the messages to the number are listed and matched by body and time."""
        since = 1_796_115_600.0  # 2026-12-01 09:00:00 UTC
        answers = Answers(self.listing(*messages))
        async with answers.client() as client:
            assert await make(client).reconcile(SMS, since, None) == expected
        assert dict(answers.requests[0].url.params) == {"To": "+33612121515", "PageSize": "50"}


class TestCheck:
    @pytest.mark.parametrize(
        ("answer", "verdict", "error"),
        [
            (httpx.Response(200, json={"sid": SID, "status": "active"}), f"account {SID} is active", None),
            (httpx.Response(200, json={"sid": SID, "status": "suspended"}), None, PermanentError),
            (twilio_error(20003, 401), None, PermanentError),
        ],
        ids=["active", "suspended", "bad-token"],
    )
    async def test_account_fetch(self, answer, verdict, error) -> None:
        """``check()`` fetches ``/Accounts/{sid}.json`` and wants an active account."""
        answers = Answers(answer)
        async with answers.client() as client:
            if error:
                with pytest.raises(error):
                    await make(client).check()
            else:
                assert await make(client).check() == verdict
        assert str(answers.requests[0].url) == f"https://api.twilio.com/2010-04-01/Accounts/{SID}.json"


class TestConfig:
    def test_defaults_and_capabilities(self) -> None:
        """Documented defaults and capability values."""
        settings = validate("tw", {"type": "twilio", "account_sid": SID, "auth_token": TOKEN, "from": "+1500"})
        assert (settings.url, settings.timeout, settings.messaging_service_sid) == (
            "https://api.twilio.com", 10.0, None)
        caps = TwilioProvider.CAPABILITIES
        assert (caps.max_numbers, caps.max_parts, caps.default_rate) == (1, 10, 1.0)
        assert TOKEN not in repr(settings)
