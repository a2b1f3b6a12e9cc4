"""STARTTLS, implicit TLS and SMTP AUTH on the listener; receipts, language, logs."""

from __future__ import annotations

import asyncio
import json
import smtplib
import ssl

import pytest
import structlog
from conftest import ACCOUNT_KEY, base_settings, compose, make_config, smtp_send, wait_until
from provider_fakes import closed_port

from bridge import log as bridge_log


def client_context() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


@pytest.fixture
async def tls_bridge(tmp_path, sink, start_bridge, certificate):
    handler, relay_port = sink
    cert, key = certificate
    tls_port = closed_port()
    settings = base_settings(
        tmp_path,
        relay_port,
        smtp={
            "tls": {"cert": str(cert), "key": str(key)},
            "tls_listen": f"127.0.0.1:{tls_port}",
            "auth": {"users": {"zabbix": {"password": "s3cret", "account": "arthur45"}}},
        },
        accounts={
            "arthur45": {"api_key": ACCOUNT_KEY, "credits": 10, "route": ["outbox"]},
            "other": {"api_key": "otherkey", "credits": 10, "route": ["outbox"]},
        },
    )
    bridge = await start_bridge(make_config(tmp_path, settings))
    return bridge, tls_port


def _send_starttls(port: int, raw: bytes, login: tuple[str, str] | None = None) -> tuple[int, bytes]:
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        client.starttls(context=client_context())
        client.ehlo()
        if login:
            client.login(*login)
        client.mail("alice@example.org")
        client.rcpt("mail2sms@example.com")
        return client.data(raw)


class TestTls:
    async def test_starttls_then_send(self, tls_bridge):
        """The listener offers STARTTLS and accepts mail over it."""
        bridge, _ = tls_bridge
        raw = compose(f"arthur45@{ACCOUNT_KEY}|0612121515")
        code, _ = await asyncio.to_thread(_send_starttls, bridge.smtp_port, raw)
        assert code == 250

    async def test_implicit_tls_port(self, tls_bridge):
        """smtp.tls_listen accepts mail over implicit TLS (SMTPS)."""
        bridge, tls_port = tls_bridge

        def send() -> int:
            with smtplib.SMTP_SSL("127.0.0.1", tls_port, timeout=10, context=client_context()) as client:
                client.ehlo()
                client.mail("alice@example.org")
                client.rcpt("mail2sms@example.com")
                return client.data(compose(f"arthur45@{ACCOUNT_KEY}|0612121515"))[0]

        assert await asyncio.to_thread(send) == 250


class TestAuth:
    async def test_auth_not_offered_in_clear(self, tls_bridge):
        """AUTH is only offered after STARTTLS, so passwords never cross in clear text."""
        bridge, _ = tls_bridge

        def features() -> tuple[bool, bool]:
            with smtplib.SMTP("127.0.0.1", bridge.smtp_port, timeout=10) as client:
                client.ehlo()
                before = client.has_extn("auth")
                client.starttls(context=client_context())
                client.ehlo()
                return before, client.has_extn("auth")

        assert await asyncio.to_thread(features) == (False, True)

    async def test_wrong_password_is_refused(self, tls_bridge):
        """A wrong SMTP password is a 535."""
        bridge, _ = tls_bridge
        with pytest.raises(smtplib.SMTPAuthenticationError):
            await asyncio.to_thread(
                _send_starttls, bridge.smtp_port, compose("x"), ("zabbix", "wrong")
            )

    async def test_authenticated_user_sends_for_its_account_only(self, tls_bridge):
        """An SMTP user mapped to arthur45 cannot send with another account's key (102)."""
        bridge, _ = tls_bridge
        ok = compose(f"arthur45@{ACCOUNT_KEY}|0612121515")
        other = compose("other@otherkey|0612121515")
        assert (await asyncio.to_thread(_send_starttls, bridge.smtp_port, ok, ("zabbix", "s3cret")))[0] == 250
        code, text = await asyncio.to_thread(_send_starttls, bridge.smtp_port, other, ("zabbix", "s3cret"))
        assert code == 250 and b"Status 102" in text
        assert [j.login for j in await bridge.store.jobs()] == ["arthur45"]


class TestRepliesContent:
    async def test_english_account_and_receipts(self, tmp_path, sink, start_bridge):
        """language: en gives English statuses; receipts: true mails status 100 on success."""
        handler, relay_port = sink
        settings = base_settings(
            tmp_path, relay_port,
            accounts={"arthur45": {"api_key": ACCOUNT_KEY, "credits": 10, "route": ["outbox"],
                                   "language": "en", "receipts": True}},
        )
        bridge = await start_bridge(make_config(tmp_path, settings))
        await smtp_send(bridge.smtp_port, compose(f"arthur45@{ACCOUNT_KEY}|0612121515|from=SHOP", "Hi"))
        [reply] = await handler.wait_for(1)
        body = reply.get_content()
        assert "Status: 100" in body and "StatusText: Message sent" in body
        assert "Numbers: +33612121515" in body
        assert "custom sender 'SHOP' not used" in body  # the STOP rule is explained

    async def test_french_is_the_default(self, running_default):
        """Statuses are in French unless the account says otherwise."""
        bridge, handler = running_default
        await smtp_send(bridge.smtp_port, compose(f"arthur45@{ACCOUNT_KEY}|0612121515", ""))
        [reply] = await handler.wait_for(1)
        assert "StatusText: Message non défini (vide)" in reply.get_content()

    async def test_crlf_in_subject_never_reaches_a_header(self, running_default):
        """A subject with encoded CR/LF cannot inject headers into the status mail."""
        bridge, handler = running_default
        raw = (
            b"From: alice@example.org\r\nTo: mail2sms@example.com\r\n"
            b"Subject: =?utf-8?q?x=0D=0ABcc:_victim@evil.example?=\r\n\r\nHello\r\n"
        )
        await smtp_send(bridge.smtp_port, raw)
        [reply] = await handler.wait_for(1)
        assert reply["Bcc"] is None
        assert handler.envelopes[0][1] == ["alice@example.org"]


@pytest.fixture
async def running_default(tmp_path, sink, start_bridge):
    handler, relay_port = sink
    bridge = await start_bridge(make_config(tmp_path, base_settings(tmp_path, relay_port)))
    return bridge, handler


class TestLogs:
    async def test_json_logs_carry_ids_and_no_secret(self, tmp_path, sink, start_bridge, capsys):
        """Production logs are JSON lines with message/job ids and never the API key."""
        handler, relay_port = sink
        bridge_log.configure("json", "info")
        try:
            bridge = await start_bridge(make_config(tmp_path, base_settings(tmp_path, relay_port)))
            raw = compose(f"arthur45@{ACCOUNT_KEY}|0612121515", "Hi", message_id="<log-1@example.org>")
            await smtp_send(bridge.smtp_port, raw)
            await smtp_send(bridge.smtp_port, compose(f"arthur45@wrong{ACCOUNT_KEY}|0612121515"))
            await wait_until(lambda: _sent(bridge), what="sent")
        finally:
            structlog.reset_defaults()
        err = capsys.readouterr().err
        events = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
        names = {e["event"] for e in events}
        assert {"accepted", "sent", "rejected"} <= names
        sent = next(e for e in events if e["event"] == "sent")
        assert sent["job_ids"] == [1] and sent["message_id"] == "log-1@example.org"
        assert ACCOUNT_KEY not in err


async def _sent(bridge) -> bool:
    jobs = await bridge.store.jobs()
    return bool(jobs) and jobs[-1].state.value == "sent"
