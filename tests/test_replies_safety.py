"""When a status mail may go out, what the reply cap counts, and its language (replies.py)."""

from __future__ import annotations

import email
import email.policy

import pytest
from conftest import ACCOUNT_KEY, base_settings, compose, make_config, smtp_send

from bridge.status_mail import compose_status, may_reply, reply_cap_keys
from bridge.statuses import localise


@pytest.mark.parametrize(
    ("to", "flags", "reason"),
    [
        pytest.param("alice@example.org", {}, None, id="ordinary"),
        pytest.param(None, {}, "null_sender", id="no-address"),
        pytest.param("alice@example.org", {"null_sender": True}, "null_sender", id="null-sender"),
        pytest.param("MAILER-DAEMON@mx.example.org", {}, "mailer_daemon", id="mailer-daemon"),
        pytest.param("Postmaster@example.org", {}, "mailer_daemon", id="postmaster"),
        pytest.param("alice@example.org", {"bounce": "multipart/report"}, "bounce", id="report"),
        pytest.param("alice@example.org", {"auto_submitted": True}, "auto_submitted", id="auto"),
        pytest.param("alice@example.org", {"list_mail": True}, "list_mail", id="list"),
    ],
)
def test_may_reply(to, flags, reason) -> None:
    """Replies go to people only: never to mail systems, bounces, automatic or list mail."""
    kwargs = {"null_sender": False, "auto_submitted": False, "list_mail": False, **flags}
    assert may_reply(to, **kwargs) == reason


@pytest.mark.parametrize(
    ("address", "keys"),
    [
        pytest.param("target@victim.org", ("target@victim.org", "@victim.org"), id="plain"),
        pytest.param("target+17@victim.org", ("target@victim.org", "@victim.org"), id="plus-tag"),
        pytest.param("Target+a+b@Victim.ORG.", ("target@victim.org", "@victim.org"), id="case-dot-tags"),
        pytest.param("+only@victim.org", ("+only@victim.org", "@victim.org"), id="tag-only-local"),
        pytest.param("other@victim.org", ("other@victim.org", "@victim.org"), id="same-domain"),
        pytest.param("nobody", ("nobody",), id="no-domain"),
    ],
)
def test_reply_cap_keys(address, keys) -> None:
    """One inbox is one key whatever its +tag or case; its domain is a second key."""
    assert reply_cap_keys(address) == keys


def test_french_status_mail_is_all_french() -> None:
    """A French account's 111 reads in French from top to bottom."""
    reply = compose_status(
        code=111, to="alice@example.org", sender="mail2sms@example.com", language="fr",
        note="9 parts needed, 8 allowed (1300 characters GSM-7)",
        received=[("Objet", "arthur45@***|0612121515"), ("Attention",
                  "custom sender 'SHOP' not used towards French numbers: the text must end with "
                  "'STOP au 36xxx' (space or line break before it)")],
    )
    body = email.message_from_bytes(reply.message, policy=email.policy.default).get_content()
    assert "Détails : 9 SMS nécessaires, 8 autorisés (1300 caractères GSM-7)" in body
    assert "expéditeur personnalisé 'SHOP' non utilisé" in body
    for english in ("parts needed", "allowed", "custom sender", "Details", "Received"):
        assert english not in body


def test_english_stays_english() -> None:
    """English accounts get the notes as written."""
    assert localise("9 parts needed, 8 allowed (1300 characters GSM-7)", "en").startswith("9 parts needed")


class TestOverSmtp:
    @pytest.fixture
    async def bridge(self, tmp_path, sink, start_bridge):
        handler, relay_port = sink
        return await start_bridge(make_config(tmp_path, base_settings(tmp_path, relay_port))), handler

    @pytest.mark.parametrize(
        ("sender", "headers"),
        [
            pytest.param("MAILER-DAEMON@mx.example.org", {}, id="mailer-daemon"),
            pytest.param("alice@example.org", {"Return-Path": "<>"}, id="return-path-null"),
            pytest.param("alice@example.org", {"X-Failed-Recipients": "x@example.org"}, id="failed-recipients"),
        ],
    )
    async def test_no_status_mail_to_bounces(self, bridge, sender, headers):
        """A refused mail from a mail system or a bounce gets no status mail (backscatter)."""
        bridge, handler = bridge
        normal = compose(f"arthur45@{ACCOUNT_KEY}|0612121515", "", sender="bob@example.org")
        await smtp_send(bridge.smtp_port, compose("arthur45@wrong|0612121515", sender=sender, headers=headers))
        await smtp_send(bridge.smtp_port, normal)  # a normal refusal, to know replies flow
        [reply] = await handler.wait_for(1)
        assert reply["To"] == "bob@example.org"
        await bridge.stop()
        assert len(handler.messages) == 1

    async def test_delivery_report_gets_no_status(self, bridge):
        """A multipart/report delivery notice refused as a request gets no status mail."""
        bridge, handler = bridge
        raw = (
            b"From: alice@example.org\r\nTo: mail2sms@example.com\r\nSubject: Undelivered\r\n"
            b"MIME-Version: 1.0\r\nContent-Type: multipart/report; report-type=delivery-status; boundary=x\r\n"
            b"\r\n--x\r\nContent-Type: text/plain\r\n\r\nYour mail was not delivered\r\n--x--\r\n"
        )
        await smtp_send(bridge.smtp_port, raw)
        await smtp_send(bridge.smtp_port, compose("", sender="bob@example.org"))
        [reply] = await handler.wait_for(1)
        assert reply["To"] == "bob@example.org"

    async def test_deeply_nested_auto_mail_gets_no_status(self, bridge):
        """1,000 nested multiparts with Auto-Submitted: no status mail goes out."""
        bridge, handler = bridge
        opening = b"".join(b"Content-Type: multipart/mixed; boundary=b%d\r\n\r\n--b%d\r\n" % (i, i) for i in range(1000))
        raw = (b"From: alice@example.org\r\nSubject: arthur45@wrong|0612121515\r\n"
               b"Auto-Submitted: auto-generated\r\nMIME-Version: 1.0\r\n" + opening + b"Content-Type: text/plain\r\n\r\nx\r\n")
        code, _ = await smtp_send(bridge.smtp_port, raw)
        assert code == 250
        await smtp_send(bridge.smtp_port, compose("", sender="bob@example.org"))
        [reply] = await handler.wait_for(1)
        assert reply["To"] == "bob@example.org"

    async def test_too_long_in_french(self, bridge):
        """The 111 status mail of a French account has no English in it."""
        bridge, handler = bridge
        await smtp_send(bridge.smtp_port, compose(f"arthur45@{ACCOUNT_KEY}|0612121515", "x" * 1300))
        [reply] = await handler.wait_for(1)
        body = reply.get_content()
        assert "Status: 111" in body and "Détails : 9 SMS nécessaires, 8 autorisés" in body
        assert "needed" not in body and "allowed" not in body
