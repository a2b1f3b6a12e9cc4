"""/metrics scraped from running bridges: the counters say what happened end to end."""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx
import pytest
from conftest import ACCOUNT_KEY, base_settings, compose, make_config, smtp_send, wait_until
from prometheus_client.parser import text_string_to_metric_families
from provider_fakes import FakeHttpServer, Reply, closed_port

DASHBOARD = Path(__file__).parent.parent / "contrib" / "grafana-dashboard.json"


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of an exposition: (name, sorted labels) -> value."""
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


async def scrape(bridge) -> dict:
    """GET /metrics of ``bridge`` and parse it."""
    async with httpx.AsyncClient(timeout=10) as client:
        answer = await client.get(f"http://127.0.0.1:{bridge.web.port}/metrics")
    assert answer.status_code == 200
    assert answer.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    return samples(answer.text)


def value(found: dict, name: str, **labels: str) -> float | None:
    """One sample's value (None when absent)."""
    return found.get((name, tuple(sorted(labels.items()))))


def with_http(tmp_path, relay_port: int = 1, **overrides) -> dict:
    """The test config with the HTTP listener on an ephemeral loopback port."""
    return base_settings(tmp_path, relay_port, http={"listen": "127.0.0.1:0"}, **overrides)


class TestEndToEnd:
    async def test_counters_equal_what_was_sent_and_refused(self, tmp_path, sink, start_bridge):
        """Mails accepted/refused/duplicate, SMS sent, parts, credits and replies add up."""
        handler, relay_port = sink
        bridge = await start_bridge(make_config(tmp_path, with_http(tmp_path, relay_port)))
        port = bridge.smtp_port
        good = compose(f"arthur45@{ACCOUNT_KEY}|0612121515;0614141515", "Two", message_id="<a@x>")
        assert (await smtp_send(port, good))[0] == 250
        assert (await smtp_send(port, good))[0] == 250                          # duplicate
        assert (await smtp_send(port, compose(f"arthur45@{ACCOUNT_KEY}|0612121516", "x" * 200)))[0] == 250
        assert (await smtp_send(port, compose("arthur45@wrong-key|0612121515", "No")))[0] == 250
        await wait_until(lambda: _count_state(bridge, "sent", 3), what="3 SMS sent")
        await handler.wait_for(1)
        found = await wait_until(lambda: _scraped_when(bridge, "mail2sms_replies_total", 1, result="sent"),
                                 what="reply counted")
        assert value(found, "mail2sms_mails_total", ingress="smtp", outcome="accepted") == 2
        assert value(found, "mail2sms_mails_total", ingress="smtp", outcome="refused") == 1
        assert value(found, "mail2sms_mails_total", ingress="smtp", outcome="duplicate") == 1
        assert value(found, "mail2sms_mails_total", ingress="imap", outcome="accepted") == 0
        assert value(found, "mail2sms_mail_statuses_total", status="102") == 1
        assert value(found, "mail2sms_sms_total", provider="outbox", outcome="sent") == 3
        assert value(found, "mail2sms_sms_total", provider="outbox", outcome="failed") == 0
        assert value(found, "mail2sms_sms_parts_total", provider="outbox") == 4      # 1 + 1 + 2
        assert value(found, "mail2sms_credits_spent_total", account="arthur45") == 4
        assert value(found, "mail2sms_credits_balance", account="arthur45") == 96
        assert value(found, "mail2sms_provider_call_seconds_count", provider="outbox") >= 2
        assert value(found, "mail2sms_circuit_state", provider="outbox") == 0
        assert value(found, "mail2sms_ready") == 1
        assert value(found, "mail2sms_delivery_reports_total", provider="outbox", result="delivered") == 0
        found = await wait_until(lambda: _scraped_when(bridge, "mail2sms_jobs", 3, state="sent"),
                                 what="queue depth refreshed")
        assert value(found, "mail2sms_jobs", state="queued") == 0
        # read from the store with the jobs (cached 2 s): the reply may have been queued then
        await wait_until(lambda: _scraped_when(bridge, "mail2sms_replies_queued", 0), what="no reply waiting")

    async def test_refusals_refunds_and_an_open_circuit(self, tmp_path, start_bridge):
        """A provider that refuses for good: failed and refunded; a dead one opens its circuit."""
        with FakeHttpServer(Reply(status=401, json={"success": False, "code": 10})) as fake:
            settings = with_http(
                tmp_path,
                providers={
                    "dead": {"type": "smspartner", "api_key": "K", "url": f"http://127.0.0.1:{closed_port()}",
                             "circuit": {"failures": 1, "cooldown": "1h"}},
                    "partner": {"type": "smspartner", "api_key": "K", "url": fake.url},
                },
                accounts={"arthur45": {"api_key": ACCOUNT_KEY, "credits": 10, "route": ["partner"]},
                          "bob": {"api_key": "bob-key-0001", "credits": 10, "route": ["dead"]}},
            )
            bridge = await start_bridge(make_config(tmp_path, settings))
            for subject in (f"arthur45@{ACCOUNT_KEY}|0612121515", "bob@bob-key-0001|0612121515"):
                assert (await smtp_send(bridge.smtp_port, compose(subject)))[0] == 250
            await wait_until(lambda: _count_state(bridge, "failed", 1), what="job failed")
            await wait_until(lambda: _scraped_when(bridge, "mail2sms_circuit_state", 2, provider="dead"),
                             what="circuit open")
            # the breaker opens on the answer; the SMS is counted once its outcome is committed
            found = await wait_until(lambda: _scraped_when(bridge, "mail2sms_sms_total", 1, provider="dead",
                                                           outcome="not_delivered"), what="outcome counted")
        assert value(found, "mail2sms_circuit_state", provider="dead") == 2
        assert value(found, "mail2sms_sms_total", provider="dead", outcome="not_delivered") == 1
        assert value(found, "mail2sms_sms_total", provider="partner", outcome="failed") == 1
        assert value(found, "mail2sms_credits_spent_total", account="arthur45") == 1
        assert value(found, "mail2sms_credits_refunded_total", account="arthur45") == 1
        assert value(found, "mail2sms_credits_refunded_total", account="bob") == 0
        assert value(found, "mail2sms_circuit_state", provider="partner") == 0

    async def test_each_bridge_has_its_own_registry(self, tmp_path, start_bridge):
        """Two bridges in one process do not see each other's counters."""
        first_dir, second_dir = tmp_path / "one", tmp_path / "two"
        first_dir.mkdir()
        second_dir.mkdir()
        first = await start_bridge(make_config(first_dir, with_http(first_dir)))
        second = await start_bridge(make_config(second_dir, with_http(second_dir)))
        assert (await smtp_send(first.smtp_port, compose(f"arthur45@{ACCOUNT_KEY}|0612121515")))[0] == 250
        one, two = await scrape(first), await scrape(second)
        assert value(one, "mail2sms_mails_total", ingress="smtp", outcome="accepted") == 1
        assert value(two, "mail2sms_mails_total", ingress="smtp", outcome="accepted") == 0

    async def test_mail_refused_while_unavailable_is_counted(self, tmp_path, start_bridge):
        """A mail answered 451 (the bridge refuses mail) counts as unavailable."""
        bridge = await start_bridge(make_config(tmp_path, with_http(tmp_path)))
        bridge.intake.refuse("maintenance")
        code, _ = await smtp_send(bridge.smtp_port, compose(f"arthur45@{ACCOUNT_KEY}|0612121515"))
        assert code == 451
        found = await scrape(bridge)
        assert value(found, "mail2sms_mails_total", ingress="smtp", outcome="unavailable") == 1
        assert value(found, "mail2sms_mails_total", ingress="smtp", outcome="accepted") == 0


class TestDashboard:
    def test_dashboard_is_valid_grafana_json(self):
        """The dashboard parses and every panel has at least one query."""
        dashboard = json.loads(DASHBOARD.read_text())
        assert dashboard["panels"] and all(panel.get("targets") for panel in _panels(dashboard))

    async def test_every_metric_the_dashboard_uses_exists(self, tmp_path, start_bridge):
        """Each mail2sms_* name in the dashboard's queries is a sample name in /metrics."""
        bridge = await start_bridge(make_config(tmp_path, with_http(tmp_path)))
        exposed = {name for name, _ in await scrape(bridge)}
        dashboard = json.loads(DASHBOARD.read_text())
        used = {name for panel in _panels(dashboard) for target in panel["targets"]
                for name in re.findall(r"\bmail2sms_[a-z_]+", target["expr"])}
        assert used, "the dashboard queries no metric"
        assert sorted(used - exposed) == []


def _panels(dashboard: dict) -> list[dict]:
    """Every panel with queries (rows hold none)."""
    return [p for p in dashboard["panels"] if p.get("type") != "row"]


async def _count_state(bridge, state: str, count: int) -> bool:
    return (await bridge.store.count_jobs()).get(state, 0) == count


async def _scraped_when(bridge, name: str, expected: float, **labels: str) -> dict | None:
    found = await scrape(bridge)
    return found if value(found, name, **labels) == expected else None


class TestSettledCounts:
    def test_a_bulk_call_counts_every_job(self):
        """One call settling many jobs moves each series by the sum of its jobs: SMS per
        outcome, parts sent, credits refunded per account; jobs another writer settled
        (refused by the store) count nothing."""
        from bridge.metrics import Metrics
        from bridge.model import Job, JobState, Settlement

        def job(i: int, login: str, parts: int, cost: int) -> Job:
            return Job(i, login, f"+3361234567{i}", "t", None, parts, cost, False, False, JobState.CALLING, 1, 1.0, 1.0)

        jobs = [job(1, "a", 2, 2), job(2, "a", 3, 3), job(3, "a", 1, 4), job(4, "a", 1, 5), job(5, "b", 1, 6),
                job(6, "b", 9, 9)]
        items = [Settlement(1, JobState.SENT), Settlement(2, JobState.SENT), Settlement(3, JobState.FAILED, "no"),
                 Settlement(4, JobState.FAILED, "no"), Settlement(5, JobState.FAILED, "no"),
                 Settlement(6, JobState.SENT)]
        metrics = Metrics(["p"], ["a", "b"])
        metrics.settled("p", jobs, items, refused=[6])
        found = samples(metrics.render().decode())
        assert value(found, "mail2sms_sms_total", provider="p", outcome="sent") == 2
        assert value(found, "mail2sms_sms_total", provider="p", outcome="failed") == 3
        assert value(found, "mail2sms_sms_parts_total", provider="p") == 5
        assert value(found, "mail2sms_credits_refunded_total", account="a") == 9
        assert value(found, "mail2sms_credits_refunded_total", account="b") == 6
