"""Vonage provider: its own answers over MockTransport; shared rules: test_provider_contract."""

from __future__ import annotations

from urllib.parse import parse_qs

import httpx
import pytest

from bridge.errors import AmbiguousError, PermanentError, RecipientRefused, TransientError
from bridge.providers.base import Sms
from bridge.providers.vonage import VonageProvider
from bridge.providers.registry import validate
from provider_fakes import Answers, raised_by, requests_of

KEY = "abcd1234"
SECRET = "vonage-SECRET-0123456789"
SMS = Sms(to=("+33612121515",), text="Hello")


BASE = {"type": "vonage", "api_key": KEY, "api_secret": SECRET, "from": "ACME"}


def make(client: httpx.AsyncClient, **settings) -> VonageProvider:
    full = {k: v for k, v in {**BASE, **settings}.items() if v is not None}
    return VonageProvider.from_config("vg", full, client)


def part(status: str = "0", **extra) -> dict:
    if status != "0":
        return {"status": status, "error-text": extra.pop("error_text", "refused"), **extra}
    return {"to": "33612121515", "message-id": extra.pop("id", "0A0000000123ABCD1"), "status": "0",
            "remaining-balance": "3.14159265", "message-price": extra.pop("price", "0.03330000"),
            "network": "20801", **extra}


def answer(*parts: dict) -> httpx.Response:
    return httpx.Response(200, json={"message-count": str(len(parts)), "messages": list(parts)})


def form(request: httpx.Request) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(request.content.decode()).items()}


class TestRequest:
    @pytest.mark.parametrize(
        ("sms", "expected"),
        [
            pytest.param(SMS, {"api_key": KEY, "api_secret": SECRET, "from": "ACME", "to": "33612121515",
                               "text": "Hello"}, id="minimal"),
            pytest.param(Sms(to=("+33612121515",), text="Été ☀ & co", sender="SHOP", unicode=True,
                             reference="job-7"),
                         {"api_key": KEY, "api_secret": SECRET, "from": "SHOP", "to": "33612121515",
                          "text": "Été ☀ & co", "type": "unicode", "client-ref": "job-7"}, id="sender-unicode-ref"),
        ],
    )
    async def test_fields_sent(self, sms: Sms, expected: dict) -> None:
        """URL and the form body are exactly the documented ones (``to`` without ``+``)."""
        [request] = await requests_of(make, sms, answer(part()))
        assert (request.method, str(request.url)) == ("POST", "https://rest.nexmo.com/sms/json")
        assert request.headers["content-type"] == "application/x-www-form-urlencoded"
        assert form(request) == expected
        assert SECRET not in str(request.url)


class TestAnswers:
    async def test_success_gives_receipt(self) -> None:
        """Status 0: the message id and the price are kept."""
        async with Answers(answer(part())).client() as client:
            receipt = await make(client).send(SMS)
        assert receipt.message_ids == {"+33612121515": "0A0000000123ABCD1"}
        assert receipt.cost == pytest.approx(0.0333)

    async def test_long_text_sums_its_parts(self) -> None:
        """A concatenated text answers one entry per part: first id kept, prices summed."""
        async with Answers(answer(part(id="A1", price="0.03"), part(id="A2", price="0.03"))).client() as client:
            receipt = await make(client).send(SMS)
        assert receipt.message_ids == {"+33612121515": "A1"}
        assert receipt.cost == pytest.approx(0.06) and len(receipt.raw["messages"]) == 2

    @pytest.mark.parametrize(
        ("status", "error"),
        [
            ("1", TransientError), ("10", TransientError), ("5", AmbiguousError),
            ("2", PermanentError), ("3", PermanentError), ("4", PermanentError), ("6", PermanentError),
            ("7", RecipientRefused), ("8", PermanentError), ("9", PermanentError), ("11", PermanentError),
            ("12", PermanentError), ("14", PermanentError), ("15", PermanentError), ("22", PermanentError),
            ("23", PermanentError), ("29", PermanentError), ("32", PermanentError), ("33", PermanentError),
            ("99", PermanentError),
        ],
        ids=["1-throttled", "10-binds", "5-internal", "2-missing", "3-invalid", "4-credentials",
             "6-invalid-message", "7-barred", "8-account-barred", "9-no-credit", "11-no-http", "12-too-long",
             "14-signature", "15-sender", "22-network", "23-callback", "29-whitelist", "32-sig-and-secret",
             "33-deactivated", "unknown"],
    )
    async def test_documented_statuses(self, status: str, error: type) -> None:
        """Every documented non-zero status maps to its class; the code is the status."""
        async with Answers(answer(part(status, error_text=f"Bad Credentials {SECRET}"))).client() as client:
            with pytest.raises(error) as caught:
                await make(client).send(SMS)
        assert type(caught.value) is error and (caught.value.provider, caught.value.code) == ("vg", int(status))
        assert SECRET not in str(caught.value)

    @pytest.mark.parametrize(
        ("outcome", "error", "code"),
        [
            pytest.param(answer(part(), part("1")), AmbiguousError, 1, id="some-parts-accepted"),
            pytest.param(answer({"message-id": "x"}), AmbiguousError, None, id="part-without-status"),
            pytest.param(httpx.Response(401, json={"type": "unauthorized"}), PermanentError, 401, id="401"),
            pytest.param(httpx.Response(200, text="<html>"), AmbiguousError, None, id="200-not-json"),
            pytest.param(httpx.Response(200, json={"message-count": "0", "messages": []}), AmbiguousError, None,
                         id="200-no-messages"),
        ],
    )
    async def test_failures_are_classified(self, outcome, error: type, code) -> None:
        """Each failure maps to the exception class the dispatcher relies on; no secret leaks."""
        caught = await raised_by(make, SMS, outcome)
        assert type(caught) is error and (caught.provider, caught.code) == ("vg", code)
        assert SECRET not in str(caught) and SECRET not in repr(caught.args)


class TestCheck:
    async def test_balance(self) -> None:
        """``check()`` reads the balance; the secret travels in the query only."""
        answers = Answers(httpx.Response(200, json={"value": 10.28, "autoReload": False}))
        async with answers.client() as client:
            assert await make(client).check() == "balance 10.28 EUR"
        [request] = answers.requests
        assert request.url.path == "/account/get-balance"
        assert dict(request.url.params) == {"api_key": KEY, "api_secret": SECRET}

    @pytest.mark.parametrize(
        ("outcome", "error"),
        [(httpx.Response(401), PermanentError), (httpx.Response(403, text=SECRET), PermanentError)],
        ids=["401", "403-echoing"],
    )
    async def test_failures_hide_the_secret(self, outcome, error: type) -> None:
        """Whatever fails, the query-string secret is not in the exception."""
        async with Answers(outcome).client() as client:
            with pytest.raises(error) as caught:
                await make(client).check()
        assert SECRET not in str(caught.value) and caught.value.__cause__ is None


class TestConfig:
    def test_defaults_and_capabilities(self) -> None:
        """Documented defaults and capability values."""
        settings = validate("vg", BASE)
        assert (settings.url, settings.timeout, settings.sender) == ("https://rest.nexmo.com", 10.0, "ACME")
        caps = VonageProvider.CAPABILITIES
        assert (caps.max_numbers, caps.unicode, caps.default_rate) == (1, True, 30.0)
        assert SECRET not in repr(settings)
