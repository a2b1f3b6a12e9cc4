"""The listener's edge against abuse: caps, AUTH on SMTPS, failure slow-down, postmaster.

Every test talks to a real bridge on loopback with smtplib.
"""

from __future__ import annotations

import asyncio
import smtplib
import socket
import time

import pytest
from conftest import ACCOUNT_KEY, base_settings, compose, make_config
from provider_fakes import closed_port
from structlog.testing import capture_logs
from test_smtp_tls_auth import client_context

from bridge.daemon import Bridge
from bridge.smtp import ListenError


def _settings(tmp_path, relay_port=1, smtp=None, **overrides):
    return base_settings(tmp_path, relay_port, smtp={**(smtp or {})}, **overrides)


@pytest.fixture
async def edge_bridge(tmp_path, sink, start_bridge, certificate):  # noqa: F811
    """A bridge with TLS, AUTH required, tight caps and a short failure delay."""
    _, relay_port = sink
    cert, key = certificate
    tls_port = closed_port()
    settings = _settings(
        tmp_path, relay_port,
        smtp={
            "tls": {"cert": str(cert), "key": str(key)},
            "tls_listen": f"127.0.0.1:{tls_port}",
            "max_connections_per_client": 3,
            "max_recipients": 3,
            "auth": {
                "users": {"zabbix": {"password": "s3cret", "account": "arthur45"}},
                "max_failures": 3,
                "failure_delay": 0.2,
            },
        },
    )
    bridge = await start_bridge(make_config(tmp_path, settings))
    return bridge, tls_port


@pytest.fixture
async def open_bridge(tmp_path, sink, start_bridge):
    """A bridge without AUTH, with a short failure delay for wrong API keys."""
    handler, relay_port = sink
    settings = _settings(tmp_path, relay_port, smtp={"auth": {"failure_delay": 0.2, "max_failures": 3}})
    return await start_bridge(make_config(tmp_path, settings)), handler


class TestImplicitTls:
    async def test_auth_offered_and_works_on_smtps(self, edge_bridge):
        """The implicit-TLS port offers AUTH at once, so it works with AUTH required."""
        _, tls_port = edge_bridge

        def send() -> tuple[bool, int]:
            with smtplib.SMTP_SSL("127.0.0.1", tls_port, timeout=10, context=client_context()) as client:
                client.ehlo()
                offered = client.has_extn("auth")
                client.login("zabbix", "s3cret")
                client.mail("alice@example.org")
                client.rcpt("mail2sms@example.com")
                return offered, client.data(compose(f"arthur45@{ACCOUNT_KEY}|0612121515"))[0]

        assert await asyncio.to_thread(send) == (True, 250)


def _bad_logins(port: int, attempts: int) -> tuple[list[int], bool, float]:
    """Try wrong passwords after STARTTLS; return the codes, whether we were cut off, the time."""
    codes: list[int] = []
    started = time.monotonic()
    with smtplib.SMTP("127.0.0.1", port, timeout=20) as client:
        client.starttls(context=client_context())
        client.ehlo()
        try:
            for _ in range(attempts):
                code, _ = client.docmd("AUTH", "PLAIN AHphYmJpeAB3cm9uZw==")  # zabbix / wrong
                codes.append(code)
                if code == 421:
                    break
        except smtplib.SMTPServerDisconnected:
            return codes, True, time.monotonic() - started
        try:
            client.noop()
        except smtplib.SMTPServerDisconnected:
            return codes, True, time.monotonic() - started
    return codes, False, time.monotonic() - started


class TestAuthFailures:
    async def test_flood_of_wrong_passwords_is_cut_off_and_slowed(self, edge_bridge):
        """200 wrong passwords: the connection is closed after 3, and each new try waits longer."""
        bridge, _ = edge_bridge
        codes, cut, first = await asyncio.to_thread(_bad_logins, bridge.smtp_port, 200)
        assert codes == [535, 535, 535, 421] and cut
        assert first >= 0.2 + 0.4  # the 2nd and 3rd AUTH wait for the failures before them
        codes, cut, second = await asyncio.to_thread(_bad_logins, bridge.smtp_port, 200)
        assert codes == [535, 535, 535, 421] and cut
        assert second >= 0.6 + 0.8 + 1.0  # the address's failures are remembered across connections

    async def test_right_password_still_works_after_failures(self, edge_bridge):
        """A slowed-down client that finally gives the right password gets in."""
        bridge, _ = edge_bridge
        await asyncio.to_thread(_bad_logins, bridge.smtp_port, 1)

        def login() -> int:
            with smtplib.SMTP("127.0.0.1", bridge.smtp_port, timeout=10) as client:
                client.starttls(context=client_context())
                client.ehlo()
                return client.login("zabbix", "s3cret")[0]

        assert await asyncio.to_thread(login) == 235


class TestWrongApiKeys:
    async def test_wrong_keys_are_slowed_and_cut_off(self, open_bridge):
        """Guessing API keys: each wrong key answers later, the third ends the connection."""
        bridge, _ = open_bridge

        def guess() -> tuple[list[float], bool]:
            times: list[float] = []
            with smtplib.SMTP("127.0.0.1", bridge.smtp_port, timeout=20) as client:
                try:
                    for attempt in range(5):
                        started = time.monotonic()
                        client.sendmail(
                            "alice@example.org", ["mail2sms@example.com"],
                            compose(f"arthur45@guess{attempt}|0612121515"),
                        )
                        times.append(time.monotonic() - started)
                        client.noop()
                except smtplib.SMTPServerDisconnected:
                    return times, True
            return times, False

        times, cut = await asyncio.to_thread(guess)
        assert cut and len(times) == 3
        assert times[1] >= 0.2 and times[2] >= 0.4  # 0.2 s more per recent failure
        assert await bridge.store.jobs() == []


class TestCaps:
    async def test_connections_per_client_are_capped(self, edge_bridge):
        """Beyond smtp.max_connections_per_client, a new connection gets 421 and is closed."""
        bridge, _ = edge_bridge

        def connect() -> list[bytes]:
            sockets = [socket.create_connection(("127.0.0.1", bridge.smtp_port), timeout=5) for _ in range(4)]
            try:
                return [s.recv(200) for s in sockets]
            finally:
                for s in sockets:
                    s.close()

        greetings = await asyncio.to_thread(connect)
        assert [g[:3] for g in greetings] == [b"220", b"220", b"220", b"421"]
        assert b"too many connections" in greetings[3]

        def again() -> bytes:  # slots are given back when connections close
            with socket.create_connection(("127.0.0.1", bridge.smtp_port), timeout=5) as s:
                return s.recv(200)

        await asyncio.sleep(0.2)
        assert (await asyncio.to_thread(again))[:3] == b"220"

    async def test_recipients_per_transaction_are_capped(self, edge_bridge):
        """Beyond smtp.max_recipients RCPT commands (refused ones included): 452."""
        bridge, _ = edge_bridge

        def rcpts() -> list[int]:
            with smtplib.SMTP("127.0.0.1", bridge.smtp_port, timeout=10) as client:
                client.ehlo()
                client.mail("alice@example.org")
                codes = [client.rcpt(f"victim{i}@elsewhere.example")[0] for i in range(2)]
                codes += [client.rcpt("mail2sms@example.com")[0] for _ in range(2)]
                return codes

        assert await asyncio.to_thread(rcpts) == [550, 550, 250, 452]


class TestPostmaster:
    @pytest.mark.parametrize("rcpt", ["postmaster@example.com", "PostMaster@Example.com", "postmaster"])
    async def test_postmaster_accepted_and_logged(self, open_bridge, rcpt):
        """postmaster is accepted (RFC 5321); its mail is logged, never read as an SMS request."""
        bridge, handler = open_bridge

        def send() -> tuple[int, bytes]:
            with smtplib.SMTP("127.0.0.1", bridge.smtp_port, timeout=10) as client:
                client.ehlo()
                client.mail("ops@example.org")
                assert client.rcpt(rcpt)[0] == 250
                return client.data(compose(f"arthur45@{ACCOUNT_KEY}|0612121515", "Your server bounces"))

        with capture_logs() as logs:
            code, text = await asyncio.to_thread(send)
        assert code == 250 and b"postmaster" in text
        event = next(e for e in logs if e["event"] == "postmaster_mail")
        assert event["mail_from"] == "ops@example.org"
        await asyncio.sleep(0.3)
        assert await bridge.store.jobs() == [] and handler.messages == []

    async def test_postmaster_and_bridge_together(self, open_bridge):
        """A mail to postmaster and to the bridge is still an SMS request for the bridge."""
        bridge, _ = open_bridge

        def send() -> int:
            with smtplib.SMTP("127.0.0.1", bridge.smtp_port, timeout=10) as client:
                refused = client.sendmail(
                    "alice@example.org", ["postmaster@example.com", "mail2sms@example.com"],
                    compose(f"arthur45@{ACCOUNT_KEY}|0612121515"),
                )
                return len(refused)

        assert await asyncio.to_thread(send) == 0
        assert len(await bridge.store.jobs()) == 1


class TestBusyPort:
    async def test_busy_port_names_the_setting(self, tmp_path):
        """Starting on a port in use fails with an error naming smtp.listen and the address."""
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1]
            bridge = Bridge(make_config(tmp_path, _settings(tmp_path, smtp={"listen": f"127.0.0.1:{port}"})))
            try:
                with pytest.raises(ListenError) as caught:
                    await bridge.start()
            finally:
                await bridge.stop()
        assert str(caught.value) == f"smtp.listen 127.0.0.1:{port}: address already in use " \
            "(is another bridge or mail server listening there?)"


class TestIdleTimeout:
    async def test_a_silent_connection_is_closed_a_talking_one_is_not(self, tmp_path, sink, start_bridge):
        """smtp.idle_timeout: a client silent that long is disconnected (and its slot given
        back); one that speaks more often stays connected well past the timeout."""
        _, relay_port = sink
        bridge = await start_bridge(make_config(tmp_path, _settings(
            tmp_path, relay_port, smtp={"idle_timeout": 0.6, "max_connections_per_client": 1})))

        def silent() -> tuple[bytes, bytes, float]:
            with socket.create_connection(("127.0.0.1", bridge.smtp_port), timeout=10) as s:
                greeting, began = s.recv(200), time.monotonic()
                return greeting, s.recv(200), time.monotonic() - began  # b"": closed by the bridge

        greeting, after, waited = await asyncio.to_thread(silent)
        assert greeting[:3] == b"220" and after == b"" and 0.5 <= waited < 5

        def talking() -> list[int]:
            with smtplib.SMTP("127.0.0.1", bridge.smtp_port, timeout=10) as client:
                codes = [client.ehlo()[0]]
                for _ in range(8):  # 1.6 s in all, a command every 0.2 s
                    time.sleep(0.2)
                    codes.append(client.noop()[0])
                client.mail("alice@example.org")
                client.rcpt("mail2sms@example.com")
                codes.append(client.data(compose(f"arthur45@{ACCOUNT_KEY}|0612121515", "still here"))[0])
                return codes

        assert await asyncio.to_thread(talking) == [250] * 10
