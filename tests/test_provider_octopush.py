"""Octopush provider: its own answers over MockTransport; shared rules: test_provider_contract."""

from __future__ import annotations

import json

import httpx
import pytest

from bridge.errors import AmbiguousError, PermanentError
from bridge.providers.base import Sms
from bridge.providers.octopush import OctopushProvider
from bridge.providers.registry import validate
from provider_fakes import Answers, raised_by, requests_of

LOGIN = "ops@example.org"
KEY = "octo-SECRET-key-0123456789"
SMS = Sms(to=("+33612121515",), text="Hello")


def make(client: httpx.AsyncClient, **settings) -> OctopushProvider:
    base = {"type": "octopush", "login": LOGIN, "api_key": KEY}
    return OctopushProvider.from_config("octo", {**base, **settings}, client)


def sent(**extra) -> httpx.Response:
    body = {"sms_ticket": "sms_5fec89fe97109", "number_of_contacts": 1, "total_cost": 0.0333,
            "number_of_sms_needed": 1, "residual_credit": 99.5}
    return httpx.Response(201, json={**body, **extra})


def refused(status: int, code: int | None = None, message: str = "refused") -> httpx.Response:
    body = {"message": message} if code is None else {"code": code, "message": message}
    return httpx.Response(status, json=body)


class TestRequest:
    @pytest.mark.parametrize(
        ("settings", "sms", "expected"),
        [
            pytest.param(
                {}, SMS,
                {"recipients": [{"phone_number": "+33612121515"}], "text": "Hello", "type": "sms_premium",
                 "purpose": "alert", "with_replies": False, "auto_optimize_text": False},
                id="minimal",
            ),
            pytest.param(
                {"purpose": "wholesale", "with_replies": True, "simulate": True},
                Sms(to=("+33612121515", "+33614141515"), text="Promo -10 % STOP au 36180", sender="SHOP",
                    low_cost=True),
                {"recipients": [{"phone_number": "+33612121515"}, {"phone_number": "+33614141515"}],
                 "text": "Promo -10 % STOP au 36180", "type": "sms_low_cost", "purpose": "wholesale",
                 "with_replies": True, "auto_optimize_text": False, "sender": "SHOP", "simulation_mode": True},
                id="batch-low-cost-sender-options",
            ),
            pytest.param(
                {}, Sms(to=SMS.to, text="Café ☕", unicode=True),
                {"recipients": [{"phone_number": "+33612121515"}], "text": "Café ☕", "type": "sms_premium",
                 "purpose": "alert", "with_replies": False, "auto_optimize_text": False},
                id="unicode-sent-as-is",
            ),
            pytest.param(
                {}, Sms(to=SMS.to, text="Promo STOP au 36180", category="marketing"),
                {"recipients": [{"phone_number": "+33612121515"}], "text": "Promo STOP au 36180",
                 "type": "sms_premium", "purpose": "wholesale", "with_replies": False, "auto_optimize_text": False},
                id="marketing-is-wholesale",
            ),
            pytest.param(
                {"purpose": "alert"}, Sms(to=SMS.to, text="Promo STOP au 36180", category="marketing"),
                {"recipients": [{"phone_number": "+33612121515"}], "text": "Promo STOP au 36180",
                 "type": "sms_premium", "purpose": "alert", "with_replies": False, "auto_optimize_text": False},
                id="configured-purpose-wins",
            ),
        ],
    )
    async def test_fields_sent(self, settings: dict, sms: Sms, expected: dict) -> None:
        """URL, api-login/api-key headers and the JSON body are exactly the documented ones."""
        [request] = await requests_of(lambda c: make(c, **settings), sms, sent())
        assert (request.method, str(request.url)) == ("POST", "https://api.octopush.com/v1/public/sms-campaign/send")
        assert (request.headers["api-login"], request.headers["api-key"]) == (LOGIN, KEY)
        assert json.loads(request.content) == expected
        assert KEY not in request.content.decode()

    @pytest.mark.parametrize("count", [0, 501], ids=["none", "over-500"])
    async def test_batch_limits(self, count: int) -> None:
        """1 to 500 numbers per call; anything else is a programming error."""
        numbers = tuple(f"+336{i:08d}" for i in range(count))
        async with Answers(sent()).client() as client:
            with pytest.raises(ValueError):
                await make(client).send(Sms(to=numbers, text="x"))

    async def test_500_numbers_in_one_call(self) -> None:
        """The documented maximum goes out in a single campaign, every number sharing the ticket."""
        numbers = tuple(f"+336{i:08d}" for i in range(500))
        answers = Answers(sent(number_of_contacts=500))
        async with answers.client() as client:
            receipt = await make(client).send(Sms(to=numbers, text="x"))
        assert len(answers.requests) == 1 and len(json.loads(answers.requests[0].content)["recipients"]) == 500
        assert set(receipt.message_ids) == set(numbers) and set(receipt.message_ids.values()) == {"sms_5fec89fe97109"}

    @pytest.mark.parametrize("text", ["", "x" * 1225], ids=["empty", "over-1224"])
    async def test_text_length_refused_before_any_call(self, text: str) -> None:
        """Texts outside 1-1224 characters are refused without a request."""
        answers = Answers(sent())
        async with answers.client() as client:
            with pytest.raises(PermanentError, match="1-1224 characters"):
                await make(client).send(Sms(to=SMS.to, text=text))
        assert answers.requests == []


class TestAnswers:
    async def test_success_gives_receipt(self) -> None:
        """Every number maps to the SMS ticket; total_cost is kept."""
        async with Answers(sent()).client() as client:
            receipt = await make(client).send(SMS)
        assert receipt.message_ids == {"+33612121515": "sms_5fec89fe97109"}
        assert receipt.cost == 0.0333 and receipt.raw["residual_credit"] == 99.5

    @pytest.mark.parametrize(
        ("outcome", "error_class", "code"),
        [
            pytest.param(refused(401, 101, f"bad key {KEY}"), PermanentError, 401, id="401-echoing-key"),
            pytest.param(refused(403), PermanentError, 403, id="403"),
            pytest.param(refused(400, 104, "no credit"), PermanentError, 104, id="104-no-credit"),
            pytest.param(refused(400, 105), PermanentError, 105, id="105-order-pending"),
            pytest.param(refused(400, 106, "sender"), PermanentError, 106, id="106-bad-sender"),
            pytest.param(refused(400, 113), PermanentError, 113, id="113-account-not-validated"),
            pytest.param(refused(400, 117), PermanentError, 117, id="117-no-valid-number"),
            pytest.param(refused(400, 121), PermanentError, 121, id="121-stop-mention"),
            pytest.param(refused(422, 999), PermanentError, 999, id="unknown-code"),
            pytest.param(httpx.Response(400, json={"error_code": "117"}), PermanentError, 117, id="legacy-field"),
            pytest.param(refused(400), PermanentError, 400, id="400-no-code"),
            pytest.param(httpx.Response(404, text="<html>"), PermanentError, 404, id="404-not-json"),
            pytest.param(httpx.Response(201, text="<html>ok</html>"), AmbiguousError, None, id="201-not-json"),
            pytest.param(httpx.Response(201, json={"total_cost": 1}), AmbiguousError, None, id="201-no-ticket"),
            pytest.param(httpx.Response(200, json=[1]), AmbiguousError, None, id="200-json-list"),
        ],
    )
    async def test_failures_are_classified(self, outcome, error_class: type, code) -> None:
        """Each failure maps to the exception class the dispatcher relies on; no secret leaks."""
        caught = await raised_by(make, SMS, outcome)
        assert type(caught) is error_class
        assert (caught.provider, caught.code) == ("octo", code)
        assert KEY not in str(caught) and KEY not in repr(caught.args)

    async def test_description_is_kept(self) -> None:
        """The code's meaning and Octopush's own wording are part of the error."""
        async with Answers(refused(400, 104, "Crédit insuffisant")).client() as client:
            with pytest.raises(PermanentError, match=r"code 104: out of credit \(HTTP 400\) - Crédit insuffisant"):
                await make(client).send(SMS)


class TestCheck:
    @pytest.mark.parametrize(
        ("answer", "verdict"),
        [
            ({"amount": 12.54, "unit": "euros"}, "credentials accepted; balance 12.54 euros"),
            ({"amount": 204, "unit": "sms_premium", "wallet_packs": []},
             "credentials accepted; balance 204 sms_premium"),
            ({}, "credentials accepted"),
        ],
        ids=["euros", "sms-units", "no-amount"],
    )
    async def test_balance(self, answer: dict, verdict: str) -> None:
        """``GET /wallet/check-balance`` with the account headers gives a one-line verdict."""
        answers = Answers(httpx.Response(200, json=answer))
        async with answers.client() as client:
            assert await make(client).check() == verdict
        [request] = answers.requests
        assert request.method == "GET"
        assert str(request.url) == "https://api.octopush.com/v1/public/wallet/check-balance"
        assert (request.headers["api-login"], request.headers["api-key"]) == (LOGIN, KEY)

    async def test_refused_credentials(self) -> None:
        """Refused credentials fail the check, without the key in the message."""
        async with Answers(refused(401, 101, KEY)).client() as client:
            with pytest.raises(PermanentError) as caught:
                await make(client).check()
        assert KEY not in str(caught.value)


class TestConfig:
    def test_defaults_and_capabilities(self) -> None:
        """Documented defaults; 500 numbers and 1224 characters (8 parts) per call."""
        settings = validate("octo", {"type": "octopush", "login": LOGIN, "api_key": KEY})
        assert settings.url == "https://api.octopush.com/v1/public"
        assert (settings.timeout, settings.purpose) == (10.0, "auto")
        assert (settings.with_replies, settings.simulate) == (False, False)
        caps = OctopushProvider.CAPABILITIES
        assert (caps.max_numbers, caps.unicode, caps.max_parts) == (500, True, 8)
        assert 8 * 153 == 1224 and KEY not in repr(settings)
