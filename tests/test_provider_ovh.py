"""OVH's own answers: signature by hand, STOP clause per category, tags; MockTransport.

The shared rules (timeouts, refused connections, 429, 5xx, secrets) are in test_provider_contract.
"""

from __future__ import annotations

import hashlib
import json

import httpx
import pytest

from bridge.errors import AmbiguousError, PermanentError, TransientError
from bridge.providers.base import Capabilities, Sms
from bridge.providers.ovh import OvhProvider, StopClause, signature
from bridge.providers.registry import validate
from provider_fakes import Answers, raised_by

AK = "ak-application-0001"
AS = "AS-secret-0123"
CK = "CK-consumer-4567"
SERVICE = "sms-ab12345-1"
JOBS = f"https://eu.api.ovh.com/1.0/sms/{SERVICE}/jobs"
LOCAL = 1_700_000_000          # our clock
SERVER = 1_700_000_100         # OVH's clock: 100 s ahead
SMS = Sms(to=("+33612121515",), text="Hello")


def make(client: httpx.AsyncClient, clock: float = LOCAL, **settings) -> OvhProvider:
    base = {"type": "ovh", "application_key": AK, "application_secret": AS, "consumer_key": CK,
            "service_name": SERVICE}
    provider = OvhProvider.from_config("ovh", {**base, **settings}, client)
    provider.clock = lambda: clock
    return provider


def server_time(value: int = SERVER) -> httpx.Response:
    return httpx.Response(200, text=str(value))


def report(valid=("+33612121515",), invalid=(), ids=(123456789,)) -> httpx.Response:
    return httpx.Response(200, json={"ids": list(ids), "invalidReceivers": list(invalid),
                                     "validReceivers": list(valid), "totalCreditsRemoved": 1, "tag": ""})


def ovh_error(status: int, code: str | None, message: str) -> httpx.Response:
    body = {"message": message, "httpCode": f"{status} Error"}
    return httpx.Response(status, json={**body, "errorCode": code} if code else body)


def expected_signature(method: str, url: str, body: str, timestamp: int) -> str:
    """The documented formula: "$1$" + sha1_hex(AS+"+"+CK+"+"+METHOD+"+"+URL+"+"+BODY+"+"+TS)."""
    return "$1$" + hashlib.sha1(f"{AS}+{CK}+{method}+{url}+{body}+{timestamp}".encode()).hexdigest()


class TestSignature:
    def test_known_vector(self) -> None:
        """A value computed by hand (sha1sum of the '+'-joined fields) for fixed inputs."""
        assert signature(AS, CK, "post", JOBS, '{"message": "Hi"}', 1_700_000_000) == (
            "$1$dbbf842f99eb5b6651e19f9c161fd9f7ce296596"
        )
        assert signature(AS, CK, "GET", f"https://eu.api.ovh.com/1.0/sms/{SERVICE}", "", 1_700_000_000) == (
            "$1$8c9fa81ffd26886d2c27814b4cb4e52f47dacb07"
        )

    async def test_request_is_signed_with_server_time(self) -> None:
        """The job carries the four headers; the timestamp is local time + /auth/time offset."""
        answers = Answers(server_time(), report())
        async with answers.client() as client:
            await make(client).send(SMS)
        clock_call, job = answers.requests
        assert (clock_call.method, str(clock_call.url)) == ("GET", "https://eu.api.ovh.com/1.0/auth/time")
        assert "x-ovh-signature" not in clock_call.headers
        assert job.headers["x-ovh-application"] == AK and job.headers["x-ovh-consumer"] == CK
        assert job.headers["x-ovh-timestamp"] == str(SERVER)
        body = job.content.decode()
        assert job.headers["x-ovh-signature"] == expected_signature("POST", JOBS, body, SERVER)

    async def test_server_time_is_read_once(self) -> None:
        """The offset is cached: later calls follow the local clock without asking again."""
        answers = Answers(server_time(), report())
        async with answers.client() as client:
            provider = make(client)
            await provider.send(SMS)
            provider.clock = lambda: LOCAL + 60
            await provider.send(SMS)
        assert [r.url.path for r in answers.requests] == ["/1.0/auth/time", f"/1.0/sms/{SERVICE}/jobs",
                                                          f"/1.0/sms/{SERVICE}/jobs"]
        assert answers.requests[2].headers["x-ovh-timestamp"] == str(SERVER + 60)

    async def test_invalid_signature_reads_the_clock_again(self) -> None:
        """INVALID_SIGNATURE is refused for good, and the next call re-reads /auth/time."""
        answers = Answers(server_time(), ovh_error(400, "INVALID_SIGNATURE", "Invalid signature"),
                          server_time(SERVER + 5), report())
        async with answers.client() as client:
            provider = make(client)
            with pytest.raises(PermanentError, match="INVALID_SIGNATURE"):
                await provider.send(SMS)
            await provider.send(SMS)
        assert [r.url.path for r in answers.requests].count("/1.0/auth/time") == 2
        assert answers.requests[3].headers["x-ovh-timestamp"] == str(SERVER + 5)


class TestRequest:
    @pytest.mark.parametrize(
        ("settings", "sms", "expected"),
        [
            pytest.param({}, SMS, {"receivers": ["+33612121515"], "message": "Hello", "charset": "UTF-8",
                                   "coding": "7bit", "priority": "high", "noStopClause": True,
                                   "senderForResponse": True}, id="short-number-transactional"),
            pytest.param({"sender": "MYSHOP"},
                         Sms(to=("+33612121515",), text="Promo STOP au 36180", category="marketing",
                             reference="m2s-5-1"),
                         {"receivers": ["+33612121515"], "message": "Promo STOP au 36180", "charset": "UTF-8",
                          "coding": "7bit", "priority": "high", "noStopClause": False, "senderForResponse": False,
                          "sender": "MYSHOP", "tag": "m2s-5-1"},
                         id="marketing-keeps-the-stop-clause-and-tag"),
            pytest.param({"no_stop_clause": {"marketing": True}},
                         Sms(to=("+33612121515",), text="Promo", category="marketing"),
                         {"receivers": ["+33612121515"], "message": "Promo", "charset": "UTF-8", "coding": "7bit",
                          "priority": "high", "noStopClause": True, "senderForResponse": True},
                         id="marketing-override"),
            pytest.param({"sender": "MYSHOP", "no_stop_clause": True},
                         Sms(to=("+33612121515",), text="Été ☀", unicode=True),
                         {"receivers": ["+33612121515"], "message": "Été ☀", "charset": "UTF-8", "coding": "8bit",
                          "priority": "high", "noStopClause": True, "senderForResponse": False, "sender": "MYSHOP"},
                         id="configured-sender-unicode-no-stop"),
            pytest.param({"sender": "MYSHOP"}, Sms(to=("+33612121515",), text="Hi", sender="OTHER"),
                         {"receivers": ["+33612121515"], "message": "Hi", "charset": "UTF-8", "coding": "7bit",
                          "priority": "high", "noStopClause": True, "senderForResponse": False, "sender": "OTHER"},
                         id="sms-sender-wins"),
        ],
    )
    async def test_fields_sent(self, settings: dict, sms: Sms, expected: dict) -> None:
        """The JSON job carries exactly the documented fields."""
        answers = Answers(server_time(), report())
        async with answers.client() as client:
            await make(client, **settings).send(sms)
        job = answers.requests[1]
        assert (job.method, str(job.url)) == ("POST", JOBS)
        assert job.headers["content-type"].startswith("application/json")
        assert json.loads(job.content) == expected

    async def test_custom_url(self) -> None:
        """``url`` selects another OVH region, trailing slash or not."""
        answers = Answers(server_time(), report())
        async with answers.client() as client:
            await make(client, url="https://ca.api.ovh.com/1.0/").send(SMS)
        assert [str(r.url) for r in answers.requests] == [
            "https://ca.api.ovh.com/1.0/auth/time", f"https://ca.api.ovh.com/1.0/sms/{SERVICE}/jobs"]


class TestAnswers:
    async def test_success_gives_receipt(self) -> None:
        """The job id is kept per number; credits stay in ``raw`` (they are not money)."""
        async with Answers(server_time(), report()).client() as client:
            receipt = await make(client).send(SMS)
        assert receipt.message_ids == {"+33612121515": "123456789"}
        assert receipt.rejected == {} and receipt.cost is None
        assert receipt.raw["totalCreditsRemoved"] == 1

    async def test_bulk_answer_splits_valid_and_invalid(self) -> None:
        """With several receivers (max_numbers raised), invalid ones are listed as rejected."""
        answer = report(valid=["+33612121515"], invalid=["0033699999999"], ids=[7])
        async with Answers(server_time(), answer).client() as client:
            provider = make(client)
            provider.capabilities = Capabilities(max_numbers=2)
            receipt = await provider.send(Sms(to=("+33612121515", "+33699999999"), text="Hi"))
        assert receipt.message_ids == {"+33612121515": "7"}
        assert set(receipt.rejected) == {"+33699999999"}

    @pytest.mark.parametrize(
        ("outcome", "error", "code"),
        [
            pytest.param(report(valid=[], invalid=["+33612121515"], ids=[]), PermanentError, "invalidReceivers",
                         id="invalid-receiver"),
            pytest.param(ovh_error(400, "INVALID_SIGNATURE", "Invalid signature"), PermanentError,
                         "INVALID_SIGNATURE", id="400-invalid-signature"),
            pytest.param(ovh_error(403, "INVALID_CREDENTIAL", f"This credential {CK} is not valid"),
                         PermanentError, "INVALID_CREDENTIAL", id="403-bad-credential-echoed"),
            pytest.param(ovh_error(403, "NOT_GRANTED_CALL", "This call has not been granted"), PermanentError,
                         "NOT_GRANTED_CALL", id="403-not-granted"),
            pytest.param(ovh_error(400, None, "must have less than 14 chars for value sender"), PermanentError,
                         400, id="400-bad-parameter"),
            pytest.param(ovh_error(404, None, "The requested object (serviceName = x) does not exist"),
                         PermanentError, 404, id="404-unknown-service"),
            pytest.param(httpx.Response(402, text="<html>"), PermanentError, 402, id="402-not-json"),
            pytest.param(httpx.Response(200, text="<html>ok</html>"), AmbiguousError, None, id="200-not-json"),
            pytest.param(httpx.Response(200, json={"ids": [1]}), AmbiguousError, None, id="200-no-receivers"),
            pytest.param(report(valid=[], invalid=[], ids=[]), AmbiguousError, None, id="200-empty-report"),
        ],
    )
    async def test_failures_are_classified(self, outcome, error: type, code) -> None:
        """Each job answer maps to the class the dispatcher relies on; no secret leaks."""
        caught = await raised_by(make, SMS, server_time(), outcome)
        assert type(caught) is error and (caught.provider, caught.code) == ("ovh", code)
        assert AS not in str(caught) and CK not in str(caught)

    @pytest.mark.parametrize(
        ("outcome", "error"),
        [
            pytest.param(httpx.ConnectError, TransientError, id="connect-error"),
            pytest.param(httpx.ReadTimeout, TransientError, id="read-timeout-is-not-ambiguous"),
            pytest.param(httpx.Response(500), TransientError, id="500-is-not-ambiguous"),
            pytest.param(httpx.Response(404, text="not found"), PermanentError, id="404-wrong-url"),
            pytest.param(httpx.Response(200, text="soon"), PermanentError, id="not-a-number"),
        ],
    )
    async def test_clock_failures_never_sent_anything(self, outcome, error: type) -> None:
        """A failed /auth/time means no job was posted: never ambiguous."""
        answers = Answers(outcome)
        async with answers.client() as client:
            with pytest.raises(error):
                await make(client).send(SMS)
        assert [r.url.path for r in answers.requests] == ["/1.0/auth/time"]


class TestCheck:
    async def test_credits_left(self) -> None:
        """``check()`` reads creditsLeft from the signed ``GET /sms/{service}``."""
        answers = Answers(server_time(), httpx.Response(200, json={"creditsLeft": 42.5, "name": SERVICE}))
        async with answers.client() as client:
            assert await make(client).check() == f"42.5 credits left on {SERVICE}"
        account = answers.requests[1]
        assert account.method == "GET" and account.content == b""
        assert account.headers["x-ovh-signature"] == expected_signature(
            "GET", f"https://eu.api.ovh.com/1.0/sms/{SERVICE}", "", SERVER)

    async def test_refused_credentials(self) -> None:
        """Bad keys make ``check()`` raise a PermanentError without the secrets."""
        refusal = ovh_error(403, "INVALID_CREDENTIAL", f"bad {AS}")
        async with Answers(server_time(), refusal).client() as client:
            with pytest.raises(PermanentError) as caught:
                await make(client).check()
        assert AS not in str(caught.value)


class TestConfig:
    def test_defaults_and_capabilities(self) -> None:
        """Documented defaults: transactional without, marketing with OVH's STOP clause."""
        full = {"type": "ovh", "application_key": AK, "application_secret": AS, "consumer_key": CK,
                "service_name": SERVICE}
        settings = validate("ovh", full)
        assert (settings.url, settings.timeout, settings.sender) == ("https://eu.api.ovh.com/1.0", 10.0, None)
        assert settings.no_stop_clause == StopClause(transactional=True, marketing=False)
        assert validate("ovh", {**full, "no_stop_clause": False}).no_stop_clause == StopClause(False, False)
        caps = OvhProvider.CAPABILITIES
        assert (caps.max_numbers, caps.unicode) == (1, True)
        assert AS not in repr(settings) and CK not in repr(settings)


class TestReconcile:
    @pytest.mark.parametrize(
        ("ids", "expected"),
        [([987], ("sent", "987")), ([], None)],
        ids=["in-outgoing", "not-yet-cannot-tell"],
    )
    async def test_by_tag(self, ids: list, expected) -> None:
        """``GET /sms/{service}/outgoing?tag=<reference>``, signed; empty is "cannot tell"."""
        answers = Answers(server_time(), httpx.Response(200, json=ids))
        async with answers.client() as client:
            sms = Sms(to=("+33612121515",), text="Hi", reference="m2s-5-1")
            assert await make(client).reconcile(sms, 0.0, None) == expected
        lookup = answers.requests[1]
        url = f"https://eu.api.ovh.com/1.0/sms/{SERVICE}/outgoing?tag=m2s-5-1"
        assert (lookup.method, str(lookup.url)) == ("GET", url)
        assert lookup.headers["x-ovh-signature"] == expected_signature("GET", url, "", SERVER)

    async def test_without_reference_cannot_tell(self) -> None:
        """No reference was sent as tag: nothing to look up."""
        answers = Answers(server_time())
        async with answers.client() as client:
            assert await make(client).reconcile(SMS, 0.0, "123") is None
        assert answers.requests == []
