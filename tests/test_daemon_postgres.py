"""Whole bridges on PostgreSQL: mail in over SMTP, SMS out through the file provider.

Two bridges share one schema of the local server; one bridge runs on a private server
that is stopped and started again under it.
"""

from __future__ import annotations

import asyncio
import json
import smtplib
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import asyncpg

from bridge.model import NewJob, Plan
from bridge.store.postgres import PostgresStore
from conftest import ACCOUNT_KEY, base_settings, compose, make_config, smtp_send, wait_until
from pg import PrivateServer, pg_url  # noqa: F401  (fixture)


def sms_lines(*paths) -> list[dict]:
    """Every SMS the file providers at ``paths`` were given."""
    lines = []
    for path in paths:
        if path.exists():
            lines += [json.loads(line) for line in path.read_text().splitlines()]
    return lines


def settings_for(tmp_path, url: str, relay_port: int, outbox: str, **dispatcher) -> dict:
    """A bridge on ``url`` whose file provider writes to ``outbox``."""
    settings = base_settings(tmp_path, relay_port, store=url)
    settings["providers"] = {"outbox": {"type": "file", "path": str(tmp_path / outbox)}}
    settings["dispatcher"] = {**settings["dispatcher"], **dispatcher}
    return settings


class TestTwoBridges:
    async def test_mail_to_either_bridge_is_sent_once(self, tmp_path, pg_url, sink, start_bridge):
        """40 mails round-robin to two bridges on one database: 40 SMS, each once; 40 credits used."""
        _, relay_port = sink
        bridges = [await start_bridge(make_config(tmp_path, settings_for(tmp_path, pg_url, relay_port, f"out{i}.jsonl")))
                   for i in range(2)]
        for i in range(40):
            raw = compose(f"arthur45@{ACCOUNT_KEY}|06121215{i:02}", f"alert {i}", message_id=f"<m{i}@example.org>")
            assert (await smtp_send(bridges[i % 2].smtp_port, raw))[0] == 250
        outboxes = (tmp_path / "out0.jsonl", tmp_path / "out1.jsonl")
        await wait_until(lambda: len(sms_lines(*outboxes)) >= 40, timeout=30, what="40 SMS")
        await asyncio.sleep(0.5)  # nothing more may come
        texts = sorted(line["text"] for line in sms_lines(*outboxes))
        assert texts == sorted(f"alert {i}" for i in range(40))
        assert (await bridges[0].store.balances())["arthur45"] == 60

    async def test_jobs_committed_elsewhere_are_sent_at_once(self, tmp_path, pg_url, sink, start_bridge):
        """A job committed by another instance is sent within a second, not at the next poll (NOTIFY)."""
        _, relay_port = sink
        config = make_config(tmp_path, settings_for(tmp_path, pg_url, relay_port, "out.jsonl", poll_interval=60))
        bridge = await start_bridge(config)
        await asyncio.sleep(0.5)  # the dispatcher is idle, waiting up to 60 s
        other = await PostgresStore.open(pg_url)
        try:
            job = NewJob("+33612121515", "from elsewhere", None, 1, 1)
            await other.commit(Plan("k", "arthur45", None, None, "arthur45@***", jobs=(job,)), bridge.clock())
        finally:
            await other.close()
        await wait_until(lambda: sms_lines(tmp_path / "out.jsonl"), timeout=3, what="the SMS")


class TestOutage:
    async def test_smtp_answers_451_while_postgres_is_down_and_recovers(self, tmp_path, sink, start_bridge):
        """Server stopped: SMTP 451 4.3.0 and no loop gives up; started again: mail accepted and sent."""
        server = PrivateServer()
        try:
            await asyncio.to_thread(server.start)
            _, relay_port = sink
            bridge = await start_bridge(make_config(tmp_path, settings_for(tmp_path, server.url, relay_port,
                                                                           "out.jsonl")))
            bridge.supervisor.backoff_base = bridge.supervisor.backoff_max = 0.01  # gives up fast if it would
            outbox = tmp_path / "out.jsonl"
            send = lambda i: smtp_send(bridge.smtp_port, compose(f"arthur45@{ACCOUNT_KEY}|0612121515", f"n{i}",  # noqa: E731
                                                                 message_id=f"<n{i}@example.org>"))
            assert (await send(1))[0] == 250
            await wait_until(lambda: len(sms_lines(outbox)) == 1, what="first SMS")
            await asyncio.to_thread(server.stop)
            code, text = await send(2)
            assert code == 451 and "4.3.0" in text
            await asyncio.sleep(3)  # every loop meets the outage many times over
            assert not bridge.supervisor.failed.is_set()
            await asyncio.to_thread(server.start)
            assert (await send(3))[0] == 250
            await wait_until(lambda: len(sms_lines(outbox)) == 2, timeout=15, what="SMS after the outage")
            assert [line["text"] for line in sms_lines(outbox)] == ["n1", "n3"]
            assert not bridge.supervisor.failed.is_set()
            await bridge.stop()
        finally:
            await asyncio.to_thread(server.remove)


class TestOutageUnderLoad:
    async def test_mail_keeps_coming_while_postgres_restarts(self, tmp_path, sink, start_bridge):
        """80 mails sent while the server stops and starts: each retried until 250 (451 meanwhile),
        every one committed once, no SMS twice, none lost (calls cut mid-way are unknown)."""
        server = PrivateServer()
        try:
            await asyncio.to_thread(server.start)
            _, relay_port = sink
            settings = settings_for(tmp_path, server.url, relay_port, "out.jsonl", lease=2, sweep_interval=0.5)
            bridge = await start_bridge(make_config(tmp_path, settings))
            answers: list[int] = []
            down = threading.Event()

            def deliver(i: int) -> None:
                raw = compose(f"arthur45@{ACCOUNT_KEY}|06121215{i:02}", f"load {i}", message_id=f"<l{i}@example.org>")
                if i >= 40:  # the first half races the stop; the second is sure to meet the outage
                    down.wait(30)
                while True:
                    with smtplib.SMTP("127.0.0.1", bridge.smtp_port, timeout=30) as client:
                        client.ehlo()
                        client.mail("alice@example.org")
                        client.rcpt("mail2sms@example.com")
                        code = client.data(raw)[0]
                    answers.append(code)
                    if code == 250:
                        return
                    time.sleep(0.2)   # what a sending MTA does with a 451, sooner

            with ThreadPoolExecutor(8) as pool:
                senders = [asyncio.wrap_future(pool.submit(deliver, i)) for i in range(80)]
                await wait_until(lambda: len(answers) >= 10, what="the first answers")
                await asyncio.to_thread(server.stop)
                down.set()
                await asyncio.sleep(2)
                await asyncio.to_thread(server.start)
                await asyncio.wait_for(asyncio.gather(*senders), 60)
            assert 451 in answers and not bridge.supervisor.failed.is_set()
            await wait_until(lambda: _settled(server.url), timeout=30, what="every job settled")
            jobs = await _jobs(server.url)
            assert sorted(text for text, _ in jobs) == sorted(f"load {i}" for i in range(80))
            texts = [line["text"] for line in sms_lines(tmp_path / "out.jsonl")]
            assert len(texts) == len(set(texts)), "an SMS went out twice"
            unknown = {text for text, state in jobs if state == "unknown"}
            assert {text for text, state in jobs if state == "sent"} <= set(texts) <= {t for t, _ in jobs}
            # unknown: at most the calls in flight when the server went (dispatcher.concurrency)
            assert len(unknown) <= bridge.config.dispatcher.concurrency
            assert set(texts) | unknown == {t for t, _ in jobs}
        finally:
            await asyncio.to_thread(server.remove)


async def _jobs(url: str) -> list[tuple[str, str]]:
    conn = await asyncpg.connect(url)
    try:
        return [(r["text"], r["state"]) for r in await conn.fetch("SELECT text, state FROM jobs")]
    finally:
        await conn.close()


async def _settled(url: str) -> bool:
    return all(state in ("sent", "unknown") for _, state in await _jobs(url))
