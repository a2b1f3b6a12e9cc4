"""Generic HTTP provider: templates, answer rules, secrets; MockTransport and a real socket."""

from __future__ import annotations

import json
from urllib.parse import parse_qs

import httpx
import pytest
from hypothesis import given, settings as hsettings, strategies as st

from bridge.errors import AmbiguousError, ConfigError, PermanentError, RecipientRefused, TransientError
from bridge.providers.base import Sms, can_check, can_reconcile
from bridge.providers.http import HttpProvider, render
from bridge.providers.registry import validate
from provider_fakes import Answers

TOKEN = "tok-SECRET-0123456789"
QUERY_KEY = "qk-SECRET-abcdef"
FORM_KEY = "fk-SECRET-ghijkl"
URL = "https://gw.example/api/send"
SMS = Sms(to=("+33612121515",), text="Hello", reference="job-1")
JSON_BODY = {"to": "{to}", "message": "{text}"}


def section(**settings) -> dict:
    base = {"type": "http", "url": URL, "headers": {"Authorization": f"Bearer {TOKEN}"}, "body": JSON_BODY}
    return {k: v for k, v in {**base, **settings}.items() if v is not None}


def make(client: httpx.AsyncClient, **settings) -> HttpProvider:
    return HttpProvider.from_config("gw", section(**settings), client)


async def sent(sms: Sms = SMS, answer: httpx.Response | None = None, **settings) -> httpx.Request:
    """Send ``sms`` and return the request the provider made."""
    answers = Answers(answer or httpx.Response(200, json={"ok": True}))
    async with answers.client() as client:
        await make(client, **settings).send(sms)
    [request] = answers.requests
    return request


class TestTemplates:
    async def test_json_body_is_built_then_dumped(self) -> None:
        """Quotes, backslashes, line breaks and emoji in the text stay valid JSON."""
        text = 'He said "hi" \\ o/\nprix: 5€ 🎉 {to}'
        request = await sent(Sms(to=("+33612121515",), text=text))
        assert request.headers["content-type"] == "application/json"
        assert request.headers["authorization"] == f"Bearer {TOKEN}"
        assert json.loads(request.content) == {"to": "+33612121515", "message": text}

    async def test_json_values_and_numbers(self) -> None:
        """Exact numeric placeholders become numbers; other strings stay strings; others kept."""
        body = {"dest": ["{to_digits}"], "n": "{parts}", "u": "{unicode}", "lc": "{low_cost}",
                "label": "from {sender} ({parts} parts)", "ref": "{reference}", "fixed": 3, "none": None,
                "braces": "{{literal}}"}
        sms = Sms(to=("+33612121515",), text="x", sender="SHOP", unicode=True, low_cost=True, parts=2,
                  reference="job-9")
        request = await sent(sms, body=body)
        assert json.loads(request.content) == {
            "dest": ["33612121515"], "n": 2, "u": 1, "lc": 1, "label": "from SHOP (2 parts)",
            "ref": "job-9", "fixed": 3, "none": None, "braces": "{literal}"}

    @given(st.text(max_size=300))
    @hsettings(max_examples=60, deadline=None)
    def test_any_text_round_trips_through_json(self, text: str) -> None:
        """Whatever the text, the JSON body parses back to it exactly."""
        rendered = render({"m": "{text}", "n": ["{text}"]}, {"text": text})
        assert json.loads(json.dumps(rendered)) == {"m": text, "n": [text]}

    async def test_string_body_is_raw(self) -> None:
        """A string body gets the values inserted as they are."""
        request = await sent(body="<sms to='{to}'>{text}</sms>", headers={"Content-Type": "text/xml"})
        assert request.content.decode() == "<sms to='+33612121515'>Hello</sms>"
        assert request.headers["content-type"] == "text/xml"

    async def test_form_body(self) -> None:
        """``form`` is sent form-encoded, a literal key included."""
        request = await sent(Sms(to=("+33612121515",), text="a&b=c é"), body=None,
                             form={"key": FORM_KEY, "dst": "{to_digits}", "msg": "{text}"})
        assert request.headers["content-type"] == "application/x-www-form-urlencoded"
        assert parse_qs(request.content.decode()) == {"key": [FORM_KEY], "dst": ["33612121515"], "msg": ["a&b=c é"]}

    async def test_get_puts_encoded_values_in_the_url(self) -> None:
        """In the URL every value is percent-encoded (``+``, ``&``, spaces, unicode)."""
        request = await sent(Sms(to=("+33612121515",), text="a&b c€"), method="get", body=None,
                             url=f"https://gw.example/send?key={QUERY_KEY}&to={{to}}&msg={{text}}")
        assert request.method == "GET" and request.content == b""
        assert dict(request.url.params) == {"key": QUERY_KEY, "to": "+33612121515", "msg": "a&b c€"}
        assert "%2B33612121515" in str(request.url)

    async def test_put_and_trailing_slash(self) -> None:
        """``method: PUT`` is honoured and the URL is kept exactly as written."""
        request = await sent(method="PUT", url="https://gw.example/sms/send/")
        assert (request.method, str(request.url)) == ("PUT", "https://gw.example/sms/send/")


class TestAnswers:
    @pytest.mark.parametrize(
        ("settings", "answer", "message_id"),
        [
            pytest.param({}, httpx.Response(200, text="OK"), None, id="200-plain"),
            pytest.param({}, httpx.Response(202, json={"id": 1}), None, id="202-no-path"),
            pytest.param({"message_id_path": "data.id"}, httpx.Response(201, json={"data": {"id": 77}}), "77",
                         id="dotted-path"),
            pytest.param({"message_id_path": "messages.0.id"},
                         httpx.Response(200, json={"messages": [{"id": "m-1"}]}), "m-1", id="list-index"),
            pytest.param({"message_id_path": "data.id"}, httpx.Response(200, json={"data": {}}), None,
                         id="path-missing"),
            pytest.param({"message_id_path": "data.id"}, httpx.Response(200, text="OK 77"), None, id="not-json"),
            pytest.param({"success_match": r'"status":\s*"ok"'}, httpx.Response(200, json={"status": "ok"}), None,
                         id="success-match"),
            pytest.param({"success_status": [200, 204]}, httpx.Response(204), None, id="204-declared"),
        ],
    )
    async def test_success(self, settings: dict, answer: httpx.Response, message_id: str | None) -> None:
        """A success status (and success_match) gives a receipt, with the id when found."""
        async with Answers(answer).client() as client:
            receipt = await make(client, **settings).send(SMS)
        assert receipt.message_ids == ({"+33612121515": message_id} if message_id else {})

    @pytest.mark.parametrize(
        ("settings", "outcome", "error", "code"),
        [
            pytest.param({}, httpx.Response(400, text="bad number"), PermanentError, 400, id="400"),
            pytest.param({}, httpx.Response(401), PermanentError, 401, id="401"),
            pytest.param({}, httpx.Response(422, json={"error": "invalid"}), PermanentError, 422, id="422"),
            pytest.param({"permanent_status": [402]}, httpx.Response(402), PermanentError, 402, id="declared-402"),
            pytest.param({"permanent_match": "NO_CREDIT"}, httpx.Response(200, text="ERR NO_CREDIT"),
                         PermanentError, 200, id="200-permanent-match"),
            pytest.param({"success_match": "^OK"}, httpx.Response(200, text="ERR 12"), AmbiguousError, 200,
                         id="200-fails-success-match"),
            pytest.param({}, httpx.Response(409), AmbiguousError, 409, id="409-undeclared"),
            pytest.param({}, httpx.Response(204), AmbiguousError, 204, id="204-undeclared"),
            pytest.param({}, httpx.Response(302, headers={"Location": "/x"}), AmbiguousError, 302,
                         id="302-undeclared"),
            pytest.param({}, httpx.Response(503), AmbiguousError, 503, id="503-ambiguous-by-default"),
            pytest.param({"definite_503": True}, httpx.Response(503, headers={"Retry-After": "5"}),
                         TransientError, 503, id="503-declared-definite"),
            pytest.param({"opted_out_match": "STOPPED"}, httpx.Response(400, text="number STOPPED"),
                         RecipientRefused, 400, id="opted-out-no-failover"),
        ],
    )
    async def test_failures_are_classified(self, settings: dict, outcome, error: type, code) -> None:
        """Each answer maps to the class the dispatcher relies on."""
        async with Answers(outcome).client() as client:
            with pytest.raises(error) as caught:
                await make(client, **settings).send(SMS)
        assert type(caught.value) is error and (caught.value.provider, caught.value.code) == ("gw", code)

    async def test_echoed_credentials_are_scrubbed(self) -> None:
        """Header, query and form values the gateway echoes back never reach the exception."""
        echo = httpx.Response(401, text=f"bad key {QUERY_KEY} / {FORM_KEY} / Bearer {TOKEN} for message")
        settings = {"url": f"https://gw.example/send?key={QUERY_KEY}", "body": None,
                    "form": {"apikey": FORM_KEY, "msg": "{text}"}}
        async with Answers(echo).client() as client:
            with pytest.raises(PermanentError) as caught:
                await make(client, **settings).send(SMS)
        text = str(caught.value)
        assert QUERY_KEY not in text and FORM_KEY not in text and TOKEN not in text
        assert "HTTP 401" in text and "message" in text  # the rest stays readable


class TestConfig:
    @pytest.mark.parametrize(
        ("settings", "path"),
        [
            pytest.param({"body": "{txt}"}, "providers.gw.body", id="string-unknown-placeholder"),
            pytest.param({"body": {"a": {"b": ["{to}", "{msisdn}"]}}}, "providers.gw.body.a.b[1]",
                         id="json-unknown-placeholder"),
            pytest.param({"body": "{text!r}"}, "providers.gw.body", id="conversion"),
            pytest.param({"body": "{parts:>3}"}, "providers.gw.body", id="format-spec"),
            pytest.param({"body": "{}"}, "providers.gw.body", id="positional"),
            pytest.param({"body": "{to"}, "providers.gw.body", id="unbalanced-brace"),
            pytest.param({"body": None, "form": {"m": "{sms}"}}, "providers.gw.form.m", id="form-unknown"),
            pytest.param({"body": None, "form": {"m": 5}}, "providers.gw.form.m", id="form-not-string"),
            pytest.param({"body": None, "form": []}, "providers.gw.form", id="form-not-mapping"),
            pytest.param({"form": {"m": "{text}"}}, "providers.gw.form", id="body-and-form"),
            pytest.param({"method": "DELETE"}, "providers.gw.method", id="method-unknown"),
            pytest.param({"method": "GET"}, "providers.gw.method", id="get-with-body"),
            pytest.param({"headers": {"X-Key": 123}}, "providers.gw.headers", id="header-not-string"),
            pytest.param({"headers": ["X-Key: a"]}, "providers.gw.headers", id="headers-not-mapping"),
            pytest.param({"success_status": []}, "providers.gw.success_status", id="success-empty"),
            pytest.param({"success_status": [200, "201"]}, "providers.gw.success_status", id="success-string"),
            pytest.param({"permanent_status": [700]}, "providers.gw.permanent_status", id="permanent-range"),
            pytest.param({"permanent_status": [200]}, "providers.gw.permanent_status", id="overlap"),
            pytest.param({"success_match": "(["}, "providers.gw.success_match", id="bad-regex"),
            pytest.param({"permanent_match": ""}, "providers.gw.permanent_match", id="empty-regex"),
            pytest.param({"message_id_path": 3}, "providers.gw.message_id_path", id="id-path-not-string"),
            pytest.param({"max_parts": 0}, "providers.gw.max_parts", id="max-parts-zero"),
            pytest.param({"max_parts": 2.5}, "providers.gw.max_parts", id="max-parts-float"),
            pytest.param({"sender": ""}, "providers.gw.sender", id="sender-blank"),
            pytest.param({"reconcile_url": "https://gw.example/s/{text}"}, "providers.gw.reconcile_url",
                         id="reconcile-url-placeholder"),
            pytest.param({"reconcile_state_path": ""}, "providers.gw.reconcile_state_path", id="state-path-blank"),
            pytest.param({"check_url": "https://gw.example/{to}"}, "providers.gw.check_url",
                         id="check-url-placeholder"),
        ],
    )
    def test_bad_values_name_their_key(self, settings: dict, path: str) -> None:
        """Every mistake is found at load time, naming ``providers.<name>.<key>``, no secret."""
        with pytest.raises(ConfigError) as caught:
            validate("gw", section(**settings))
        assert caught.value.path == path and TOKEN not in str(caught.value)

    def test_defaults_and_overrides(self) -> None:
        """Defaults; ``max_parts`` overrides the capability for this instance only."""
        settings = validate("gw", section())
        assert (settings.method, settings.timeout, settings.max_parts) == ("POST", 10.0, 8)
        assert settings.success_status == {200, 201, 202}
        assert settings.permanent_status == {400, 401, 403, 404, 422}
        assert (settings.reconcile_url, settings.reconcile_state_path, settings.reconcile_id_path) == (
            None, ("status",), ("id",))
        assert HttpProvider.capabilities_for(validate("gw", section(max_parts=3))).max_parts == 3
        assert HttpProvider.capabilities_for(settings).max_parts == 8
        assert TOKEN not in repr(settings)


class TestReconcile:
    @pytest.mark.parametrize(
        ("answer", "expected"),
        [
            pytest.param(httpx.Response(404), ("not_found", None), id="404-never-received"),
            pytest.param(httpx.Response(200, json={"status": "sent", "id": "g-1"}), ("sent", "g-1"), id="sent"),
            pytest.param(httpx.Response(200, json={"status": "accepted", "id": 5}), ("sent", "5"), id="accepted"),
            pytest.param(httpx.Response(200, json={"status": "DELIVERED"}), ("delivered", None), id="delivered"),
            pytest.param(httpx.Response(200, json={"status": "failed"}), ("failed", None), id="failed"),
            pytest.param(httpx.Response(200, json={"status": "undelivered"}), ("failed", None), id="undelivered"),
            pytest.param(httpx.Response(200, json={"status": "rejected"}), ("failed", None), id="rejected"),
            pytest.param(httpx.Response(200, json={"status": "queued"}), None, id="other-state"),
            pytest.param(httpx.Response(200, text="sent"), None, id="not-json"),
            pytest.param(httpx.Response(500), None, id="500"),
            pytest.param(httpx.Response(401), None, id="401"),
            pytest.param(httpx.ConnectError, None, id="unreachable"),
            pytest.param(httpx.ReadTimeout, None, id="timeout"),
        ],
    )
    async def test_answers(self, answer, expected) -> None:
        """404 is not_found; the documented state names map; anything else is "cannot tell"."""
        answers = Answers(answer)
        settings = {"reconcile_url": "https://gw.example/status?ref={reference}&to={to}&d={to_digits}"}
        async with answers.client() as client:
            assert await make(client, **settings).reconcile(SMS, 0.0, None) == expected
        [request] = answers.requests
        assert request.method == "GET" and request.headers["authorization"] == f"Bearer {TOKEN}"
        assert dict(request.url.params) == {"ref": "job-1", "to": "+33612121515", "d": "33612121515"}

    async def test_paths_are_configurable(self) -> None:
        """``reconcile_state_path`` and ``reconcile_id_path`` point into nested answers."""
        answers = Answers(httpx.Response(200, json={"data": {"state": "delivered", "sms": [{"ref": "x9"}]}}))
        settings = {"reconcile_url": "https://gw.example/s/{reference}", "reconcile_state_path": "data.state",
                    "reconcile_id_path": "data.sms.0.ref"}
        async with answers.client() as client:
            assert await make(client, **settings).reconcile(SMS, 0.0, None) == ("delivered", "x9")

    async def test_without_reconcile_url_there_is_no_lookup(self) -> None:
        """No ``reconcile_url``: the provider says it cannot reconcile at all."""
        async with httpx.AsyncClient() as client:
            assert not can_reconcile(make(client))


class TestCheck:
    async def test_check_url(self) -> None:
        """``check_url`` answering 2xx is ok; a refusal raises; without it: not checkable."""
        answers = Answers(httpx.Response(200, json={}), httpx.Response(403))
        async with answers.client() as client:
            provider = make(client, check_url="https://gw.example/me")
            assert can_check(provider) and await provider.check() == "check_url answered HTTP 200"
            with pytest.raises(PermanentError):
                await provider.check()
            assert not can_check(make(client))
