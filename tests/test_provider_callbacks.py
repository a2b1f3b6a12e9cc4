"""Webhooks of the built-in providers (``parse_callback``) and the callback URLs their sends carry.

Each case is a request shaped as the provider's documentation shows it; its source:

- Twilio: https://www.twilio.com/docs/messaging/guides/track-outbound-message-status,
  https://www.twilio.com/docs/messaging/guides/webhook-request and (signatures, with the
  worked example pinned below) https://www.twilio.com/docs/usage/webhooks/webhooks-security
- Vonage: ``DeliveryReceipt``/``InboundMessage`` of the SMS API spec (Nexmo/api-specification
  ``definitions/sms.yml``), https://developer.vonage.com/messaging/sms/guides/delivery-receipts
- Octopush: https://dev.octopush.com/en/sms-gateway-api-documentation/callbacks/acknowledge-receipt
  and https://dev.octopush.com/en/sms-gateway-api-documentation/inbounds/
- SMSPartner replies: https://www.docpartner.dev/api/sms-partner/gestion-des-webhooks;
  SMSPartner delivery reports: not found, assumed (see the module docstring)
- Allmysms delivery reports: not documented where we could read; fields of an independent
  integration (EsupPortail/esup-smsu-api); Allmysms replies: not found, assumed
- OVH: the former "CallBack" documentation quoted in https://github.com/ovh/docs/issues/1496
  (unofficial)
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridge.providers.allmysms import AllmysmsProvider
from bridge.providers.base import Callback, CallbackForbidden, CallbackParser, CallbackRequest, CallbackUrls, Sms
from bridge.providers.octopush import OctopushProvider
from bridge.providers.ovh import OvhProvider
from bridge.providers.smspartner import SmsPartnerProvider
from bridge.providers.twilio import TwilioProvider, signature
from bridge.providers.vonage import VonageProvider
from bridge.providers.webhooks import e164
from provider_fakes import requests_of

PUBLIC = "https://sms.example.org/callbacks/s3cret"
DLR_URL, INBOUND_URL = f"{PUBLIC}/dlr", f"{PUBLIC}/inbound"
URLS = CallbackUrls(dlr=DLR_URL, inbound=INBOUND_URL)
TWILIO_SID = "AC" + "0123456789abcdef" * 2
TWILIO_TOKEN = "twilio-SECRET-token-0123456789"
SMS_SID = "SM" + "1" * 32
SMS = Sms(to=("+33612121515",), text="Hello", reference="m2s-7-1")

SETTINGS: dict[str, tuple[type, dict[str, Any]]] = {
    "smspartner": (SmsPartnerProvider, {"api_key": "sp-key"}),
    "allmysms": (AllmysmsProvider, {"login": "me", "api_key": "am-key"}),
    "octopush": (OctopushProvider, {"login": "me@example.org", "api_key": "oc-key"}),
    "twilio": (TwilioProvider, {"account_sid": TWILIO_SID, "auth_token": TWILIO_TOKEN, "from": "+15005550006"}),
    "vonage": (VonageProvider, {"api_key": "abcd1234", "api_secret": "vonage-secret-01", "from": "ACME"}),
    "ovh": (OvhProvider, {"application_key": "ak", "application_secret": "as", "consumer_key": "ck",
                          "service_name": "sms-ab12345-1"}),
}


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    """A client that no parse needs (providers are built with one); sends answer 500."""
    async with httpx.AsyncClient(transport=httpx.MockTransport(lambda r: httpx.Response(500))) as c:
        yield c


def provider(kind: str, client: httpx.AsyncClient, **settings: Any) -> Any:
    """A ``kind`` provider built from test settings, as the daemon builds it."""
    cls, base = SETTINGS[kind]
    return cls.from_config(kind, {"type": kind, **base, **settings}, client)


# -- requests as the bridge's listener hands them over ---------------------------------------

def form(fields: dict[str, str], url: str = DLR_URL, headers: dict[str, str] | None = None) -> CallbackRequest:
    """A form POST (``application/x-www-form-urlencoded``)."""
    return CallbackRequest(method="POST", url=url, headers=headers or {}, query={},
                           body=urlencode(fields).encode(), content_type="application/x-www-form-urlencoded",
                           fields=dict(fields))


def json_post(body: dict[str, Any], url: str = DLR_URL) -> CallbackRequest:
    """A JSON POST."""
    return CallbackRequest(method="POST", url=url, headers={}, query={}, body=json.dumps(body).encode(),
                           content_type="application/json", fields=dict(body))


def get(query: dict[str, str], url: str = DLR_URL) -> CallbackRequest:
    """A GET whose parameters are all in the query string."""
    return CallbackRequest(method="GET", url=f"{url}?{urlencode(query)}", headers={}, query=dict(query),
                           body=b"", content_type="", fields=dict(query))


def twilio_signed(fields: dict[str, str], url: str = DLR_URL, token: str = TWILIO_TOKEN) -> CallbackRequest:
    """A form POST carrying the X-Twilio-Signature Twilio would compute with ``token``."""
    return form(fields, url, {"X-Twilio-Signature": signature(token, url, sorted(fields.items()))})


@dataclass(frozen=True)
class Case:
    provider: str
    request: CallbackRequest
    expected: list[Callback]


def delivery(**kw: Any) -> Callback:
    return Callback(kind="delivery", **kw)


def inbound(**kw: Any) -> Callback:
    return Callback(kind="inbound", **kw)


TWILIO_STATUS = {"MessageSid": SMS_SID, "SmsSid": SMS_SID, "AccountSid": TWILIO_SID, "From": "+15005550006",
                 "To": "+33612121515", "ApiVersion": "2010-04-01"}
VONAGE_DLR = {"msisdn": "447700900000", "to": "ACME", "network-code": "23410", "messageId": "0A0000001234567B",
              "price": "0.03330000", "scts": "2001011400", "message-timestamp": "2020-01-01 12:00:00",
              "api-key": "abcd1234"}

CASES = [
    # --- SMSPartner: delivery reports (assumed shape) and documented replies
    pytest.param(Case("smspartner", json_post({"msgId": 307, "phoneNumber": "+33612121515", "status": "Delivered",
                                               "tag": "m2s-7-1"}),
                      [delivery(message_id="307", number="+33612121515", reference="m2s-7-1",
                                state="delivered", status="Delivered")]), id="smspartner-dlr-delivered"),
    pytest.param(Case("smspartner", get({"msgId": "307", "phoneNumber": "0612121515", "status": "Not delivered"}),
                      [delivery(message_id="307", number="+33612121515", state="undelivered",
                                status="Not delivered", reason="Not delivered")]), id="smspartner-dlr-not-delivered"),
    pytest.param(Case("smspartner", json_post({"msgId": 307, "phoneNumber": "+33612121515", "status": "Waiting"}),
                      [delivery(message_id="307", number="+33612121515", status="Waiting")]),
                 id="smspartner-dlr-waiting"),
    pytest.param(Case("smspartner", json_post({"type": "response", "phone_number": "+33612121515", "text": "Oui",
                                               "message_id": 307}, INBOUND_URL),
                      [inbound(number="+33612121515", text="Oui", status="response", in_reply_to="307")]),
                 id="smspartner-short-code-reply"),
    pytest.param(Case("smspartner", json_post({"type": "stop", "phone_number": "+33612121515", "text": "Stop",
                                               "message_id": 307}, INBOUND_URL),
                      [inbound(number="+33612121515", text="Stop", status="stop", in_reply_to="307")]),
                 id="smspartner-short-code-stop"),
    pytest.param(Case("smspartner", json_post({"msisdn": "33612121515", "to": "33756000000",
                                               "messageId": "1235-1234-1233-4665", "text": "Test", "type": "text",
                                               "keyword": "TEST", "message-timestamp": "2016-03-10 09:51:46"},
                                              INBOUND_URL),
                      [inbound(message_id="1235-1234-1233-4665", number="+33612121515", to="+33756000000",
                               text="Test", status="received")]), id="smspartner-long-number-reply"),
    # --- Allmysms: delivery reports (independent integration's fields), replies (assumed)
    pytest.param(Case("allmysms", form({"smsId": "de4d766d-4faf", "phoneNumber": "33612121515", "status": "1",
                                        "statusText": "Delivered", "receptionDate": "2026-11-21 10:00:00"}),
                      [delivery(message_id="de4d766d-4faf", number="+33612121515", state="delivered", status="1")]),
                 id="allmysms-dlr-delivered"),
    pytest.param(Case("allmysms", get({"smsId": "de4d766d-4faf", "phoneNumber": "33612121515", "status": "3",
                                       "statusText": "Unknown number", "cliMsgId": "m2s-7-1"}),
                      [delivery(message_id="de4d766d-4faf", number="+33612121515", reference="m2s-7-1",
                                state="undelivered", status="3", reason="status 3 - Unknown number")]),
                 id="allmysms-dlr-failed"),
    pytest.param(Case("allmysms", form({"phoneNumber": "33612121515", "message": "Oui merci",
                                        "smsId": "de4d766d-4faf"}, INBOUND_URL),
                      [inbound(number="+33612121515", text="Oui merci", in_reply_to="de4d766d-4faf",
                               status="received")]), id="allmysms-reply"),
    # --- Octopush
    pytest.param(Case("octopush", json_post({"channel": "sms", "message_id": "sms_5fa275dbf21dc",
                                             "number": "+33600000000", "status": "DELIVERED",
                                             "delivery_date": "2020-11-04 11:11:45"}),
                      [delivery(message_id="sms_5fa275dbf21dc", number="+33600000000", state="delivered",
                                status="DELIVERED")]), id="octopush-delivered"),
    pytest.param(Case("octopush", json_post({"message_id": "sms_5fa275dbf21dc", "number": "+33600000000",
                                             "status": "BAD_DESTINATION", "delivery_date": "2020-11-04 11:11:45"}),
                      [delivery(message_id="sms_5fa275dbf21dc", number="+33600000000", state="undelivered",
                                status="BAD_DESTINATION", reason="BAD_DESTINATION")]), id="octopush-bad-destination"),
    pytest.param(Case("octopush", json_post({"message_id": "sms_5fa275dbf21dc", "number": "+33600000000",
                                             "status": "ACK", "delivery_date": "2020-11-04 11:11:45"}),
                      [delivery(message_id="sms_5fa275dbf21dc", number="+33600000000", status="ACK")]),
                 id="octopush-ack-intermediate"),
    pytest.param(Case("octopush", json_post({"message_id": "sms_5fa275dbf21dc", "number": "+33600000000",
                                             "text": "some reply", "sim_card_number": "12345",
                                             "reception_date": "2020-11-04 11:11:45"}, INBOUND_URL),
                      [inbound(number="+33600000000", text="some reply", to="12345",
                               in_reply_to="sms_5fa275dbf21dc", status="received")]), id="octopush-inbound"),
    pytest.param(Case("octopush", json_post({"channel": "voice_sms", "message_id": "vsms_1", "number": "+33600000000",
                                             "status": "DELIVERED"}), []), id="octopush-other-channel-ignored"),
    # --- Twilio (signed form posts)
    pytest.param(Case("twilio", twilio_signed({**TWILIO_STATUS, "MessageStatus": "delivered",
                                               "SmsStatus": "delivered"}),
                      [delivery(message_id=SMS_SID, number="+33612121515", state="delivered", status="delivered")]),
                 id="twilio-delivered"),
    pytest.param(Case("twilio", twilio_signed({**TWILIO_STATUS, "MessageStatus": "undelivered",
                                               "SmsStatus": "undelivered", "ErrorCode": "30003"}),
                      [delivery(message_id=SMS_SID, number="+33612121515", state="undelivered",
                                status="undelivered", reason="30003")]), id="twilio-undelivered-30003"),
    pytest.param(Case("twilio", twilio_signed({**TWILIO_STATUS, "MessageStatus": "failed", "ErrorCode": "30007",
                                               "ErrorMessage": "Carrier violation"}),
                      [delivery(message_id=SMS_SID, number="+33612121515", state="undelivered", status="failed",
                                reason="30007 - Carrier violation")]), id="twilio-failed-with-message"),
    pytest.param(Case("twilio", twilio_signed({**TWILIO_STATUS, "MessageStatus": "sent", "SmsStatus": "sent"}),
                      [delivery(message_id=SMS_SID, number="+33612121515", status="sent")]), id="twilio-sent"),
    pytest.param(Case("twilio", twilio_signed({"MessageSid": "SM" + "2" * 32, "SmsSid": "SM" + "2" * 32,
                                               "SmsMessageSid": "SM" + "2" * 32, "AccountSid": TWILIO_SID,
                                               "From": "+33612121515", "To": "+15005550006", "Body": "Yes, 10am",
                                               "NumMedia": "0", "NumSegments": "1", "SmsStatus": "received",
                                               "ApiVersion": "2010-04-01"}, INBOUND_URL),
                      [inbound(message_id="SM" + "2" * 32, number="+33612121515", to="+15005550006",
                               text="Yes, 10am", status="received")]), id="twilio-incoming"),
    # --- Vonage (GET by default, JSON when the dashboard says POST-JSON)
    pytest.param(Case("vonage", get({**VONAGE_DLR, "status": "delivered", "err-code": "0",
                                     "client-ref": "m2s-7-1"}),
                      [delivery(message_id="0A0000001234567B", number="+447700900000", reference="m2s-7-1",
                                state="delivered", status="delivered")]), id="vonage-delivered"),
    pytest.param(Case("vonage", json_post({**VONAGE_DLR, "status": "rejected", "err-code": "6"}),
                      [delivery(message_id="0A0000001234567B", number="+447700900000", state="undelivered",
                                status="rejected", reason="err-code 6")]), id="vonage-rejected-json"),
    pytest.param(Case("vonage", get({**VONAGE_DLR, "status": "expired", "err-code": "3"}),
                      [delivery(message_id="0A0000001234567B", number="+447700900000", state="undelivered",
                                status="expired", reason="err-code 3")]), id="vonage-expired"),
    pytest.param(Case("vonage", get({**VONAGE_DLR, "status": "accepted", "err-code": "0"}),
                      [delivery(message_id="0A0000001234567B", number="+447700900000", status="accepted")]),
                 id="vonage-accepted"),
    pytest.param(Case("vonage", get({"api-key": "abcd1234", "msisdn": "447700900001", "to": "447700900000",
                                     "messageId": "0A0000000123ABCD1", "text": "Hello world", "type": "text",
                                     "keyword": "HELLO", "message-timestamp": "2020-01-01 12:00:00"}, INBOUND_URL),
                      [inbound(message_id="0A0000000123ABCD1", number="+447700900001", to="+447700900000",
                               text="Hello world", status="received")]), id="vonage-inbound"),
    # --- OVH (GET delivery callback, POST reply)
    pytest.param(Case("ovh", get({"id": "264119545", "ptt": "4", "date": "2026-11-21 10:00:00", "description": "1",
                                  "descriptionDlr": "Success"}),
                      [delivery(message_id="264119545", state="delivered", status="dlr 1 ptt 4")]),
                 id="ovh-delivered"),
    pytest.param(Case("ovh", get({"id": "264119545", "ptt": "23", "description": "2", "descriptionDlr": "Failed"}),
                      [delivery(message_id="264119545", state="undelivered", status="dlr 2 ptt 23",
                                reason="ptt 23")]), id="ovh-barred-number"),
    pytest.param(Case("ovh", get({"id": "264119545", "ptt": "3", "description": "4", "descriptionDlr": "Waiting"}),
                      [delivery(message_id="264119545", status="dlr 4 ptt 3")]), id="ovh-accepted-waiting"),
    pytest.param(Case("ovh", get({"id": "264119545", "ptt": "24"}),
                      [delivery(message_id="264119545", state="undelivered", status="ptt 24", reason="ptt 24")]),
                 id="ovh-ptt-only-absent-subscriber"),
    pytest.param(Case("ovh", form({"id": "9000", "keyword": "OUI", "message": "Oui merci",
                                   "senderid": "+33612121515", "shortcode": "36111", "tag": "m2s-7-1"}, INBOUND_URL),
                      [inbound(message_id="9000", number="+33612121515", to="36111", text="Oui merci",
                               reference="m2s-7-1", status="received")]), id="ovh-reply"),
]


class TestParse:
    @pytest.mark.parametrize("case", CASES)
    async def test_provider_shaped_request(self, client: httpx.AsyncClient, case: Case) -> None:
        """A request shaped as the provider documents it gives the expected events."""
        parser = provider(case.provider, client)
        assert isinstance(parser, CallbackParser)
        assert parser.parse_callback(case.request) == case.expected

    @pytest.mark.parametrize("kind", sorted(SETTINGS))
    @pytest.mark.parametrize("request_", [json_post({"hello": "world"}), form({}), get({"x": "1"})],
                             ids=["json", "empty-form", "get"])
    async def test_unreadable_request_is_value_error(self, client: httpx.AsyncClient, kind: str,
                                                     request_: CallbackRequest) -> None:
        """A request in no shape the provider sends is a ValueError (answered 400)."""
        if kind == "twilio":  # signed, so the content, not the signature, is what is refused
            request_ = twilio_signed(dict(request_.fields))
        with pytest.raises(ValueError):
            provider(kind, client).parse_callback(request_)

    @pytest.mark.parametrize(
        ("kind", "request_"),
        [
            pytest.param("vonage", get({**VONAGE_DLR, "messageId": "", "status": "delivered"}), id="vonage"),
            pytest.param("octopush", json_post({"number": "+33600000000", "status": "DELIVERED"}), id="octopush"),
            pytest.param("allmysms", form({"phoneNumber": "33612121515", "status": "1"}), id="allmysms"),
            pytest.param("ovh", get({"ptt": "4", "description": "1"}), id="ovh"),
            pytest.param("smspartner", json_post({"phoneNumber": "+33612121515", "status": "Delivered"}),
                         id="smspartner"),
        ],
    )
    async def test_report_without_message_id_is_value_error(self, client: httpx.AsyncClient, kind: str,
                                                            request_: CallbackRequest) -> None:
        """A delivery report naming no message cannot be matched to a job: ValueError."""
        with pytest.raises(ValueError):
            provider(kind, client).parse_callback(request_)


#: field names the six parsers read, so that random requests reach past the first check
FIELD_NAMES = ["status", "statut", "msgId", "messageId", "message_id", "phoneNumber", "phone_number", "msisdn",
               "text", "message", "type", "smsId", "number", "channel", "MessageSid", "MessageStatus", "Body",
               "From", "To", "err-code", "id", "ptt", "description", "senderid", "to", "tag"]


class TestAnyRequest:
    @pytest.mark.parametrize("kind", sorted(SETTINGS))
    async def test_only_events_or_value_error(self, client: httpx.AsyncClient, kind: str) -> None:
        """Whatever fields arrive, a parser returns events or raises ValueError, nothing else."""
        parser = provider(kind, client)

        @settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
        @given(st.dictionaries(st.sampled_from(FIELD_NAMES) | st.text(max_size=8), st.text(max_size=12), max_size=6))
        def check(fields: dict[str, str]) -> None:
            request = twilio_signed(fields) if kind == "twilio" else form(fields)
            try:
                events = parser.parse_callback(request)
            except ValueError:
                return
            assert all(isinstance(e, Callback) for e in events)

        check()


class TestE164:
    @pytest.mark.parametrize(
        ("raw", "expected"),
        [
            ("33612345678", "+33612345678"),          # international without "+" (Vonage, Allmysms)
            ("+33612345678", "+33612345678"),
            ("0033612345678", "+33612345678"),
            ("0612345678", "+33612345678"),           # national: the bridge's default region
            ("447700900001", "+447700900001"),
            ("+1 (500) 555-0006", "+15005550006"),
            ("36111", "36111"),                       # a short code stays as written
            ("ACME", "ACME"),                         # a sender name too
            ("", None),
            (None, None),
        ],
    )
    def test_numbers(self, raw: str | None, expected: str | None) -> None:
        """Numbers providers send become E.164; short codes and names are kept as written."""
        assert e164(raw) == expected


class TestTwilioSignature:
    def test_documented_example(self) -> None:
        """The worked example of Twilio's webhook-security page gives its published signature."""
        params = {"CallSid": "CA1234567890ABCDE", "Caller": "+12349013030", "Digits": "1234",
                  "From": "+12349013030", "To": "+18005551212"}
        url = "https://mycompany.com/myapp.php?foo=1&bar=2"
        assert signature("12345", url, list(params.items())) == "0/KCTR6DLpKmkAf8muzZqo1nDgQ="

    @pytest.mark.parametrize(
        "headers",
        [
            pytest.param({}, id="missing"),
            pytest.param({"X-Twilio-Signature": ""}, id="empty"),
            pytest.param({"X-Twilio-Signature": "0/KCTR6DLpKmkAf8muzZqo1nDgQ="}, id="forged"),
            pytest.param({"X-Twilio-Signature": signature("another-token", DLR_URL,
                                                          sorted({**TWILIO_STATUS, "MessageStatus": "delivered"}
                                                                 .items()))}, id="other-account-token"),
        ],
    )
    async def test_bad_signature_is_forbidden(self, client: httpx.AsyncClient, headers: dict[str, str]) -> None:
        """A missing, forged or foreign signature raises CallbackForbidden (answered 403)."""
        request = form({**TWILIO_STATUS, "MessageStatus": "delivered"}, headers=headers)
        with pytest.raises(CallbackForbidden):
            provider("twilio", client).parse_callback(request)

    async def test_tampered_parameter_is_forbidden(self, client: httpx.AsyncClient) -> None:
        """A signature over ``undelivered`` does not cover a body saying ``delivered``."""
        signed = twilio_signed({**TWILIO_STATUS, "MessageStatus": "undelivered"})
        tampered = form({**TWILIO_STATUS, "MessageStatus": "delivered"}, headers=dict(signed.headers))
        with pytest.raises(CallbackForbidden):
            provider("twilio", client).parse_callback(tampered)

    async def test_other_url_is_forbidden(self, client: httpx.AsyncClient) -> None:
        """A signature made for another URL (another bridge, another secret path) is refused."""
        fields = {**TWILIO_STATUS, "MessageStatus": "delivered"}
        signed = twilio_signed(fields, url="https://elsewhere.example/dlr")
        with pytest.raises(CallbackForbidden):
            provider("twilio", client).parse_callback(form(fields, DLR_URL, dict(signed.headers)))

    async def test_default_port_either_way(self, client: httpx.AsyncClient) -> None:
        """Signed for ``host:443`` but seen as ``host`` (a proxy dropped the port): accepted."""
        fields = {**TWILIO_STATUS, "MessageStatus": "delivered"}
        with_port = DLR_URL.replace("sms.example.org", "sms.example.org:443")
        signed = twilio_signed(fields, url=with_port)
        [event] = provider("twilio", client).parse_callback(form(fields, DLR_URL, dict(signed.headers)))
        assert event.state == "delivered"

    async def test_header_name_case(self, client: httpx.AsyncClient) -> None:
        """The header is found whatever its case (HTTP header names are case-insensitive)."""
        fields = {**TWILIO_STATUS, "MessageStatus": "delivered"}
        value = twilio_signed(fields).headers["X-Twilio-Signature"]
        [event] = provider("twilio", client).parse_callback(form(fields, headers={"x-twilio-signature": value}))
        assert event.message_id == SMS_SID


def sent_fields(request: httpx.Request) -> dict[str, str]:
    """The JSON object or form fields of a provider request."""
    if request.headers.get("content-type", "").startswith("application/json"):
        return json.loads(request.content)
    return dict(httpx.QueryParams(request.content.decode()))


SEND_ANSWERS = {
    "smspartner": httpx.Response(200, json={"success": True, "code": 200, "message_id": 307}),
    "twilio": httpx.Response(201, json={"sid": SMS_SID, "status": "queued"}),
    "vonage": httpx.Response(200, json={"message-count": "1", "messages": [
        {"to": "33612121515", "message-id": "0A0000000123ABCD1", "status": "0", "message-price": "0.03"}]}),
}
#: the fields each API takes for a per-message callback URL
SENT_URLS = {
    "smspartner": {"urlDlr": DLR_URL, "urlResponse": INBOUND_URL},
    "twilio": {"StatusCallback": DLR_URL},
    "vonage": {"callback": DLR_URL},
}


class TestSendCarriesCallbacks:
    @pytest.mark.parametrize("kind", sorted(SENT_URLS))
    async def test_callback_urls_sent(self, kind: str) -> None:
        """With callbacks set, the send asks the provider to call the bridge back."""
        def make(c: httpx.AsyncClient) -> Any:
            p = provider(kind, c)
            p.callbacks = URLS
            return p

        [request] = await requests_of(make, SMS, SEND_ANSWERS[kind])
        fields = sent_fields(request)
        assert {k: fields.get(k) for k in SENT_URLS[kind]} == SENT_URLS[kind]

    @pytest.mark.parametrize("kind", sorted(SENT_URLS))
    async def test_nothing_sent_without_callbacks(self, kind: str) -> None:
        """Without callbacks, the send carries no callback field at all (as before)."""
        [request] = await requests_of(lambda c: provider(kind, c), SMS, SEND_ANSWERS[kind])
        assert not set(SENT_URLS[kind]) & set(sent_fields(request))

    async def test_smspartner_configured_urls_win(self) -> None:
        """SMSPartner's ``dlr_url``/``response_url`` settings win over the bridge's URLs."""
        def make(c: httpx.AsyncClient) -> Any:
            p = provider("smspartner", c, dlr_url="https://crm.example/dlr")
            p.callbacks = URLS
            return p

        [request] = await requests_of(make, SMS, SEND_ANSWERS["smspartner"])
        fields = sent_fields(request)
        assert (fields["urlDlr"], fields["urlResponse"]) == ("https://crm.example/dlr", INBOUND_URL)


class TestVonageSignedWebhooks:
    """https://developer.vonage.com/getting-started/concepts/signing-messages: ``sig`` over the
    sorted fields, ``&`` and ``=`` in values replaced by ``_``."""

    FIELDS = {"msisdn": "447700900001", "to": "447700900000", "messageId": "0A0000000123ABCD1",
              "text": "a=b&c", "type": "text", "timestamp": "1764590400", "nonce": "n-1"}
    SECRET = "vonage-signature-secret"
    STRING = ("&messageId=0A0000000123ABCD1&msisdn=447700900001&nonce=n-1&text=a_b_c&timestamp=1764590400"
              "&to=447700900000&type=text")

    def _signed(self, sig: str | None) -> CallbackRequest:
        fields = dict(self.FIELDS) if sig is None else {**self.FIELDS, "sig": sig}
        return get(fields, INBOUND_URL)

    @pytest.mark.parametrize("method", ["md5hash", "md5", "sha1", "sha256", "sha512"])
    async def test_a_good_sig_is_read(self, client, method):
        import hashlib
        import hmac as hmac_
        expected = (hashlib.md5((self.STRING + self.SECRET).encode()).hexdigest() if method == "md5hash" else
                    hmac_.new(self.SECRET.encode(), self.STRING.encode(), method).hexdigest())
        parser = provider("vonage", client, signature_secret=self.SECRET, signature_method=method)
        [event] = parser.parse_callback(self._signed(expected.upper()))
        assert (event.kind, event.text) == ("inbound", "a=b&c")

    async def test_a_missing_or_wrong_sig_is_forbidden(self, client):
        parser = provider("vonage", client, signature_secret=self.SECRET)
        with pytest.raises(CallbackForbidden):
            parser.parse_callback(self._signed(None))
        with pytest.raises(CallbackForbidden):
            parser.parse_callback(self._signed("0" * 32))
        good = __import__("hashlib").md5((self.STRING + self.SECRET).encode()).hexdigest()
        tampered = get({**self.FIELDS, "text": "STOP", "sig": good}, INBOUND_URL)
        with pytest.raises(CallbackForbidden):
            parser.parse_callback(tampered)

    async def test_without_a_secret_sig_is_not_needed(self, client):
        [event] = provider("vonage", client).parse_callback(self._signed(None))
        assert event.kind == "inbound"


class TestVonageLongInbound:
    PART = {"msisdn": "447700900001", "to": "447700900000", "messageId": "0A01", "text": "first half",
            "type": "text", "concat": "true", "concat-ref": "08", "concat-part": "1", "concat-total": "2"}

    async def test_a_part_says_which_it_is(self, client):
        [event] = provider("vonage", client).parse_callback(get(self.PART, INBOUND_URL))
        assert event.part == ("08", 1, 2) and event.text == "first half"

    async def test_a_single_part_is_no_part(self, client):
        [event] = provider("vonage", client).parse_callback(get({**self.PART, "concat-total": "1"}, INBOUND_URL))
        assert event.part is None

    @pytest.mark.parametrize("bad", [{"concat-part": "3"}, {"concat-part": "0"}, {"concat-total": "999"}])
    async def test_an_impossible_part_is_unreadable(self, client, bad):
        with pytest.raises(ValueError):
            provider("vonage", client).parse_callback(get({**self.PART, **bad}, INBOUND_URL))
