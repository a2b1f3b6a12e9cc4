"""Delivery reports of the generic http provider, posted to the running daemon over HTTP.

The gateway is a fake on loopback whose answer carries a message id (``{"id": "gw-N"}``);
its callbacks are shaped the way the operator declares them in ``http.callbacks.gw``, as the
generic provider's own contract is the operator's description, not a vendor document.
"""

from __future__ import annotations

import httpx
import pytest
from conftest import ACCOUNT_KEY, base_settings, compose, make_config, smtp_send, wait_until
from provider_fakes import FakeHttpServer, Reply
from structlog.testing import capture_logs
from test_metrics import samples, value

from bridge.config import parse_config
from bridge.errors import ConfigErrors
from bridge.model import JobState as S

SECRET = "s3cret-dlr-token-0123"
MAPPING = {
    "secret": SECRET,
    "status": "status",
    "message_id": "id",
    "reference": "data.ref",
    "reason": "err",
    "delivered": ["DELIVRD"],
    "undelivered": ["UNDELIV", "EXPIRED", "REJECTD"],
}


@pytest.fixture
async def gateway(tmp_path, start_bridge):
    """A bridge sending through the http provider ``gw``, its reports mapped; job 1 is sent."""
    with FakeHttpServer(Reply(json={"id": "gw-1"})) as fake:
        settings = base_settings(
            tmp_path,
            http={"listen": "127.0.0.1:0", "max_body": 2048, "callbacks": {"gw": MAPPING}},
            providers={"gw": {"type": "http", "url": fake.url, "body": {"to": "{to}", "text": "{text}",
                                                                        "ref": "{reference}"},
                              "message_id_path": "id"}},
            accounts={"arthur45": {"api_key": ACCOUNT_KEY, "credits": 10, "route": ["gw"]}},
        )
        bridge = await start_bridge(make_config(tmp_path, settings))
        assert (await smtp_send(bridge.smtp_port, compose(f"arthur45@{ACCOUNT_KEY}|0612121515")))[0] == 250
        await wait_until(lambda: _state_is(bridge, 1, S.SENT), what="job 1 sent")
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{bridge.web.port}", timeout=10) as client:
            yield bridge, client


async def _state_is(bridge, job_id: int, state: S) -> bool:
    job = await bridge.store.job(job_id)
    return job is not None and job.state is state


async def _state(bridge, job_id: int = 1) -> S:
    return (await bridge.store.job(job_id)).state


class TestReports:
    async def test_delivered_by_message_id_as_a_form(self, gateway):
        """A form-encoded DELIVRD for the provider's id moves the job to delivered."""
        bridge, client = gateway
        answer = await client.post(f"/dlr/gw/{SECRET}", data={"id": "gw-1", "status": "DELIVRD"})
        assert answer.status_code == 200 and answer.json() == {"result": "delivered"}
        assert await _state(bridge) is S.DELIVERED

    async def test_undelivered_by_reference_as_json_keeps_the_reason(self, gateway):
        """A JSON report found by our reference moves the job to undelivered with the reason."""
        bridge, client = gateway
        body = {"status": "undeliv", "data": {"ref": "m2s-1-1"}, "err": "absent subscriber"}
        answer = await client.post(f"/dlr/gw/{SECRET}", json=body)
        assert answer.json() == {"result": "undelivered"}
        job = await bridge.store.job(1)
        assert job.state is S.UNDELIVERED and job.last_error == "gw: undelivered (undeliv: absent subscriber)"

    async def test_a_get_callback_is_read_from_the_query(self, gateway):
        """Gateways that call back with GET and a query string are understood."""
        bridge, client = gateway
        answer = await client.get(f"/dlr/gw/{SECRET}", params={"id": "gw-1", "status": "DELIVRD"})
        assert answer.json() == {"result": "delivered"} and await _state(bridge) is S.DELIVERED

    async def test_duplicates_and_late_reports_never_move_a_job_backwards(self, gateway):
        """After delivered, a second report (same or contrary) changes nothing and is answered 200."""
        bridge, client = gateway
        url = f"/dlr/gw/{SECRET}"
        assert (await client.post(url, data={"id": "gw-1", "status": "DELIVRD"})).status_code == 200
        again = await client.post(url, data={"id": "gw-1", "status": "DELIVRD"})
        contrary = await client.post(url, data={"id": "gw-1", "status": "EXPIRED"})
        assert again.status_code == contrary.status_code == 200
        assert contrary.json() == {"result": "job already delivered"}
        assert await _state(bridge) is S.DELIVERED

    async def test_intermediate_status_changes_nothing(self, gateway):
        """A status in neither list (ACCEPTD) is acknowledged and ignored."""
        bridge, client = gateway
        answer = await client.post(f"/dlr/gw/{SECRET}", data={"id": "gw-1", "status": "ACCEPTD"})
        assert answer.json() == {"result": "ignored"} and await _state(bridge) is S.SENT

    async def test_unknown_message_is_answered_200_and_logged(self, gateway):
        """A report about an id no job has: 200 (the gateway stops retrying) and a log line."""
        bridge, client = gateway
        with capture_logs() as logs:
            answer = await client.post(f"/dlr/gw/{SECRET}", data={"id": "gw-999", "status": "DELIVRD"})
        assert answer.status_code == 200 and answer.json() == {"result": "unknown message"}
        assert [e["message_id"] for e in logs if e["event"] == "dlr_unknown_message"] == ["gw-999"]

    async def test_wrong_secret_is_403_logged_and_changes_nothing(self, gateway):
        """A forged callback (wrong or missing secret) gets 403 and a log line; the job stays sent."""
        bridge, client = gateway
        with capture_logs() as logs:
            forged = await client.post("/dlr/gw/not-the-secret", data={"id": "gw-1", "status": "UNDELIV"})
            missing = await client.post("/dlr/gw/", data={"id": "gw-1", "status": "UNDELIV"})
        assert forged.status_code == 403 and forged.json() == {"error": "forbidden"}
        assert missing.status_code == 404
        assert [e["event"] for e in logs if e["event"].startswith(("dlr_", "callback_"))] == ["callback_forbidden"]
        assert SECRET not in str(logs) and "not-the-secret" not in str(logs)
        assert await _state(bridge) is S.SENT

    async def test_provider_without_mapping_is_404(self, gateway):
        """Only providers in http.callbacks have a report route."""
        _, client = gateway
        answer = await client.post(f"/dlr/outbox/{SECRET}", data={"id": "gw-1", "status": "DELIVRD"})
        assert answer.status_code == 404

    async def test_unreadable_report_is_400(self, gateway):
        """A report without status or id, or a body that is not JSON, is refused with 400."""
        bridge, client = gateway
        url = f"/dlr/gw/{SECRET}"
        no_id = await client.post(url, data={"status": "DELIVRD"})
        bad_json = await client.post(url, content=b"{nope", headers={"Content-Type": "application/json"})
        assert no_id.status_code == bad_json.status_code == 400
        assert await _state(bridge) is S.SENT

    async def test_a_multipart_form_is_read(self, gateway):
        bridge, client = gateway
        answer = await client.post(f"/dlr/gw/{SECRET}", data={"id": "gw-1", "status": "DELIVRD"},
                                   files={"unused": ("a.txt", b"x")})
        assert answer.json() == {"result": "delivered"}

    async def test_a_form_in_a_broken_charset_is_400(self, gateway):
        bridge, client = gateway
        answer = await client.post(f"/dlr/gw/{SECRET}", content=b"id=gw-1&status=\xff\xfe",
                                   headers={"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"})
        assert answer.status_code == 400 and "cannot be read" in answer.json()["error"]
        assert await _state(bridge) is S.SENT

    async def test_oversized_report_is_413(self, gateway):
        """A report body above http.max_body is refused before it is read."""
        bridge, client = gateway
        answer = await client.post(f"/dlr/gw/{SECRET}", data={"id": "gw-1", "status": "DELIVRD", "x": "y" * 4096})
        assert answer.status_code == 413 and await _state(bridge) is S.SENT

    async def test_reports_are_counted(self, gateway):
        """/metrics counts reports by result."""
        bridge, client = gateway
        url = f"/dlr/gw/{SECRET}"
        await client.post(url, data={"id": "gw-1", "status": "DELIVRD"})
        await client.post(url, data={"id": "gw-1", "status": "DELIVRD"})
        await client.post(url, data={"id": "gw-404", "status": "DELIVRD"})
        await client.post("/dlr/gw/wrong", data={"id": "gw-1", "status": "DELIVRD"})
        found = samples((await client.get("/metrics")).text)
        for result, count in (("delivered", 1), ("not_applied", 1), ("unknown_message", 1), ("forbidden", 1),
                              ("undelivered", 0)):
            assert value(found, "mail2sms_delivery_reports_total", provider="gw", result=result) == count, result


class TestEarlyReport:
    async def test_report_before_the_answer_is_recorded_wins(self, tmp_path, start_bridge):
        """A report that arrives while the call is on the wire is applied; the late 'sent' is refused."""
        with FakeHttpServer(Reply(json={"id": "gw-1"}, delay=1.5)) as fake:
            settings = base_settings(
                tmp_path,
                http={"listen": "127.0.0.1:0", "callbacks": {"gw": MAPPING}},
                providers={"gw": {"type": "http", "url": fake.url, "body": {"to": "{to}", "ref": "{reference}"},
                                  "message_id_path": "id"}},
                accounts={"arthur45": {"api_key": ACCOUNT_KEY, "credits": 10, "route": ["gw"]}},
            )
            bridge = await start_bridge(make_config(tmp_path, settings))
            assert (await smtp_send(bridge.smtp_port, compose(f"arthur45@{ACCOUNT_KEY}|0612121515")))[0] == 250
            await wait_until(lambda: _state_is(bridge, 1, S.CALLING), what="call on the wire")
            async with httpx.AsyncClient(timeout=10) as client:
                answer = await client.post(f"http://127.0.0.1:{bridge.web.port}/dlr/gw/{SECRET}",
                                           json={"status": "DELIVRD", "data": {"ref": "m2s-1-1"}})
            assert answer.json() == {"result": "delivered"}
            with capture_logs() as logs:
                await wait_until(lambda: fake.requests and any(e["event"] == "settle_refused" for e in logs),
                                 what="the late answer")
        assert await _state(bridge) is S.DELIVERED


class TestMappingConfig:
    def _config(self, tmp_path, mapping: dict, provider: str = "gw") -> None:
        settings = base_settings(tmp_path, http={"listen": "127.0.0.1:0", "callbacks": {provider: mapping}},
                                 providers={"gw": {"type": "http", "url": "http://127.0.0.1:9/x",
                                                   "body": "{text}"},
                                            "outbox": {"type": "file", "path": "o.jsonl"}})
        parse_config(settings, tmp_path / "config.yaml")

    def test_a_good_mapping_is_read(self, tmp_path):
        """The example mapping parses; statuses are compared without case."""
        self._config(tmp_path, MAPPING)

    @pytest.mark.parametrize("change, key", [
        ({"secret": "short"}, "http.callbacks.gw.secret"),
        ({"delivered": []}, "http.callbacks.gw.delivered"),
        ({"undelivered": ["DELIVRD"]}, "http.callbacks.gw.undelivered"),
        ({"colour": "blue"}, "http.callbacks.gw.colour"),
    ])
    def test_bad_mappings_name_their_key(self, tmp_path, change, key):
        """A short secret, a missing list, an overlap or an unknown key is refused by key path."""
        with pytest.raises(ConfigErrors) as caught:
            self._config(tmp_path, {**MAPPING, **change})
        assert key in [error.path for error in caught.value.errors]

    def test_a_provider_without_webhooks_is_refused(self, tmp_path):
        """Callbacks for a provider whose type sends none (file) are refused by key path."""
        with pytest.raises(ConfigErrors) as caught:
            self._config(tmp_path, {"secret": SECRET}, provider="outbox")
        assert "http.callbacks.outbox" in [error.path for error in caught.value.errors]

    def test_callbacks_need_the_listener(self, tmp_path):
        settings = base_settings(tmp_path, http={"callbacks": {"gw": MAPPING}},
                                 providers={"gw": {"type": "http", "url": "http://127.0.0.1:9/x", "body": "{text}"}})
        with pytest.raises(ConfigErrors) as caught:
            parse_config(settings, tmp_path / "config.yaml")
        assert "http.callbacks" in [error.path for error in caught.value.errors]

    def test_callbacks_for_no_configured_provider_are_refused(self, tmp_path):
        with pytest.raises(ConfigErrors) as caught:
            self._config(tmp_path, {"secret": SECRET}, provider="ghost")
        assert "http.callbacks.ghost" in [error.path for error in caught.value.errors]


@pytest.fixture
async def mailed(tmp_path, start_bridge, sink):
    """Start a bridge whose replies go to the sink; ``dlr_mail`` as asked; job 1 sent."""
    handler, relay = sink
    started = []

    async def start(dlr_mail: str | None):
        account = {"api_key": ACCOUNT_KEY, "credits": 10, "route": ["gw"], "language": "en"}
        if dlr_mail is not None:
            account["dlr_mail"] = dlr_mail
        fake = FakeHttpServer(Reply(json={"id": "gw-1"}))
        started.append(fake.__enter__())
        settings = base_settings(
            tmp_path, relay,
            http={"listen": "127.0.0.1:0", "callbacks": {"gw": MAPPING}},
            providers={"gw": {"type": "http", "url": fake.url, "body": {"to": "{to}", "text": "{text}"},
                              "message_id_path": "id"}},
            accounts={"arthur45": account},
        )
        bridge = await start_bridge(make_config(tmp_path, settings))
        mail = compose(f"arthur45@{ACCOUNT_KEY}|0612121515|from=Alerts", "Disk full on db1",
                       message_id="<alert-77@zabbix.example.org>")
        assert (await smtp_send(bridge.smtp_port, mail))[0] == 250
        await wait_until(lambda: _state_is(bridge, 1, S.SENT), what="job 1 sent")
        return bridge, httpx.AsyncClient(base_url=f"http://127.0.0.1:{bridge.web.port}", timeout=10)

    yield start, handler
    for fake in started:
        fake.__exit__(None, None, None)


class TestDeliveryReportMails:
    """``dlr_mail``: the sender learns, in the mail's own thread, what became of the SMS."""

    async def test_by_default_an_undelivered_sms_is_mailed_in_the_thread(self, mailed):
        start, sink = mailed
        bridge, client = await start(None)
        async with client:
            await client.post(f"/dlr/gw/{SECRET}", data={"id": "gw-1", "status": "EXPIRED", "err": "absent"})
        [mail] = await sink.wait_for(1)
        assert mail["X-Mail2SMS-Status"] == "128"
        assert mail["In-Reply-To"] == "<alert-77@zabbix.example.org>"
        assert mail["References"] == "<alert-77@zabbix.example.org>"
        assert mail["Subject"] == "Re: arthur45|0612121515|from=Alerts"
        assert ACCOUNT_KEY not in mail.as_string()
        body = mail.get_content()
        assert "Status: 128" in body and "SMS not delivered to +33612121515 (gw: undelivered (EXPIRED: absent))" in body
        assert "Disk full on db1" in body

    async def test_by_default_a_delivered_sms_is_not_mailed(self, mailed):
        start, sink = mailed
        bridge, client = await start(None)
        async with client:
            assert (await client.post(f"/dlr/gw/{SECRET}", data={"id": "gw-1", "status": "DELIVRD"})).json() == {
                "result": "delivered"}
        assert await bridge.store.replies() == []
        assert (await bridge.store.job(1)).state is S.DELIVERED

    async def test_all_mails_a_delivered_sms_too(self, mailed):
        start, sink = mailed
        bridge, client = await start("all")
        async with client:
            await client.post(f"/dlr/gw/{SECRET}", data={"id": "gw-1", "status": "DELIVRD"})
        [mail] = await sink.wait_for(1)
        assert mail["X-Mail2SMS-Status"] == "129" and "SMS delivered to +33612121515" in mail.get_content()

    async def test_none_mails_nothing_even_a_failure(self, mailed):
        start, sink = mailed
        bridge, client = await start("none")
        async with client:
            answer = await client.post(f"/dlr/gw/{SECRET}", data={"id": "gw-1", "status": "UNDELIV"})
        assert answer.json() == {"result": "undelivered"}
        assert await bridge.store.replies() == []

    async def test_a_duplicate_failure_report_mails_once(self, mailed):
        start, sink = mailed
        bridge, client = await start(None)
        async with client:
            for _ in range(3):
                await client.post(f"/dlr/gw/{SECRET}", data={"id": "gw-1", "status": "UNDELIV"})
        assert [r["code"] for r in await bridge.store.replies()] == [128]

    async def test_queue_show_tells_the_report(self, mailed, capsys):
        from bridge.queue_show import show
        start, sink = mailed
        bridge, client = await start(None)
        async with client:
            await client.post(f"/dlr/gw/{SECRET}", data={"id": "gw-1", "status": "UNDELIV", "err": "barred"})
        assert await show(bridge.store, 1) == 0
        out = capsys.readouterr().out
        assert "undelivered (gw: UNDELIV, barred)" in out and "status 128" in out


TWILIO_TOKEN = "twilio-auth-token-0123456789abcdef"
TWILIO_SID = "AC" + "0" * 32


@pytest.fixture
async def twilio_bridge(tmp_path, start_bridge, sink):
    """A bridge sending through a Twilio-shaped fake; its webhooks on; job 1 sent as SM1."""
    handler, relay = sink
    with FakeHttpServer(Reply(status=201, json={"sid": "SM1", "status": "queued"})) as fake:
        settings = base_settings(
            tmp_path, relay,
            http={"listen": "127.0.0.1:0", "callbacks": {"tw": {"secret": SECRET}}},
            providers={"tw": {"type": "twilio", "url": fake.url, "account_sid": TWILIO_SID,
                              "auth_token": TWILIO_TOKEN, "from": "+15005550006"}},
            accounts={"arthur45": {"api_key": ACCOUNT_KEY, "credits": 10, "route": ["tw"], "language": "en"}},
        )
        bridge = await start_bridge(make_config(tmp_path, settings))
        mail = compose(f"arthur45@{ACCOUNT_KEY}|0612121515", "db1 down, please ACK",
                       sender="zabbix@example.org", message_id="<alert-9@zabbix.example.org>")
        assert (await smtp_send(bridge.smtp_port, mail))[0] == 250
        await wait_until(lambda: _state_is(bridge, 1, S.SENT), what="job 1 sent")
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{bridge.web.port}", timeout=10) as client:
            yield bridge, client, handler, fake


async def twilio_post(client, path: str, fields: dict[str, str], token: str = TWILIO_TOKEN):
    """POST a form the way Twilio does, signed with ``X-Twilio-Signature`` over the URL it calls.

    Shape: https://www.twilio.com/docs/messaging/guides/webhook-request (incoming message:
    MessageSid, From, To, Body) and https://www.twilio.com/docs/usage/security (signature).
    """
    from bridge.providers.twilio import signature
    url = f"{client.base_url}".rstrip("/") + path
    headers = {"X-Twilio-Signature": signature(token, url, sorted(fields.items()))}
    return await client.post(path, data=fields, headers=headers)


def incoming(body: str, sid: str) -> dict[str, str]:
    return {"MessageSid": sid, "SmsMessageSid": sid, "AccountSid": TWILIO_SID, "From": "+33612121515",
            "To": "+15005550006", "Body": body, "NumMedia": "0"}


class TestSmsReplies:
    """An SMS from the phone comes back to the sender's mailbox, in the thread; STOP and START work."""

    async def test_a_reply_is_mailed_in_the_thread_once(self, twilio_bridge):
        bridge, client, sink, _ = twilio_bridge
        answer = await twilio_post(client, f"/inbound/tw/{SECRET}", incoming("ACK, on it", "SMin1"))
        assert answer.status_code == 200 and answer.json() == {"result": "reply"}
        again = await twilio_post(client, f"/inbound/tw/{SECRET}", incoming("ACK, on it", "SMin1"))
        assert again.json() == {"result": "duplicate"}
        [mail] = await sink.wait_for(1)
        assert mail["To"] == "zabbix@example.org" and mail["X-Mail2SMS-Status"] == "132"
        assert mail["In-Reply-To"] == mail["References"] == "<alert-9@zabbix.example.org>"
        assert mail["Subject"] == "Re: arthur45|0612121515"
        body = mail.get_content().replace("\r\n", "\n")
        assert body.startswith("SMS from +33612121515 (") and "\n  ACK, on it\n" in body
        assert "Status: 132" in body and "db1 down, please ACK" in body
        assert [r["code"] for r in await bridge.store.replies()] == [132]

    async def test_stop_then_a_new_mail_is_not_sent_not_charged_and_told(self, twilio_bridge):
        bridge, client, sink, fake = twilio_bridge
        answer = await twilio_post(client, f"/inbound/tw/{SECRET}", incoming(" Stop ", "SMin2"))
        assert answer.json() == {"result": "stop"}
        [told] = await sink.wait_for(1)
        assert told["X-Mail2SMS-Status"] == "130" and told["In-Reply-To"] == "<alert-9@zabbix.example.org>"
        assert "+33612121515 replied STOP" in told.get_content()
        assert [(o["number"], o["source"]) for o in await bridge.store.optouts()] == [("+33612121515", "sms")]
        balance = (await bridge.store.balances())["arthur45"]
        calls = len(fake.requests)
        mail = compose(f"arthur45@{ACCOUNT_KEY}|0612121515", "second alert", sender="zabbix@example.org")
        assert (await smtp_send(bridge.smtp_port, mail))[0] in (250, 550)
        refused = (await sink.wait_for(2))[1]
        assert refused["X-Mail2SMS-Status"] == "125"
        assert (await bridge.store.balances())["arthur45"] == balance and len(fake.requests) == calls

    async def test_start_or_reabo_takes_the_number_back(self, twilio_bridge):
        bridge, client, sink, _ = twilio_bridge
        await twilio_post(client, f"/inbound/tw/{SECRET}", incoming("STOP SMS", "SMin3"))
        answer = await twilio_post(client, f"/inbound/tw/{SECRET}", incoming("Réabo", "SMin4"))
        assert answer.json() == {"result": "start"} and await bridge.store.optouts() == []
        mails = await sink.wait_for(2)
        assert sorted(m["X-Mail2SMS-Status"] for m in mails) == ["130", "131"]

    async def test_stop_from_a_number_we_never_texted_still_opts_it_out(self, twilio_bridge):
        bridge, client, sink, _ = twilio_bridge
        fields = {**incoming("STOP", "SMin5"), "From": "+33698765432"}
        answer = await twilio_post(client, f"/inbound/tw/{SECRET}", fields)
        assert answer.json() == {"result": "stop (no SMS of ours to answer)"}
        assert [o["number"] for o in await bridge.store.optouts()] == ["+33698765432"]
        assert await bridge.store.replies() == []

    async def test_a_forged_signature_is_403_and_changes_nothing(self, twilio_bridge):
        bridge, client, sink, _ = twilio_bridge
        with capture_logs() as logs:
            forged = await twilio_post(client, f"/inbound/tw/{SECRET}", incoming("STOP", "SMin6"),
                                       token="not-the-token-at-all")
            unsigned = await client.post(f"/inbound/tw/{SECRET}", data=incoming("STOP", "SMin7"))
            wrong_path = await twilio_post(client, "/inbound/tw/wrong-secret-000000", incoming("STOP", "SMin8"))
        assert forged.status_code == unsigned.status_code == wrong_path.status_code == 403
        assert await bridge.store.optouts() == [] and await bridge.store.replies() == []
        assert [e["event"] for e in logs if e["event"].startswith("callback_")] == ["callback_forbidden"] * 3
        assert TWILIO_TOKEN not in str(logs)

    async def test_status_callbacks_move_the_job(self, twilio_bridge):
        """https://www.twilio.com/docs/messaging/guides/track-outbound-message-status: sent, then delivered."""
        bridge, client, sink, _ = twilio_bridge
        base = {"MessageSid": "SM1", "SmsSid": "SM1", "AccountSid": TWILIO_SID, "From": "+15005550006",
                "To": "+33612121515", "ApiVersion": "2010-04-01"}
        sent = await twilio_post(client, f"/dlr/tw/{SECRET}", {**base, "MessageStatus": "sent", "SmsStatus": "sent"})
        assert sent.json() == {"result": "ignored"}
        done = await twilio_post(client, f"/dlr/tw/{SECRET}",
                                 {**base, "MessageStatus": "delivered", "SmsStatus": "delivered"})
        assert done.json() == {"result": "delivered"} and await _state(bridge) is S.DELIVERED
        late = await twilio_post(client, f"/dlr/tw/{SECRET}",
                                 {**base, "MessageStatus": "undelivered", "ErrorCode": "30003"})
        assert late.json() == {"result": "job already delivered"} and await _state(bridge) is S.DELIVERED

    async def test_metrics_count_what_came_back(self, twilio_bridge):
        bridge, client, sink, _ = twilio_bridge
        await twilio_post(client, f"/inbound/tw/{SECRET}", incoming("ACK", "SMa"))
        await twilio_post(client, f"/inbound/tw/{SECRET}", incoming("ACK", "SMa"))
        await twilio_post(client, f"/inbound/tw/{SECRET}", incoming("STOP", "SMb"))
        await twilio_post(client, f"/inbound/tw/{SECRET}", {**incoming("hi", "SMc"), "From": "+33698765432"})
        found = samples((await client.get("/metrics")).text)
        for kind, count in (("reply", 1), ("duplicate", 1), ("stop", 1), ("unmatched", 1), ("start", 0)):
            assert value(found, "mail2sms_inbound_sms_total", provider="tw", kind=kind) == count, kind


def _ovh_clock(request) -> Reply | None:
    import time as _time
    return Reply(body=str(int(_time.time()))) if request.path.endswith("/auth/time") else None


#: One row per provider type: settings against the fake at ``base``, the fake's send answer,
#: then a delivered report and an SMS reply as the provider posts them (the shapes, and their
#: sources, are the ones of tests/test_provider_callbacks.py).
PROVIDERS = {
    "smspartner": (lambda base: {"api_key": "sp-key-0123456789", "url": f"{base}/v1"}, None,
                   Reply(json={"success": True, "code": 200, "message_id": 307}),
                   ("json", {"msgId": 307, "phoneNumber": "+33612121515", "status": "Delivered"}),
                   ("json", {"type": "response", "phone_number": "+33612121515", "text": "Oui",
                             "message_id": 307})),
    "allmysms": (lambda base: {"login": "shop", "api_key": "am-key-0123456789", "url": base}, None,
                 Reply(status=201, json={"code": 100, "description": "sent", "smsId": "de4d766d-4faf",
                                         "invalidNumbers": "", "nbContacts": 1, "nbSms": 1, "cost": 0.19}),
                 ("form", {"smsId": "de4d766d-4faf", "phoneNumber": "33612121515", "status": "1",
                           "statusText": "Delivered"}),
                 ("form", {"phoneNumber": "33612121515", "message": "Oui", "smsId": "de4d766d-4faf"})),
    "octopush": (lambda base: {"login": "me@example.com", "api_key": "oc-key-0123456789", "url": base}, None,
                 Reply(status=201, json={"sms_ticket": "sms_5fec89fe97109", "number_of_contacts": 1,
                                         "total_cost": 0.0333, "number_of_sms_needed": 1}),
                 ("json", {"message_id": "sms_5fec89fe97109", "number": "+33612121515", "status": "DELIVERED",
                           "delivery_date": "2026-12-01 11:11:45"}),
                 ("json", {"message_id": "sms_5fec89fe97109", "number": "+33612121515", "text": "Oui",
                           "sim_card_number": "12345", "reception_date": "2026-12-01 11:12:00"})),
    "vonage": (lambda base: {"api_key": "vgkey", "api_secret": "vg-secret-0123456789", "from": "SHOP", "url": base},
               None,
               Reply(json={"message-count": "1", "messages": [{"to": "33612121515", "message-id": "0A00000012345678",
                                                               "status": "0", "message-price": "0.03"}]}),
               ("get", {"msisdn": "33612121515", "to": "SHOP", "messageId": "0A00000012345678",
                        "status": "delivered", "err-code": "0", "message-timestamp": "2026-12-01 12:00:00"}),
               ("get", {"msisdn": "33612121515", "to": "447700900000", "messageId": "0B00000000000001",
                        "text": "Oui", "type": "text", "message-timestamp": "2026-12-01 12:00:00"})),
    "ovh": (lambda base: {"application_key": "ak-0123", "application_secret": "as-secret-0123456789",
                          "consumer_key": "ck-secret-0123456789", "service_name": "sms-ab1-1", "url": f"{base}/1.0"},
            _ovh_clock,
            Reply(json={"ids": [264119545], "invalidReceivers": [], "validReceivers": ["+33612121515"],
                        "totalCreditsRemoved": 1, "tag": ""}),
            ("get", {"id": "264119545", "ptt": "4", "description": "1", "descriptionDlr": "Success"}),
            ("form", {"id": "9000", "message": "Oui", "senderid": "+33612121515", "shortcode": "36111"})),
}


async def _post_as(client, path: str, how: str, fields: dict):
    if how == "json":
        return await client.post(path, json=fields)
    if how == "form":
        return await client.post(path, data=fields)
    return await client.get(path, params=fields)


class TestEveryProviderOverHttp:
    """Each provider's own report and reply shapes, posted to the running daemon."""

    @pytest.mark.parametrize("kind", sorted(PROVIDERS))
    async def test_report_then_reply(self, kind, tmp_path, start_bridge, sink):
        handler, relay = sink
        settings_of, side, answer, report, reply = PROVIDERS[kind]
        with FakeHttpServer(answer, router=side) as fake:
            settings = base_settings(
                tmp_path, relay,
                http={"listen": "127.0.0.1:0", "callbacks": {"p": {"secret": SECRET}}},
                providers={"p": {"type": kind, **settings_of(fake.url)}},
                accounts={"arthur45": {"api_key": ACCOUNT_KEY, "credits": 10, "route": ["p"], "language": "en",
                                       "dlr_mail": "all"}},
            )
            bridge = await start_bridge(make_config(tmp_path, settings))
            mail = compose(f"arthur45@{ACCOUNT_KEY}|0612121515", "Hello", message_id="<m-1@example.org>")
            assert (await smtp_send(bridge.smtp_port, mail))[0] == 250
            await wait_until(lambda: _state_is(bridge, 1, S.SENT), what=f"job 1 sent through {kind}")
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{bridge.web.port}", timeout=10) as client:
                forged = await _post_as(client, "/dlr/p/not-the-secret-0000", *report)
                assert forged.status_code == 403 and await _state(bridge) is S.SENT
                delivered = await _post_as(client, f"/dlr/p/{SECRET}", *report)
                assert (delivered.status_code, delivered.json()) == (200, {"result": "delivered"})
                again = await _post_as(client, f"/dlr/p/{SECRET}", *report)
                assert again.json() == {"result": "job already delivered"}
                answered = await _post_as(client, f"/inbound/p/{SECRET}", *reply)
                assert (answered.status_code, answered.json()) == (200, {"result": "reply"})
            mails = await handler.wait_for(2)
            assert sorted(m["X-Mail2SMS-Status"] for m in mails) == ["129", "132"]
            assert all(m["In-Reply-To"] == "<m-1@example.org>" for m in mails)
            assert await _state(bridge) is S.DELIVERED


class TestLongReplies:
    async def test_parts_posted_out_of_order_are_mailed_once_whole(self, tmp_path, start_bridge, sink):
        """Vonage posts a long SMS one part per webhook (concat-ref/part/total): one mail, whole text."""
        handler, relay = sink
        settings_of, side, answer, _, _ = PROVIDERS["vonage"]
        with FakeHttpServer(answer) as fake:
            settings = base_settings(
                tmp_path, relay, http={"listen": "127.0.0.1:0", "callbacks": {"p": {"secret": SECRET}}},
                providers={"p": {"type": "vonage", **settings_of(fake.url)}},
                accounts={"arthur45": {"api_key": ACCOUNT_KEY, "credits": 10, "route": ["p"], "language": "en"}})
            bridge = await start_bridge(make_config(tmp_path, settings))
            mail = compose(f"arthur45@{ACCOUNT_KEY}|0612121515", "Hello", message_id="<m-2@example.org>")
            assert (await smtp_send(bridge.smtp_port, mail))[0] == 250
            await wait_until(lambda: _state_is(bridge, 1, S.SENT), what="job 1 sent")
            base = {"msisdn": "33612121515", "to": "447700900000", "type": "text", "concat": "true",
                    "concat-ref": "08", "concat-total": "2", "message-timestamp": "2026-12-01 12:00:00"}
            first_half, second_half = "A" * 153, "the end"
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{bridge.web.port}", timeout=10) as client:
                path = f"/inbound/p/{SECRET}"
                two = await client.get(path, params={**base, "messageId": "m2", "concat-part": "2", "text": second_half})
                again = await client.get(path, params={**base, "messageId": "m2", "concat-part": "2",
                                                       "text": second_half})
                one = await client.get(path, params={**base, "messageId": "m1", "concat-part": "1", "text": first_half})
                late = await client.get(path, params={**base, "messageId": "m1", "concat-part": "1", "text": first_half})
            assert [r.json()["result"] for r in (two, again, one, late)] == [
                "part 2 of 2", "part 2 of 2", "reply", "duplicate"]
            [forwarded] = await handler.wait_for(1)
            assert forwarded["X-Mail2SMS-Status"] == "132"
            assert "  " + first_half + second_half in forwarded.get_content()
            assert [r["code"] for r in await bridge.store.replies()] == [132]


class TestMetricsAfterARoundTrip:
    async def test_counters_equal_what_was_sent_refused_and_delivered(self, twilio_bridge):
        """Mail in, SMS out, delivered, STOP by SMS, a second mail refused: /metrics says each once."""
        bridge, client, sink, _ = twilio_bridge
        base = {"MessageSid": "SM1", "AccountSid": TWILIO_SID, "From": "+15005550006", "To": "+33612121515"}
        await twilio_post(client, f"/dlr/tw/{SECRET}", {**base, "MessageStatus": "delivered"})
        await twilio_post(client, f"/inbound/tw/{SECRET}", incoming("STOP", "SMstop"))
        mail = compose(f"arthur45@{ACCOUNT_KEY}|0612121515", "again", sender="zabbix@example.org")
        await smtp_send(bridge.smtp_port, mail)
        await sink.wait_for(2)
        found = samples((await client.get("/metrics")).text)
        expected = [
            ("mail2sms_mails_total", {"ingress": "smtp", "outcome": "accepted"}, 1),
            ("mail2sms_mails_total", {"ingress": "smtp", "outcome": "refused"}, 1),
            ("mail2sms_sms_total", {"provider": "tw", "outcome": "sent"}, 1),
            ("mail2sms_credits_spent_total", {"account": "arthur45"}, 1),
            ("mail2sms_delivery_reports_total", {"provider": "tw", "result": "delivered"}, 1),
            ("mail2sms_inbound_sms_total", {"provider": "tw", "kind": "stop"}, 1),
            ("mail2sms_mail_statuses_total", {"status": "125"}, 1),
            ("mail2sms_jobs", {"state": "delivered"}, 1),
        ]
        for name, labels, count in expected:
            assert value(found, name, **labels) == count, (name, labels)


class TestPublicUrl:
    async def test_sends_ask_the_provider_to_call_back_the_public_url(self, tmp_path, start_bridge):
        """With http.public_url, each Twilio send carries StatusCallback = <public_url>/dlr/<name>/<secret>."""
        from urllib.parse import parse_qs
        with FakeHttpServer(Reply(status=201, json={"sid": "SM1", "status": "queued"})) as fake:
            settings = base_settings(
                tmp_path,
                http={"listen": "127.0.0.1:0", "public_url": "https://sms-bridge.example.org/",
                      "callbacks": {"tw": {"secret": SECRET}}},
                providers={"tw": {"type": "twilio", "url": fake.url, "account_sid": TWILIO_SID,
                                  "auth_token": TWILIO_TOKEN, "from": "+15005550006"},
                           "quiet": {"type": "twilio", "url": fake.url, "account_sid": TWILIO_SID,
                                     "auth_token": TWILIO_TOKEN, "from": "+15005550006"}},
                accounts={"arthur45": {"api_key": ACCOUNT_KEY, "credits": 10, "route": ["tw"]},
                          "bob": {"api_key": ACCOUNT_KEY, "credits": 10, "route": ["quiet"]}},
            )
            bridge = await start_bridge(make_config(tmp_path, settings))
            assert (await smtp_send(bridge.smtp_port, compose(f"arthur45@{ACCOUNT_KEY}|0612121515")))[0] == 250
            assert (await smtp_send(bridge.smtp_port, compose(f"bob@{ACCOUNT_KEY}|0612121516")))[0] == 250
            await wait_until(lambda: len(fake.requests) >= 2, what="both sends")
        sent = {parse_qs(r.body.decode())["To"][0]: parse_qs(r.body.decode()) for r in fake.requests}
        assert sent["+33612121515"]["StatusCallback"] == [f"https://sms-bridge.example.org/dlr/tw/{SECRET}"]
        assert "StatusCallback" not in sent["+33612121516"]      # no callbacks configured for "quiet"
