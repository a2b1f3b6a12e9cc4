"""Shared fixtures: a real SMTP sink for replies, configs on disk, a running bridge."""

from __future__ import annotations

import asyncio
import email
import email.policy
import smtplib
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.smtp import SMTP
from hypothesis import settings

sys.path.insert(0, str(Path(__file__).parent))  # tests/ helpers (provider_fakes)

# Property tests assert behaviour, not speed: Hypothesis' default 200 ms deadline per example
# failed a run when a shared machine's disk stalled while phonenumbers loaded a region's
# metadata (607 ms once, 0.13 ms on the retry).
settings.register_profile("behaviour", deadline=None)
settings.load_profile("behaviour")

import httpx  # noqa: E402

from bridge.config import Config, parse_config  # noqa: E402
from bridge.daemon import Bridge  # noqa: E402
from bridge.dispatcher import Dispatcher  # noqa: E402
from bridge.errors import TransientError  # noqa: E402
from bridge.intake import Intake  # noqa: E402
from bridge.providers.base import Capabilities, Provider, Receipt, Sms  # noqa: E402
from bridge.providers.registry import build_provider  # noqa: E402
from bridge.store import SqliteStore  # noqa: E402

ACCOUNT_KEY = "de135f8d2a091e4"


class SinkHandler:
    """Keeps every mail it is given (the relay the bridge sends statuses through)."""

    def __init__(self) -> None:
        self.messages: list[EmailMessage] = []
        self.envelopes: list[tuple[str, list[str]]] = []
        self.arrived = asyncio.Event()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append(email.message_from_bytes(envelope.content, policy=email.policy.default))
        self.envelopes.append((envelope.mail_from, list(envelope.rcpt_tos)))
        self.arrived.set()
        return "250 OK"

    async def wait_for(self, count: int, timeout: float = 10.0) -> list[EmailMessage]:
        """Wait until ``count`` mails arrived; return them."""
        deadline = asyncio.get_running_loop().time() + timeout
        while len(self.messages) < count:
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                raise AssertionError(f"expected {count} status mails, got {len(self.messages)}")
            self.arrived.clear()
            try:
                await asyncio.wait_for(self.arrived.wait(), remaining)
            except asyncio.TimeoutError:
                pass
        return self.messages


@pytest.fixture(scope="session")
def certificate(tmp_path_factory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (also in subjectAltName, which TLS clients
    check) and its key, made with openssl."""
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    try:
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                        "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                        "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    except FileNotFoundError:
        pytest.fail("openssl is needed for the TLS tests: apt-get install openssl")
    return cert, key


@pytest.fixture
async def sink() -> AsyncIterator[tuple[SinkHandler, int]]:
    """An aiosmtpd server on loopback standing in for the reply relay."""
    handler = SinkHandler()
    server = await asyncio.get_running_loop().create_server(
        lambda: SMTP(handler, enable_SMTPUTF8=True), "127.0.0.1", 0
    )
    yield handler, server.sockets[0].getsockname()[1]
    server.close()


def base_settings(tmp_path: Path, relay_port: int = 1, **overrides: Any) -> dict[str, Any]:
    """A config dict: one account ``arthur45`` routed to a file provider."""
    settings: dict[str, Any] = {
        "timezone": "Europe/Paris",
        "store": "sqlite://bridge.db",
        "smtp": {"listen": "127.0.0.1:0", "recipients": ["mail2sms@example.com"]},
        "replies": {"relay": f"127.0.0.1:{relay_port}", "from": "mail2sms@example.com"},
        "dispatcher": {"backoff_base": 0.05, "backoff_max": 0.2, "poll_interval": 0.05, "grace_period": 2},
        "providers": {"outbox": {"type": "file", "path": str(tmp_path / "outbox.jsonl")}},
        "accounts": {"arthur45": {"api_key": ACCOUNT_KEY, "credits": 100, "route": ["outbox"]}},
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(settings.get(key), dict):
            settings[key] = {**settings[key], **value}
        else:
            settings[key] = value
    return settings


def make_config(tmp_path: Path, settings: dict[str, Any]) -> Config:
    """Parse ``settings`` as if read from ``tmp_path/config.yaml``."""
    return parse_config(settings, tmp_path / "config.yaml")


@pytest.fixture
async def start_bridge() -> AsyncIterator[Callable[[Config], Any]]:
    """Start bridges in this loop; every one is stopped at the end of the test."""
    started: list[Bridge] = []

    async def start(config: Config) -> Bridge:
        bridge = Bridge(config)
        await bridge.start()
        started.append(bridge)
        return bridge

    yield start
    for bridge in started:
        if not bridge.stopping.is_set():
            await bridge.stop()


def compose(
    subject: str,
    body: str = "Hello",
    *,
    sender: str = "alice@example.org",
    message_id: str | None = None,
    headers: dict[str, str] | None = None,
) -> bytes:
    """A plain mail as a client would send it."""
    message = EmailMessage()
    message["From"] = sender
    message["To"] = "mail2sms@example.com"
    message["Subject"] = subject
    if message_id:
        message["Message-ID"] = message_id
    for name, value in (headers or {}).items():
        message[name] = value
    message.set_content(body)
    return message.as_bytes(policy=email.policy.SMTP)  # CRLF, as a client sends it


async def smtp_send(
    port: int, raw: bytes, *, mail_from: str = "alice@example.org", rcpt: str = "mail2sms@example.com"
) -> tuple[int, str]:
    """Send ``raw`` with smtplib (in a thread); return the reply to DATA."""

    def send() -> tuple[int, str]:
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
            client.ehlo()
            code, text = client.mail(mail_from)
            assert code == 250, (code, text)
            code, text = client.rcpt(rcpt)
            if code != 250:
                return code, text.decode()
            code, text = client.data(raw)
            return code, text.decode()

    return await asyncio.to_thread(send)


async def wait_until(predicate: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    """Poll ``predicate`` (sync or async) until it is truthy."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


class FakeClock:
    """Time that only moves when someone sleeps."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self.now = start

    def time(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        target = self.now + seconds
        await asyncio.sleep(0)
        self.now = max(self.now, target)


class Recorder(Provider):
    """An in-memory provider that notes when (on the fake clock) each SMS was handed over."""

    capabilities = Capabilities()

    def __init__(self, name: str, clock: FakeClock, fail_first: int = 0) -> None:
        self.name = name
        self.clock = clock
        self.calls: list[tuple[float, Sms]] = []
        self.fail_first = fail_first

    async def send(self, sms: Sms) -> Receipt:
        self.calls.append((self.clock.time(), sms))
        if len(self.calls) <= self.fail_first:
            raise TransientError("down", provider=self.name)
        return Receipt({n: f"{self.name}-{len(self.calls)}" for n in sms.to})


@pytest.fixture
async def world(tmp_path):
    """A store, an intake and a factory for dispatchers on a fake clock."""
    clock = FakeClock()
    store = await SqliteStore.open(tmp_path / "bridge.db")
    created: list[httpx.AsyncClient] = []

    def make(settings: dict, providers: dict | None = None) -> tuple[Dispatcher, Intake]:
        config = make_config(tmp_path, settings)
        if providers is None:
            client = httpx.AsyncClient()
            created.append(client)
            providers = {n: build_provider(n, s, client) for n, s in config.providers.items()}
        dispatcher = Dispatcher(config, store, providers, clock=clock.time, sleep=clock.sleep)
        return dispatcher, Intake(config, store, clock.time)

    async def open_accounts(settings: dict) -> None:
        config = make_config(tmp_path, settings)
        await store.open_accounts({a.login: a.credits for a in config.accounts.values()}, clock.time())

    yield clock, store, make, open_accounts
    for client in created:
        await client.aclose()
    await store.close()


