"""``mail2sms queue show JOB`` and the store reads behind it (job_history, find_job)."""

from __future__ import annotations

import yaml
from conftest import ACCOUNT_KEY, base_settings, compose, make_config, smtp_send, wait_until
from provider_fakes import FakeHttpServer, Reply
from test_cli import err, mail2sms, out

from bridge.model import JobState as S, Plan, NewJob, Settlement
from bridge.store import SqliteStore

REFUSED = Reply(status=401, json={"success": False, "code": 10})


async def _failed_job_with_neighbours(tmp_path, sink, start_bridge):
    """A bridge where job 1 failed (status 122 mailed) and the same sender got a 102 for another mail."""
    handler, relay_port = sink
    fake = FakeHttpServer(REFUSED).start()
    settings = base_settings(
        tmp_path, relay_port,
        providers={"partner": {"type": "smspartner", "api_key": "K", "url": fake.url}},
        accounts={"arthur45": {"api_key": ACCOUNT_KEY, "credits": 10, "route": ["partner"]}},
    )
    bridge = await start_bridge(make_config(tmp_path, settings))
    raw = compose(f"arthur45@{ACCOUNT_KEY}|0612121515|from=SHOP", "Alert", message_id="<first@example.org>")
    assert (await smtp_send(bridge.smtp_port, raw))[0] == 250
    other = compose("arthur45@wrong|0612121515", "x", message_id="<second@example.org>")
    assert (await smtp_send(bridge.smtp_port, other))[0] == 250
    await handler.wait_for(2)
    await wait_until(lambda: _replies_sent(bridge, 2), what="both status mails recorded")
    return bridge, settings, fake


async def _replies_sent(bridge, count: int) -> bool:
    return await bridge.store.count_replies("sent") == count


class TestJobHistory:
    async def test_history_of_a_failed_job(self, tmp_path, sink, start_bridge):
        """The job, its mail, its debit and refund, and only its own status mail."""
        bridge, _, fake = await _failed_job_with_neighbours(tmp_path, sink, start_bridge)
        try:
            history = await bridge.store.job_history(1)
        finally:
            fake.stop()
        job = history["job"]
        assert job.state is S.FAILED and job.provider == "partner" and job.client_ref == "m2s-1-1"
        assert "API key refused" in job.last_error
        assert history["mail"]["message_id"] == "first@example.org"
        assert history["mail"]["reply_to"] == "alice@example.org"
        assert history["mail"]["summary"] == "arthur45@***|0612121515|from=SHOP"
        assert [(r["reason"], r["amount"]) for r in history["ledger"]] == [("debit", -1), ("refund", 1)]
        assert [(r["code"], r["state"]) for r in history["replies"]] == [(122, "sent")]
        assert history["siblings"] == []

    async def test_no_such_job(self, tmp_path):
        """An unknown id has no history."""
        store = await SqliteStore.open(tmp_path / "bridge.db")
        try:
            assert await store.job_history(42) is None
        finally:
            await store.close()


class TestFindJob:
    async def test_by_message_id_then_reference(self, tmp_path):
        """A report finds its job by the provider's id, or by our reference; never another provider's."""
        store = await SqliteStore.open(tmp_path / "bridge.db")
        try:
            await store.open_accounts({"a": 10}, 1)
            plan = Plan(key=None, login="a", message_id=None, reply_to=None, summary="s",
                        jobs=[NewJob("+33612121515", "t", None, 1, 1), NewJob("+33614141515", "t", None, 1, 1)])
            await store.commit(plan, 1)
            claimed = await store.claim("me", 2, 10, 60)
            await store.start_call("me", [j.id for j in claimed], "p", "ref-1", 3, 60)
            await store.settle_call("ref-1", [Settlement(claimed[0].id, S.SENT, None, "pid-1"),
                                              Settlement(claimed[1].id, S.SENT, None, None)], 4)
            assert (await store.find_job("p", message_id="pid-1")).id == claimed[0].id
            assert (await store.find_job("p", message_id="nope", client_ref="ref-1")).id == claimed[1].id
            assert await store.find_job("other", message_id="pid-1") is None
            assert await store.find_job("p") is None
        finally:
            await store.close()


class TestQueueShowCommand:
    async def test_prints_the_life_of_one_sms(self, tmp_path, sink, start_bridge):
        """The command shows the mail, the job, its calls, credits and status mails."""
        bridge, settings, fake = await _failed_job_with_neighbours(tmp_path, sink, start_bridge)
        fake.stop()
        await bridge.stop()
        config = tmp_path / "config.yaml"
        config.write_text(yaml.safe_dump(settings), encoding="utf-8")
        proc = mail2sms("--config", str(config), "queue", "show", "1")
        text = out(proc)
        assert proc.returncode == 0, err(proc)
        assert text.startswith("Job 1: failed\n")
        for expected in ("+33612121515", "arthur45@***|0612121515|from=SHOP", "<first@example.org>",
                         "alice@example.org", "m2s-1-1", "API key refused", "debit: -1 credit",
                         "refund: +1 credit", "call #1 to partner started", "status 122 to alice@example.org: sent"):
            assert expected in text, expected
        assert "status 102" not in text                   # the other mail's status is not this job's
        assert ACCOUNT_KEY not in text

    def test_unknown_job_exits_1(self, tmp_path):
        """A job that does not exist is said so, exit code 1."""
        config = tmp_path / "config.yaml"
        config.write_text(yaml.safe_dump(base_settings(tmp_path)), encoding="utf-8")
        proc = mail2sms("--config", str(config), "queue", "show", "999")
        assert proc.returncode == 1 and "job 999 does not exist" in out(proc)


class TestEveryCall:
    async def test_a_failover_shows_each_call_and_its_answer(self, tmp_path, sink, start_bridge, capsys):
        """A 429 from the first provider, then the second sends: both calls are in the timeline."""
        from bridge.queue_show import show
        handler, relay_port = sink
        with FakeHttpServer(Reply(status=429, json={"success": False, "code": 429})) as busy, \
                FakeHttpServer(Reply(json={"success": True, "code": 200, "message_id": 9})) as spare:
            settings = base_settings(
                tmp_path, relay_port,
                providers={"busy": {"type": "smspartner", "api_key": "K", "url": busy.url},
                           "spare": {"type": "smspartner", "api_key": "K", "url": spare.url}},
                accounts={"arthur45": {"api_key": ACCOUNT_KEY, "credits": 10, "route": ["busy", "spare"]}},
            )
            bridge = await start_bridge(make_config(tmp_path, settings))
            assert (await smtp_send(bridge.smtp_port, compose(f"arthur45@{ACCOUNT_KEY}|0612121515")))[0] == 250
            await wait_until(lambda: _sent(bridge), what="job 1 sent by the second provider")
        assert await show(bridge.store, 1) == 0
        text = capsys.readouterr().out
        timeline = text[text.index("Timeline"):]
        assert "call m2s-1-1 to busy: not sent, next provider (busy: HTTP 429)" in timeline
        assert "call #2 to spare started" in timeline
        assert timeline.index("to busy: not sent") < timeline.index("call #2 to spare")
        assert [e["kind"] for e in (await bridge.store.job_history(1))["events"]] == ["call"]


async def _sent(bridge) -> bool:
    job = await bridge.store.job(1)
    return job is not None and job.state is S.SENT
