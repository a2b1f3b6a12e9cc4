"""What every provider must do, checked once over all of them against real loopback servers.

Each provider's own test file keeps the table of *its* API's answers; the rules that do not
depend on the API live here: a read timeout after the request was sent is ambiguous (the
job becomes ``unknown``), a refused connection is a definite non-delivery, 429 passes its
``Retry-After`` on, 503 and 500 are ambiguous, secrets never reach an error or a log line,
bad settings name their key path, and the HTTP client is required.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from structlog.testing import capture_logs

from bridge.errors import AmbiguousError, ConfigError, ProviderError, TransientError
from bridge.providers.base import Capabilities, Provider, Sms, can_reconcile
from bridge.providers.registry import PROVIDER_TYPES, build_provider, validate
from provider_fakes import FakeHttpServer, Recorded, Reply, closed_port

SMS = Sms(to=("+33612121515",), text="Hello", reference="m2s-7-1")
TIMEOUT = 0.3


@dataclass(frozen=True)


class Case:
    """One provider type: settings pointing at ``base``, and its side calls (token, clock)."""

    type: str
    settings: Callable[[str], dict[str, Any]]
    secrets: tuple[str, ...]
    side: Callable[[Recorded], Reply | None] = lambda request: None
    required: tuple[str, ...] = field(default=())


def _ovh_side(request: Recorded) -> Reply | None:
    return Reply(body=str(int(time.time()))) if request.path.endswith("/auth/time") else None


def _orange_side(request: Recorded) -> Reply | None:
    if request.path.endswith("/oauth/v3/token"):
        return Reply(json={"token_type": "Bearer", "access_token": "tok-SECRET-orange-0001", "expires_in": "3600"})
    return None


CASES = [
    Case("smspartner", lambda base: {"api_key": "sp-SECRET-0123456789", "url": f"{base}/v1"},
         ("sp-SECRET-0123456789",), required=("api_key",)),
    Case("allmysms", lambda base: {"login": "shop", "api_key": "am-SECRET-0123456789", "url": base},
         ("am-SECRET-0123456789",), required=("login", "api_key")),
    Case("allo", lambda base: {"api_key": "allo-SECRET-0123456789", "url": base, "sender_id": "SHOP"},
         ("allo-SECRET-0123456789",), required=("api_key",)),
    Case("orange", lambda base: {"client_id": "cid", "client_secret": "or-SECRET-0123456789", "url": base,
                                 "token_url": f"{base}/oauth/v3/token", "sender": "+33700000000"},
         ("or-SECRET-0123456789", "tok-SECRET-orange-0001"), _orange_side,
         required=("client_id", "client_secret", "sender")),
    Case("octopush", lambda base: {"login": "me@example.com", "api_key": "oc-SECRET-0123456789", "url": base},
         ("oc-SECRET-0123456789",), required=("login", "api_key")),
    Case("ovh", lambda base: {"application_key": "ak-SECRET-0123", "application_secret": "as-SECRET-0123456789",
                              "consumer_key": "ck-SECRET-0123456789", "service_name": "sms-ab1-1",
                              "url": f"{base}/1.0"},
         ("ak-SECRET-0123", "as-SECRET-0123456789", "ck-SECRET-0123456789"), _ovh_side,
         required=("application_key", "application_secret", "consumer_key", "service_name")),
    Case("twilio", lambda base: {"account_sid": "AC" + "1" * 32, "auth_token": "tw-SECRET-0123456789",
                                 "from": "+15005550006", "url": base},
         ("tw-SECRET-0123456789",), required=("account_sid", "auth_token")),
    Case("vonage", lambda base: {"api_key": "vgkey", "api_secret": "vg-SECRET-0123456789", "from": "SHOP",
                                 "url": base},
         ("vg-SECRET-0123456789",), required=("api_key", "api_secret", "from")),
    Case("http", lambda base: {"url": f"{base}/send", "headers": {"Authorization": "Bearer gw-SECRET-0123456789"},
                               "body": {"to": "{to}", "text": "{text}"}},
         ("gw-SECRET-0123456789",), required=("url",)),
]
IDS = [case.type for case in CASES]
#: the types whose API lets the bridge look an ambiguous send up (README: reconciliation)
RECONCILERS = {"smspartner", "ovh", "twilio", "http"}


def section(case: Case, base: str, **extra: Any) -> dict[str, Any]:
    """The provider's config section, pointing at ``base``; a None in ``extra`` removes a key."""
    full = {"type": case.type, "timeout": TIMEOUT, **case.settings(base), **extra}
    return {key: value for key, value in full.items() if value is not None}


async def send_to(case: Case, *replies: Reply) -> tuple[ProviderError, FakeHttpServer]:
    """Send ``SMS`` through a fresh provider to a fake server; the error it raised."""
    with FakeHttpServer(*replies, router=case.side) as server:
        async with httpx.AsyncClient() as client:
            provider = build_provider("p", section(case, server.url), client)
            with pytest.raises(ProviderError) as caught:
                await provider.send(SMS)
    return caught.value, server


def test_every_type_is_covered() -> None:
    """The contract runs over every registered HTTP provider (``file`` has no HTTP)."""
    assert set(IDS) == set(PROVIDER_TYPES) - {"file"}


@pytest.mark.parametrize("case", CASES, ids=IDS)


class TestTransport:
    async def test_read_timeout_after_sending_is_ambiguous(self, case: Case) -> None:
        """The server read the request and never answered in time: it may have sent it."""
        error, server = await send_to(case, Reply(json={}, delay=2.0))
        assert type(error) is AmbiguousError
        assert server.requests and case.side(server.requests[-1]) is None  # the send itself went out

    async def test_connection_dropped_after_sending_is_ambiguous(self, case: Case) -> None:
        """A connection closed after the request was read is ambiguous too."""
        error, _ = await send_to(case, Reply(drop=True))
        assert type(error) is AmbiguousError

    async def test_refused_connection_is_definitely_not_sent(self, case: Case) -> None:
        """Nothing listens: TransientError, so the dispatcher may fail over at once."""
        async with httpx.AsyncClient() as client:
            provider = build_provider("p", section(case, f"http://127.0.0.1:{closed_port()}"), client)
            with pytest.raises(TransientError) as caught:
                await provider.send(SMS)
        assert caught.value.provider == "p"

    async def test_429_passes_retry_after_on(self, case: Case) -> None:
        """429 is a definite "slow down"; the server's Retry-After is kept in seconds."""
        error, _ = await send_to(case, Reply(status=429, json={}, headers={"Retry-After": "30"}))
        assert type(error) is TransientError and error.retry_after == 30 and error.code == 429

    @pytest.mark.parametrize("status", [500, 502, 503])
    async def test_server_errors_are_ambiguous(self, case: Case, status: int) -> None:
        """5xx, 503 included, may come after the request was taken: never failed over."""
        error, _ = await send_to(case, Reply(status=status, body="busy"))
        assert type(error) is AmbiguousError and error.code == status


@pytest.mark.parametrize("case", CASES, ids=IDS)


class TestSecrets:
    async def test_echoed_secrets_never_reach_errors_or_logs(self, case: Case) -> None:
        """A provider that echoes every credential back: the error and the logs show none."""
        echo = " ".join(case.secrets)
        body = {"success": False, "code": 10, "message": echo, "description": echo, "errorCode": "X",
                "error": {"code": "X", "message": echo},
                "requestError": {"serviceException": {"messageId": "SVC0002", "text": echo}},
                "messages": [{"status": "4", "error-text": echo}]}
        with capture_logs() as logs:
            error, _ = await send_to(case, Reply(status=400, json=body))
        seen = " ".join([str(error), repr(error.args), repr(logs)])
        for secret in case.secrets:
            assert secret not in seen

    async def test_repr_hides_secrets(self, case: Case) -> None:
        """Neither the provider nor its settings print a secret."""
        async with httpx.AsyncClient() as client:
            provider = build_provider("p", section(case, "https://api.example"), client)
        for secret in case.secrets:
            assert secret not in repr(provider) and secret not in repr(provider.settings)


@pytest.mark.parametrize("case", CASES, ids=IDS)


class TestSettings:
    def test_each_required_key_is_named(self, case: Case) -> None:
        """A missing required setting is a ConfigError at ``providers.<name>.<key>``."""
        for key in case.required:
            settings = section(case, "https://api.example")
            del settings[key]
            with pytest.raises(ConfigError) as caught:
                validate("p", settings)
            assert caught.value.path == f"providers.p.{key}"

    @pytest.mark.parametrize(("key", "value"), [("timeout", 0), ("timeout", "10"), ("url", "ftp://x"),
                                                ("unknown_key", 1)])
    def test_bad_values_are_named_without_secrets(self, case: Case, key: str, value: Any) -> None:
        """A bad value names its key path and never quotes a secret."""
        with pytest.raises(ConfigError) as caught:
            validate("p", section(case, "https://api.example", **{key: value}))
        assert caught.value.path == f"providers.p.{key}"
        for secret in case.secrets:
            assert secret not in str(caught.value)

    def test_validation_builds_nothing_and_the_client_is_required(self, case: Case) -> None:
        """``validate`` gives frozen settings; a provider cannot be built without a client."""
        settings = validate("p", section(case, "https://api.example"))
        with pytest.raises(Exception):
            settings.timeout = 1  # frozen
        with pytest.raises(TypeError):
            build_provider("p", section(case, "https://api.example"), None)  # type: ignore[arg-type]


#: each type's own checks: (type, changed settings, the key path named)
OWN_BAD_VALUES = [
    ("smspartner", {"sandbox": "yes"}, "sandbox"),
    ("smspartner", {"stop_sms": 1}, "stop_sms"),
    ("smspartner", {"dlr_url": "not a url"}, "dlr_url"),
    ("smspartner", {"response_url": "mailto:x@y"}, "response_url"),
    ("smspartner", {"api_key": " "}, "api_key"),
    ("allmysms", {"api_key": ""}, "api_key"),
    ("allmysms", {"simulate": "1"}, "simulate"),
    ("allo", {"api_key": " "}, "api_key"),
    ("allo", {"sender_id": "AB"}, "sender_id"),
    ("allo", {"sender_id": "ABCDEFGHIJKL"}, "sender_id"),
    ("allo", {"sender_id": "My Shop"}, "sender_id"),
    ("allo", {"sender_id": "36180"}, "sender_id"),
    ("allo", {"sender_id": 12}, "sender_id"),
    ("octopush", {"api_key": ""}, "api_key"),
    ("octopush", {"purpose": "marketing"}, "purpose"),
    ("octopush", {"purpose": 1}, "purpose"),
    ("octopush", {"with_replies": "yes"}, "with_replies"),
    ("octopush", {"simulate": 1}, "simulate"),
    ("orange", {"client_secret": ""}, "client_secret"),
    ("orange", {"sender": "0700000000"}, "sender"),
    ("orange", {"sender": "33700000000"}, "sender"),
    ("orange", {"sender": "+0700000000"}, "sender"),
    ("orange", {"sender": "+33 7 00 00 00 00"}, "sender"),
    ("orange", {"sender": "tel:+33700000000"}, "sender"),
    ("orange", {"sender_name": " "}, "sender_name"),
    ("orange", {"token_url": "not a url"}, "token_url"),
    ("orange", {"allow_france": "yes"}, "allow_france"),
    ("ovh", {"application_secret": ""}, "application_secret"),
    ("ovh", {"consumer_key": 5}, "consumer_key"),
    ("ovh", {"sender": ""}, "sender"),
    ("ovh", {"no_stop_clause": "yes"}, "no_stop_clause"),
    ("ovh", {"no_stop_clause": {"promo": True}}, "no_stop_clause"),
    ("twilio", {"account_sid": "AC123"}, "account_sid"),
    ("twilio", {"account_sid": "MG" + "f" * 32}, "account_sid"),
    ("twilio", {"from": None}, "from"),
    ("twilio", {"messaging_service_sid": "MGxyz"}, "messaging_service_sid"),
    ("vonage", {"api_secret": "  "}, "api_secret"),
]


@pytest.mark.parametrize(("type_name", "changes", "key"), OWN_BAD_VALUES,
                         ids=[f"{t}-{k}-{i}" for i, (t, _, k) in enumerate(OWN_BAD_VALUES)])
def test_own_bad_values_name_their_key(type_name: str, changes: dict, key: str) -> None:
    """Each type's own rules (sender formats, SIDs, choices) name the key, never a secret."""
    case = next(c for c in CASES if c.type == type_name)
    with pytest.raises(ConfigError) as caught:
        validate("p", section(case, "https://api.example", **changes))
    assert caught.value.path == f"providers.p.{key}"
    for secret in case.secrets:
        assert secret not in str(caught.value)


@pytest.mark.parametrize("case", CASES, ids=IDS)


class TestInterface:
    async def test_protocol_and_capabilities(self, case: Case) -> None:
        """Every provider is a ``Provider`` with ``Capabilities`` and an ``aclose``."""
        async with httpx.AsyncClient() as client:
            provider = build_provider("p", section(case, "https://api.example"), client)
            assert isinstance(provider, Provider) and isinstance(provider.capabilities, Capabilities)
            assert provider.capabilities.max_numbers >= 1 and provider.capabilities.default_rate > 0
            await provider.aclose()

    async def test_reconcile_never_raises_when_unreachable(self, case: Case) -> None:
        """Those with a lookup answer None ("cannot tell") when the provider is unreachable."""
        async with httpx.AsyncClient() as client:
            base = f"http://127.0.0.1:{closed_port()}"
            extra = {"reconcile_url": f"{base}/status/{{reference}}"} if case.type == "http" else {}
            provider = build_provider("p", section(case, base, **extra), client)
            assert can_reconcile(provider) == (case.type in RECONCILERS)
            for message_id in ([None, "id-1"] if can_reconcile(provider) else []):
                assert await provider.reconcile(SMS, time.time() - 60, message_id) is None


def test_providers_check_never_says_ok_without_a_call(tmp_path, capsys) -> None:
    """``providers check``: a provider without a harmless call is "not checkable", not ok."""
    import yaml

    from bridge.cli import main

    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({
        "smtp": {"recipients": ["m@example.com"]},
        "providers": {
            "amx": {"type": "allmysms", "login": "shop", "api_key": "am-SECRET-0123456789"},
            "gw": {"type": "http", "url": "https://gw.example/send"},
            "outbox": {"type": "file", "path": str(tmp_path / "outbox.jsonl")},
        },
        "accounts": {"a": {"api_key": "k", "route": ["outbox"]}},
        "store": f"sqlite://{tmp_path / 'bridge.db'}",
    }))
    assert main(["--config", str(path), "providers", "check"]) == 0
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()}
    for name in ("amx", "gw"):
        assert "not checkable" in lines[name] and " ok " not in lines[name]
    assert " ok " in lines["outbox"]
