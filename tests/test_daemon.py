"""End to end over real sockets: smtplib -> bridge -> fake provider; statuses to a sink."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from conftest import ACCOUNT_KEY, base_settings, compose, make_config, smtp_send, wait_until
from provider_fakes import FakeHttpServer, Reply

OK = {"success": True, "code": 200, "message_id": 307, "nb_sms": 1, "cost": 0.038}


def outbox_lines(tmp_path) -> list[dict]:
    path = tmp_path / "outbox.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


@pytest.fixture
async def running(tmp_path, sink, start_bridge):
    """A bridge on the file provider, replies going to the sink."""
    handler, relay_port = sink
    bridge = await start_bridge(make_config(tmp_path, base_settings(tmp_path, relay_port)))
    return bridge, handler


class TestHappyPath:
    async def test_mail_becomes_one_sms_per_number(self, tmp_path, running):
        """A valid mail is answered 250 and each number gets one SMS at the provider."""
        bridge, _ = running
        raw = compose(f"arthur45@{ACCOUNT_KEY}|0612121515;+33614141515|from=SHOP", "Sale today")
        code, text = await smtp_send(bridge.smtp_port, raw)
        assert code == 250 and "2 SMS queued" in text
        lines = await wait_until(lambda: len(outbox_lines(tmp_path)) == 2 and outbox_lines(tmp_path))
        assert sorted(line["to"] for line in lines) == ["+33612121515", "+33614141515"]
        assert {line["text"] for line in lines} == {"Sale today"}
        assert {line["sender"] for line in lines} == {None}  # no STOP mention: not honoured

    async def test_smspartner_gets_the_documented_fields(self, tmp_path, sink, start_bridge):
        """The SMSPartner request carries apiKey, phoneNumbers, message and sender."""
        handler, relay_port = sink
        with FakeHttpServer(Reply(json=OK)) as fake:
            settings = base_settings(
                tmp_path,
                relay_port,
                providers={"partner": {"type": "smspartner", "api_key": "PK", "url": fake.url}},
                accounts={"arthur45": {"api_key": ACCOUNT_KEY, "credits": 10, "route": ["partner"]}},
            )
            bridge = await start_bridge(make_config(tmp_path, settings))
            raw = compose(f"arthur45@{ACCOUNT_KEY}|0612121515|from=SHOP", "Promo -20%\nSTOP au 36180")
            code, _ = await smtp_send(bridge.smtp_port, raw)
            assert code == 250
            await wait_until(lambda: fake.requests, what="provider call")
            await wait_until(lambda: _state(bridge, 1, "sent"), what="job sent")
            body = fake.requests[0].json()
            assert fake.requests[0].path == "/send"
            assert body["apiKey"] == "PK"
            assert body["phoneNumbers"] == "+33612121515"
            assert body["sender"] == "SHOP"
            assert body["message"] == "Promo -20%:br:STOP au 36180"

    async def test_scheduled_mail_waits_until_its_date(self, tmp_path, running):
        """A mail with date= in the future is stored and sent when due, not before."""
        bridge, _ = running
        when = datetime.now(ZoneInfo("Europe/Paris")) + timedelta(seconds=2)
        raw = compose(f"arthur45@{ACCOUNT_KEY}|0612121515|date={when:%Y-%m-%d %H:%M:%S}", "Later")
        code, _ = await smtp_send(bridge.smtp_port, raw)
        assert code == 250
        jobs = await bridge.store.jobs()
        assert jobs[0].state.value == "queued" and outbox_lines(tmp_path) == []
        await wait_until(lambda: outbox_lines(tmp_path), timeout=6, what="scheduled SMS")

    async def test_same_mail_twice_is_sent_once(self, tmp_path, running):
        """A re-delivered mail (same Message-ID and content) is recognised and dropped."""
        bridge, _ = running
        raw = compose(f"arthur45@{ACCOUNT_KEY}|0612121515", "Once", message_id="<abc@example.org>")
        assert (await smtp_send(bridge.smtp_port, raw))[0] == 250
        code, text = await smtp_send(bridge.smtp_port, raw)
        assert code == 250 and "duplicate" in text
        await wait_until(lambda: outbox_lines(tmp_path), what="first SMS")
        await bridge.dispatcher.run_once()
        assert len(outbox_lines(tmp_path)) == 1
        assert len(await bridge.store.jobs()) == 1

    async def test_mail_without_message_id_is_not_deduplicated(self, tmp_path, running):
        """Two identical alerts without Message-ID are two alerts."""
        bridge, _ = running
        raw = compose(f"arthur45@{ACCOUNT_KEY}|0612121515", "Disk full")
        del_id = raw.replace(b"Message-ID", b"X-Nothing")
        for _ in range(2):
            assert (await smtp_send(bridge.smtp_port, del_id))[0] == 250
        await wait_until(lambda: len(outbox_lines(tmp_path)) == 2, what="two SMS")


async def _state(bridge, job_id: int, state: str) -> bool:
    job = await bridge.store.job(job_id)
    return job is not None and job.state.value == state


LONG = "x" * 1225


@pytest.mark.parametrize(
    ("subject", "body", "code"),
    [
        ("   ", "Hello", 105),
        ("no-key-here|0612121515", "Hello", 109),
        (f"arthur45@{ACCOUNT_KEY}|0612121515|colour=red", "Hello", 109),
        ("arthur45@wrong-key|0612121515", "Hello", 102),
        ("nobody@" + ACCOUNT_KEY + "|0612121515", "Hello", 102),
        (f"arthur45@{ACCOUNT_KEY}|0612121515", "", 110),
        (f"arthur45@{ACCOUNT_KEY}|0612121515", LONG, 111),
        (f"arthur45@{ACCOUNT_KEY}|0612121515;12", "Hello", 113),
        (f"arthur45@{ACCOUNT_KEY}|12;0145454545", "Hello", 114),
        (f"arthur45@{ACCOUNT_KEY}|0612121515|date=2026-13-45 99:00:00", "Hello", 115),
        (f"arthur45@{ACCOUNT_KEY}|0612121515|from=1SHOP", "Hello", 123),
    ],
    ids=["105-blank", "109-no-key", "109-option", "102-key", "102-login", "110-empty",
         "111-long", "113-some-invalid", "114-none-valid", "115-date", "123-sender"],
)
async def test_every_status_arrives_by_mail(subject, body, code, running):
    """Each refused (or partly refused) request yields one status mail with its number."""
    bridge, sink = running
    raw = compose(subject, body, message_id="<req-1@example.org>", headers={"References": "<older@x>"})
    code_smtp, _ = await smtp_send(bridge.smtp_port, raw)
    assert code_smtp == 250
    [reply] = await sink.wait_for(1)
    text = reply.get_content()
    assert f"Status: {code}" in text and "StatusText: " in text
    assert reply["Auto-Submitted"] == "auto-replied"
    assert reply["In-Reply-To"] == "<req-1@example.org>"
    assert reply["References"] == "<older@x> <req-1@example.org>"
    assert reply["To"] == "alice@example.org"
    assert ACCOUNT_KEY not in reply.as_string()


async def test_insufficient_credit_says_how_much(tmp_path, sink, start_bridge):
    """Status 104 tells what the request needs and what is left, and sends nothing."""
    handler, relay_port = sink
    settings = base_settings(
        tmp_path, relay_port, accounts={"arthur45": {"api_key": ACCOUNT_KEY, "credits": 2, "route": ["outbox"]}}
    )
    bridge = await start_bridge(make_config(tmp_path, settings))
    raw = compose(f"arthur45@{ACCOUNT_KEY}|0612121515;0614141515;0615151515", "Hi")
    assert (await smtp_send(bridge.smtp_port, raw))[0] == 250
    [reply] = await handler.wait_for(1)
    assert "Status: 104" in reply.get_content()
    assert "A utiliser: 3 Crédits, Disponibles: 2 Crédits" in reply.get_content()
    assert await bridge.store.jobs() == []
    assert (await bridge.store.balances())["arthur45"] == 2


class TestNoReplyWhenUnsafe:
    @pytest.mark.parametrize(
        ("headers", "mail_from"),
        [
            ({"Auto-Submitted": "auto-generated"}, "alice@example.org"),
            ({"List-Id": "<ops.example.org>"}, "alice@example.org"),
            ({"Precedence": "bulk"}, "alice@example.org"),
            ({}, ""),
        ],
        ids=["auto-submitted", "list", "precedence-bulk", "null-sender"],
    )
    async def test_no_status_mail(self, headers, mail_from, running):
        """Auto-submitted, list and bounce mail never gets a status mail (no loops)."""
        bridge, sink = running
        raw = compose("   ", "x", headers=headers)
        code, text = await smtp_send(bridge.smtp_port, raw, mail_from=mail_from)
        assert code == 250 and "no status mail" in text and "mailed back" not in text
        assert await bridge.store.replies() == []

    async def test_reply_rate_limit(self, tmp_path, sink, start_bridge):
        """Past replies.rate_per_hour, an address gets no more status mails."""
        handler, relay_port = sink
        settings = base_settings(tmp_path, relay_port, replies={"rate_per_hour": 2})
        bridge = await start_bridge(make_config(tmp_path, settings))
        for _ in range(4):
            assert (await smtp_send(bridge.smtp_port, compose("   ")))[0] == 250
        assert len(await bridge.store.replies()) == 2


class TestSmtpAnswers:
    async def test_relay_attempt_is_refused(self, running):
        """RCPT TO any other address is 550: the bridge is no open relay."""
        bridge, _ = running
        code, text = await smtp_send(bridge.smtp_port, compose("x"), rcpt="victim@elsewhere.net")
        assert code == 550 and "5.7.1" in text

    async def test_oversize_is_552(self, tmp_path, sink, start_bridge):
        """A message over smtp.max_size is refused with 552 and nothing is stored."""
        handler, relay_port = sink
        settings = base_settings(tmp_path, relay_port, smtp={"max_size": 4096})
        bridge = await start_bridge(make_config(tmp_path, settings))
        code, _ = await smtp_send(bridge.smtp_port, compose(f"arthur45@{ACCOUNT_KEY}|0612121515", "y" * 10000))
        assert code == 552
        assert await bridge.store.jobs() == []

    async def test_reject_inline_answers_550_with_the_status(self, tmp_path, sink, start_bridge):
        """With reject_inline, a refused request is a 550 naming the status, no mail."""
        handler, relay_port = sink
        settings = base_settings(tmp_path, relay_port, smtp={"reject_inline": True})
        bridge = await start_bridge(make_config(tmp_path, settings))
        code, text = await smtp_send(bridge.smtp_port, compose(f"arthur45@{ACCOUNT_KEY}|0612121515", LONG))
        assert code == 550 and "5.6.0 Status 111" in text
        assert await bridge.store.replies() == []

    async def test_store_failure_is_451(self, running):
        """When the store cannot commit, DATA gets 451 so the sending MTA keeps the mail."""
        bridge, _ = running
        await bridge.store.close()
        code, text = await smtp_send(bridge.smtp_port, compose(f"arthur45@{ACCOUNT_KEY}|0612121515"))
        assert code == 451 and "4.3.0" in text


class TestProviderFaults:
    async def test_429_then_200_sends_one_sms(self, tmp_path, sink, start_bridge):
        """A 429 is retried after a backoff; the SMS goes out once."""
        handler, relay_port = sink
        with FakeHttpServer(Reply(status=429), Reply(json=OK)) as fake:
            settings = base_settings(
                tmp_path, relay_port,
                providers={"partner": {"type": "smspartner", "api_key": "PK", "url": fake.url}},
                accounts={"arthur45": {"api_key": ACCOUNT_KEY, "credits": 10, "route": ["partner"]}},
            )
            bridge = await start_bridge(make_config(tmp_path, settings))
            assert (await smtp_send(bridge.smtp_port, compose(f"arthur45@{ACCOUNT_KEY}|0612121515")))[0] == 250
            await wait_until(lambda: _state(bridge, 1, "sent"), what="sent after retry")
            assert len(fake.requests) == 2
            job = await bridge.store.job(1)
            assert job.attempts == 2

    async def test_timeout_after_request_is_not_resent(self, tmp_path, sink, start_bridge):
        """A provider that reads the request and never answers leaves the job unknown."""
        handler, relay_port = sink
        with FakeHttpServer(Reply(json=OK, delay=3)) as fake:
            settings = base_settings(
                tmp_path, relay_port,
                providers={
                    "partner": {"type": "smspartner", "api_key": "PK", "url": fake.url, "timeout": 0.3},
                    "outbox": {"type": "file", "path": str(tmp_path / "outbox.jsonl")},
                },
                accounts={"arthur45": {"api_key": ACCOUNT_KEY, "credits": 10, "route": ["partner", "outbox"]}},
            )
            bridge = await start_bridge(make_config(tmp_path, settings))
            assert (await smtp_send(bridge.smtp_port, compose(f"arthur45@{ACCOUNT_KEY}|0612121515")))[0] == 250
            await wait_until(lambda: _state(bridge, 1, "unknown"), what="job unknown")
            await bridge.dispatcher.run_once()
            assert len(fake.requests) == 1
            assert outbox_lines(tmp_path) == []  # no failover after an ambiguous outcome

    async def test_refused_connection_fails_over(self, tmp_path, sink, start_bridge):
        """A provider that refuses connections is skipped for the next one in the route."""
        from provider_fakes import closed_port

        handler, relay_port = sink
        settings = base_settings(
            tmp_path, relay_port,
            providers={
                "partner": {"type": "smspartner", "api_key": "PK", "url": f"http://127.0.0.1:{closed_port()}"},
                "outbox": {"type": "file", "path": str(tmp_path / "outbox.jsonl")},
            },
            accounts={"arthur45": {"api_key": ACCOUNT_KEY, "credits": 10, "route": ["partner", "outbox"]}},
        )
        bridge = await start_bridge(make_config(tmp_path, settings))
        assert (await smtp_send(bridge.smtp_port, compose(f"arthur45@{ACCOUNT_KEY}|0612121515")))[0] == 250
        await wait_until(lambda: _state(bridge, 1, "sent"), what="sent by the second provider")
        assert len(outbox_lines(tmp_path)) == 1
        assert (await bridge.store.job(1)).provider == "outbox"


async def test_credits_are_exact_after_successes_and_refunds(tmp_path, sink, start_bridge):
    """Debits at enqueue, refunds on permanent failure: the ledger adds up to the balance."""
    handler, relay_port = sink
    refusal = {"success": False, "code": 9, "errors": [{"elementId": "x", "message": "Invalid phone number"}]}
    with FakeHttpServer(Reply(json=OK), Reply(json=refusal), Reply(json=OK)) as fake:
        settings = base_settings(
            tmp_path, relay_port,
            providers={"partner": {"type": "smspartner", "api_key": "PK", "url": fake.url}},
            accounts={"arthur45": {"api_key": ACCOUNT_KEY, "credits": 20, "route": ["partner"]}},
            dispatcher={"concurrency": 1},
        )
        bridge = await start_bridge(make_config(tmp_path, settings))
        two_parts = "z" * 200
        for number in ("0612121515", "0614141515", "0615151515"):
            raw = compose(f"arthur45@{ACCOUNT_KEY}|{number}", two_parts)
            assert (await smtp_send(bridge.smtp_port, raw))[0] == 250
        assert (await smtp_send(bridge.smtp_port, compose(f"arthur45@{ACCOUNT_KEY}|12", "x")))[0] == 250
        await wait_until(
            lambda: bridge.store.count_jobs(), what="jobs"
        )
        await wait_until(lambda: _all_final(bridge), what="all jobs final")
        states = sorted(j.state.value for j in await bridge.store.jobs())
        assert states == ["failed", "sent", "sent"]
        balance = (await bridge.store.balances())["arthur45"]
        assert balance == 20 - 2 * 2  # two sent SMS of two parts; the refused one refunded
        ledger = await bridge.store.ledger("arthur45")
        assert sum(row["amount"] for row in ledger) == balance
        assert [row["reason"] for row in ledger].count("refund") == 1
        statuses = [m.get_content() for m in await handler.wait_for(2)]
        assert any("Status: 122" in s for s in statuses)  # the refused SMS is explained
        assert any("Status: 114" in s for s in statuses)


async def _all_final(bridge) -> bool:
    jobs = await bridge.store.jobs()
    return len(jobs) == 3 and all(j.state.value in ("sent", "failed", "unknown") for j in jobs)


async def test_bounce_picked_up_from_a_mailbox_gets_no_reply(running):
    """A mail whose Return-Path is <> (as the IMAP poller reports it) gets no status mail."""
    from bridge.intake import Envelope

    bridge, _ = running
    outcome = await bridge.intake.submit(compose("   "), Envelope("", source="imap"))
    assert outcome.status == 105
    assert await bridge.store.replies() == []


class TestHostileText:
    async def test_utf7_lone_surrogate_body_is_sent_with_a_replacement(self, tmp_path, running):
        """A utf-7 body decoding to a lone surrogate (``+3SU-``) is committed (250), the
        surrogate replaced by U+FFFD, instead of a 500 leaking the exception."""
        bridge, _ = running
        raw = (f"From: alice@example.org\r\nTo: mail2sms@example.com\r\nSubject: arthur45@{ACCOUNT_KEY}|0612121515\r\n"
               "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-7\r\n\r\nhello +3SU-\r\n").encode()
        code, text = await smtp_send(bridge.smtp_port, raw)
        assert code == 250, text
        [line] = await wait_until(lambda: outbox_lines(tmp_path), what="sms")
        assert line["text"] == "hello \ufffd"

    async def test_lone_surrogate_in_the_subject_gets_a_numbered_status(self, running):
        """An encoded-word subject carrying a lone surrogate: 250 and status 109 mailed back."""
        bridge, handler = running
        raw = (b"From: alice@example.org\r\nTo: mail2sms@example.com\r\n"
               b"Subject: =?utf-7?q?+3SU-?=\r\n\r\nhello\r\n")
        code, text = await smtp_send(bridge.smtp_port, raw)
        assert code == 250 and "Status 109" in text
        [reply] = await handler.wait_for(1)
        assert reply["X-Mail2SMS-Status"] == "109"

    async def test_unparsable_subject_never_stores_the_api_key(self, tmp_path, running):
        """A subject without '|' is refused (109) and its API key is stored nowhere."""
        bridge, handler = running
        code, _ = await smtp_send(bridge.smtp_port, compose(f"arthur45@{ACCOUNT_KEY} 0612121515", "Hi"))
        assert code == 250
        await handler.wait_for(1)
        await bridge.store.close()
        data = b"".join(p.read_bytes() for p in tmp_path.glob("bridge.db*"))
        assert ACCOUNT_KEY.encode() not in data
        assert b"arthur45@***" in data

    async def test_mime_boundaries_of_a_broken_multipart_are_not_sent(self, tmp_path, running):
        """A multipart body whose boundary the header does not declare: the SMS is the text,
        without the boundary lines and part headers."""
        bridge, _ = running
        raw = (f"From: alice@example.org\r\nTo: mail2sms@example.com\r\nSubject: arthur45@{ACCOUNT_KEY}|0612121515\r\n"
               "MIME-Version: 1.0\r\nContent-Type: text/plain\r\n\r\n"
               "--b1_abc\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nDisk full\r\n--b1_abc--\r\n").encode()
        assert (await smtp_send(bridge.smtp_port, raw))[0] == 250
        [line] = await wait_until(lambda: outbox_lines(tmp_path), what="sms")
        assert line["text"] == "Disk full"


class TestSupervision:
    async def test_a_dispatcher_that_cannot_recover_makes_smtp_answer_451(self, tmp_path, sink):
        """The store breaks under the dispatcher's idle path: the loop is retried, then given
        up, and from then on SMTP answers 451 (the sending MTA keeps the mail) instead of 250."""
        from bridge.daemon import Bridge

        handler, relay_port = sink
        bridge = Bridge(make_config(tmp_path, base_settings(tmp_path, relay_port)))
        bridge.supervisor.backoff_base = bridge.supervisor.backoff_max = 0.01
        await bridge.start()
        try:
            with bridge.store._read_lock:  # not under a read in flight: that would crash the process
                bridge.store._reader.close()  # every read fails from now on
            await wait_until(lambda: bridge.supervisor.failed.is_set(), what="supervisor gave up")
            assert "StoreError" in bridge.supervisor.reason
            code, text = await smtp_send(bridge.smtp_port, compose(f"arthur45@{ACCOUNT_KEY}|0612121515"))
            assert code == 451 and "4.3.0" in text
        finally:
            await bridge.stop()

    async def test_unexpected_error_in_the_handler_is_451_with_an_error_id(self, tmp_path, running):
        """A bug in intake answers 451 with an error id, never the exception text."""
        bridge, _ = running
        bridge.intake.config = None  # intake now fails on every mail
        code, text = await smtp_send(bridge.smtp_port, compose(f"arthur45@{ACCOUNT_KEY}|0612121515"))
        assert code == 451 and "error id" in text and "AttributeError" not in text


async def test_forged_reply_tos_to_one_domain_get_at_most_the_domain_cap(tmp_path, sink, start_bridge):
    """A flood of refused mails whose Reply-To names many mailboxes of one domain (+tags,
    case) sends that domain at most its hourly cap of status mails."""
    handler, relay_port = sink
    settings = base_settings(tmp_path, relay_port, replies={"rate_per_hour": 20, "rate_per_domain_per_hour": 5})
    bridge = await start_bridge(make_config(tmp_path, settings))
    for i in range(40):
        mailbox = f"Target+{i}" if i % 2 else f"user{i}"
        raw = compose("   ", "x", headers={"Reply-To": f"{mailbox}@Victim.example"})  # 105
        assert (await smtp_send(bridge.smtp_port, raw))[0] == 250
    replies = await bridge.store.replies()
    assert len(replies) == 5 and all(r["to_addr"].endswith("@victim.example") for r in replies)
