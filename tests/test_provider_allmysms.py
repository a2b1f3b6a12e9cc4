"""Allmysms provider: its own answers over MockTransport; shared rules: test_provider_contract."""

from __future__ import annotations

import base64
import json

import httpx
import pytest

from bridge.errors import AmbiguousError, PermanentError
from bridge.providers.allmysms import AllmysmsProvider
from bridge.providers.base import Sms
from bridge.providers.registry import validate
from provider_fakes import Answers, raised_by, requests_of

LOGIN = "arthur45"
KEY = "amk-SECRET-key-0123456789"
SMS = Sms(to=("+33612121515",), text="Hello")
BASIC = "Basic " + base64.b64encode(f"{LOGIN}:{KEY}".encode()).decode()


def make(client: httpx.AsyncClient, **settings) -> AllmysmsProvider:
    base = {"type": "allmysms", "login": LOGIN, "api_key": KEY}
    return AllmysmsProvider.from_config("amx", {**base, **settings}, client)


def sent(code: int = 100, status: int = 201, **extra) -> httpx.Response:
    body = {"code": code, "description": "Your messages have been sent", "smsId": "de4d766d-4faf",
            "invalidNumbers": "", "nbContacts": 1, "nbSms": 1, "balance": 2.81, "cost": 0.19}
    return httpx.Response(status, json={**body, **extra})


def refused(code: int, status: int = 400, description: str = "refused") -> httpx.Response:
    return httpx.Response(status, json={"code": code, "description": description})


class TestRequest:
    @pytest.mark.parametrize(
        ("settings", "sms", "expected"),
        [
            pytest.param({}, SMS, {"to": "33612121515", "text": "Hello"}, id="minimal"),
            pytest.param(
                {"simulate": True},
                Sms(to=("+33612121515",), text="Réunion 9h\nSTOP au 36180", sender="SHOP", low_cost=True),
                {"to": "33612121515", "text": "Réunion 9h\nSTOP au 36180", "from": "SHOP", "simulate": 1},
                id="sender-simulate-low-cost-ignored",
            ),
            pytest.param({}, Sms(to=("+33612121515",), text="Hi", reference="m2s-9-2"),
                         {"to": "33612121515", "text": "Hi", "cliMsgId": "m2s-9-2"}, id="reference-as-cliMsgId"),
        ],
    )
    async def test_fields_sent(self, settings: dict, sms: Sms, expected: dict) -> None:
        """URL, Basic auth and the JSON body are exactly the documented ones."""
        [request] = await requests_of(lambda c: make(c, **settings), sms, sent())
        assert (request.method, str(request.url)) == ("POST", "https://api.allmysms.com/sms/send/")
        assert request.headers["authorization"] == BASIC
        assert request.headers["content-type"] == "application/json"
        assert json.loads(request.content) == expected
        assert KEY not in request.content.decode()

    async def test_one_number_per_call(self) -> None:
        """A batch is a programming error: max_numbers is 1."""
        async with Answers(sent()).client() as client:
            with pytest.raises(ValueError):
                await make(client).send(Sms(to=("+33600000001", "+33600000002"), text="x"))


class TestAnswers:
    @pytest.mark.parametrize("code", [100, 101], ids=["100-sent", "101-scheduled"])
    async def test_accepted_gives_receipt(self, code: int) -> None:
        """100 and 101 map the number to smsId and keep the cost."""
        async with Answers(sent(code)).client() as client:
            receipt = await make(client).send(SMS)
        assert receipt.message_ids == {"+33612121515": "de4d766d-4faf"}
        assert receipt.cost == 0.19 and receipt.raw["nbSms"] == 1

    @pytest.mark.parametrize(
        ("outcome", "error", "code"),
        [
            *(pytest.param(refused(c), PermanentError, c, id=f"{c}")
              for c in (102, 103, 104, 105, 109, 110, 111, 113, 114, 115)),
            pytest.param(refused(104, description=f"A utiliser: 2 Crédits, Disponibles: 0 Crédits {KEY}"),
                         PermanentError, 104, id="104-echoing-the-key"),
            pytest.param(sent(104, status=201), PermanentError, 104, id="2xx-with-error-code"),
            pytest.param(refused(999), PermanentError, 999, id="unknown-code"),
            pytest.param(httpx.Response(401, text="Unauthorized"), PermanentError, 401, id="401"),
            pytest.param(httpx.Response(403, json={"code": 102}), PermanentError, 403, id="403"),
            pytest.param(httpx.Response(404, text="<html>"), PermanentError, 404, id="404-not-json"),
            pytest.param(httpx.Response(201, text="OK"), AmbiguousError, None, id="201-not-json"),
            pytest.param(httpx.Response(200, json={"smsId": "x"}), AmbiguousError, None, id="200-no-code"),
            pytest.param(httpx.Response(200, json="100"), AmbiguousError, None, id="200-json-string"),
        ],
    )
    async def test_failures_are_classified(self, outcome, error: type, code: int | None) -> None:
        """Each failure maps to the exception class the dispatcher relies on; no secret leaks."""
        caught = await raised_by(make, SMS, outcome)
        assert type(caught) is error
        assert (caught.provider, caught.code) == ("amx", code)
        assert KEY not in str(caught) and KEY not in repr(caught.args)

    async def test_description_is_kept(self) -> None:
        """The provider's own wording is part of the error (for the status mail and logs)."""
        answer = refused(104, description="A utiliser: 2 Crédits, Disponibles: 0 Crédits")
        async with Answers(answer).client() as client:
            with pytest.raises(PermanentError, match="insufficient credit - A utiliser: 2 Crédits"):
                await make(client).send(SMS)


class TestConfig:
    def test_defaults_and_capabilities(self) -> None:
        """The documented defaults; one number per call, GSM-7 only."""
        settings = validate("amx", {"type": "allmysms", "login": LOGIN, "api_key": KEY})
        assert (settings.url, settings.timeout, settings.simulate) == ("https://api.allmysms.com", 10.0, False)
        caps = AllmysmsProvider.CAPABILITIES
        assert (caps.max_numbers, caps.unicode) == (1, False)
        assert KEY not in repr(settings)
