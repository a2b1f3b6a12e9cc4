"""The dispatcher against fake providers: failover, breakers, rate limits, bulk, pricing."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from datetime import datetime, timezone
from email.utils import format_datetime

from conftest import ACCOUNT_KEY, Recorder, base_settings
from provider_fakes import FakeHttpServer, Reply, closed_port

from bridge.intake import Envelope, Intake
from bridge.providers.base import Capabilities, Provider, Receipt, Sms
from bridge.store import Store

OK = {"success": True, "code": 200, "message_id": 307, "nb_sms": 1, "cost": 0.038}


async def submit(intake: Intake, numbers: str, text: str = "Hello", extra: str = "") -> None:
    from conftest import compose

    outcome = await intake.submit(compose(f"arthur45@{ACCOUNT_KEY}|{numbers}{extra}", text), Envelope("a@example.org"))
    assert outcome.accepted, outcome


def two_partners(tmp_path, primary: str, secondary: str, **account) -> dict:
    return base_settings(
        tmp_path,
        providers={
            "primary": {"type": "smspartner", "api_key": "P1", "url": primary, "timeout": 0.5,
                        "circuit": {"failures": 2, "cooldown": 30}},
            "secondary": {"type": "smspartner", "api_key": "P2", "url": secondary},
        },
        accounts={"arthur45": {"api_key": ACCOUNT_KEY, "credits": 10000, "route": ["primary", "secondary"], **account}},
    )


async def states(store: Store) -> list[str]:
    return [j.state.value for j in reversed(await store.jobs(limit=10000))]


class TestFailover:
    async def test_refused_connection_goes_to_the_secondary_once(self, tmp_path, world):
        """Primary refuses connections: the secondary sends the SMS, exactly once."""
        clock, store, make, open_accounts = world
        with FakeHttpServer(Reply(json=OK)) as secondary:
            settings = two_partners(tmp_path, f"http://127.0.0.1:{closed_port()}", secondary.url)
            await open_accounts(settings)
            dispatcher, intake = make(settings)
            await submit(intake, "0612121515")
            await dispatcher.run_once()
            assert await states(store) == ["sent"]
            assert len(secondary.requests) == 1
            assert (await store.job(1)).provider == "secondary"

    async def test_timeout_after_reading_is_unknown_not_failed_over(self, tmp_path, world):
        """Primary reads the request and times out: no failover, the job is unknown."""
        clock, store, make, open_accounts = world
        with FakeHttpServer(Reply(json=OK, delay=3)) as primary, FakeHttpServer(Reply(json=OK)) as secondary:
            settings = two_partners(tmp_path, primary.url, secondary.url)
            await open_accounts(settings)
            dispatcher, intake = make(settings)
            await submit(intake, "0612121515")
            await dispatcher.run_once()
            assert await states(store) == ["unknown"]
            assert len(primary.requests) == 1 and secondary.requests == []

    async def test_permanent_refusal_everywhere_fails_and_refunds(self, tmp_path, world):
        """When every provider refuses for good, the job fails and its credit comes back."""
        clock, store, make, open_accounts = world
        refusal = {"success": False, "code": 10}
        with FakeHttpServer(Reply(json=refusal)) as primary, FakeHttpServer(Reply(json=refusal)) as secondary:
            settings = two_partners(tmp_path, primary.url, secondary.url)
            await open_accounts(settings)
            dispatcher, intake = make(settings)
            await submit(intake, "0612121515")
            await dispatcher.run_once()
            job = await store.job(1)
            assert job.state.value == "failed" and "primary" in job.last_error and "secondary" in job.last_error
            assert (await store.balances())["arthur45"] == 10000


class TestCircuitBreaker:
    async def test_dead_primary_is_skipped_then_probed(self, tmp_path, world):
        """After 2 failures the primary is skipped; after the cool-down one probe closes it."""
        clock, store, make, open_accounts = world
        with FakeHttpServer(Reply(status=429), Reply(status=429), Reply(json=OK)) as primary, \
                FakeHttpServer(*[Reply(json=OK)] * 5) as secondary:
            settings = two_partners(tmp_path, primary.url, secondary.url, rate_per_minute=None)
            await open_accounts(settings)
            dispatcher, intake = make(settings)
            for n in ("0612121515", "0612121516", "0612121517"):
                await submit(intake, n, text=f"to {n}")
                await dispatcher.run_once()
            assert len(primary.requests) == 2  # the third job skipped it: circuit open
            assert len(secondary.requests) == 3
            clock.now += 31  # cool-down over: half-open
            await submit(intake, "0612121518", text="probe")
            await dispatcher.run_once()
            assert len(primary.requests) == 3 and len(secondary.requests) == 3
            assert (await store.job(4)).provider == "primary"


class TestRateLimits:
    async def test_1000_sms_at_50_per_second(self, tmp_path, world):
        """1,000 SMS through a 50/s provider span >= 19.98 s of fake time, <= 50 in any second."""
        clock, store, make, open_accounts = world
        settings = base_settings(
            tmp_path,
            providers={"slow": {"type": "file", "path": str(tmp_path / "o.jsonl"), "rate": 50}},
            accounts={"arthur45": {"api_key": ACCOUNT_KEY, "credits": 10000, "route": ["slow"]}},
            dispatcher={"concurrency": 100},
        )
        await open_accounts(settings)
        recorder = Recorder("slow", clock)
        dispatcher, intake = make(settings, {"slow": recorder})
        for i in range(10):
            numbers = ";".join(f"+33612{i:02d}{j:04d}" for j in range(100))
            await submit(intake, numbers, text=f"batch {i}")
        start = clock.time()
        while len(recorder.calls) < 1000:
            if not await dispatcher.run_once():
                clock.now = max(clock.now, await store.next_due())
        times = sorted(round(t - start, 6) for t, _ in recorder.calls)  # µs: float noise off
        start = 0.0
        assert times[-1] - start >= 999 / 50 - 1e-3  # float error on epoch seconds
        assert max(Counter(int((t - start) // 1) for t in times).values()) <= 50
        for i in range(len(times) - 50):
            assert times[i + 50] - times[i] >= 1.0 - 1e-3
        assert Counter(await states(store)) == {"sent": 1000}

    async def test_account_per_minute_cap_defers_without_blocking_others(self, tmp_path, world):
        """Past rate_per_minute the account's jobs wait in the queue; others still go."""
        clock, store, make, open_accounts = world
        settings = base_settings(
            tmp_path,
            accounts={
                "arthur45": {"api_key": ACCOUNT_KEY, "credits": 100, "route": ["outbox"], "rate_per_minute": 2},
                "other": {"api_key": "otherkey", "credits": 100, "route": ["outbox"]},
            },
        )
        await open_accounts(settings)
        recorder = Recorder("outbox", clock)
        dispatcher, intake = make(settings, {"outbox": recorder})
        await submit(intake, "0612121515;0612121516;0612121517;0612121518")
        from conftest import compose

        await intake.submit(compose("other@otherkey|0699999999", "other"), Envelope("b@example.org"))
        await dispatcher.run_once()
        assert len(recorder.calls) == 3  # two for arthur45, one for the other account
        deferred = [j for j in await store.jobs() if j.state.value == "queued"]
        assert len(deferred) == 2 and all(j.attempts == 0 for j in deferred)
        clock.now += 61
        await dispatcher.run_once()
        assert len(recorder.calls) == 5


class TestBulk:
    async def test_one_call_for_many_numbers_with_exact_job_states(self, tmp_path, world):
        """SMSPartner gets one call for a 3-number mail; each job is recorded as sent."""
        clock, store, make, open_accounts = world
        with FakeHttpServer(Reply(json=OK)) as partner:
            settings = base_settings(
                tmp_path,
                providers={"partner": {"type": "smspartner", "api_key": "PK", "url": partner.url}},
                accounts={"arthur45": {"api_key": ACCOUNT_KEY, "credits": 100, "route": ["partner"]}},
            )
            await open_accounts(settings)
            dispatcher, intake = make(settings)
            await submit(intake, "0612121515;0612121516;0612121517", text="Same text")
            await dispatcher.run_once()
            assert len(partner.requests) == 1
            assert partner.requests[0].json()["phoneNumbers"] == "+33612121515,+33612121516,+33612121517"
            jobs = await store.jobs()
            assert [j.state.value for j in jobs] == ["sent"] * 3
            assert {j.provider_message_id for j in jobs} == {"307"}


class TestPricing:
    async def test_country_price_is_debited(self, tmp_path, world):
        """A 2-part SMS to Belgium at 3 credits per part debits 6 credits."""
        clock, store, make, open_accounts = world
        settings = base_settings(
            tmp_path,
            pricing={"BE": 3},
            accounts={"arthur45": {"api_key": ACCOUNT_KEY, "credits": 100, "route": ["outbox"],
                                   "allowed_countries": ["FR", "BE"]}},
        )
        await open_accounts(settings)
        dispatcher, intake = make(settings, {"outbox": Recorder("outbox", clock)})
        await submit(intake, "+32470123456;0612121515", text="x" * 200)
        balance = (await store.balances())["arthur45"]
        assert balance == 100 - 2 * 3 - 2 * 1


class TestReconciliation:
    async def test_timeout_then_status_api_settles_it(self, tmp_path, world):
        """Twilio times out after reading; the job is unknown, then reconciled as sent."""
        clock, store, make, open_accounts = world
        clock.now = time.time()
        sid = "AC" + "0" * 32
        with FakeHttpServer(Reply(json={"sid": "SM1"}, delay=3)) as twilio, \
                FakeHttpServer(Reply(json=OK)) as backup:
            settings = base_settings(
                tmp_path,
                providers={
                    "twilio": {"type": "twilio", "account_sid": sid, "auth_token": "T",
                               "from": "+15005550006", "url": twilio.url, "timeout": 0.5},
                    "backup": {"type": "smspartner", "api_key": "PK", "url": backup.url},
                },
                accounts={"arthur45": {"api_key": ACCOUNT_KEY, "credits": 10, "route": ["twilio", "backup"]}},
            )
            await open_accounts(settings)
            dispatcher, intake = make(settings)
            await submit(intake, "0612121515", text="Disk full on db1")
            await dispatcher.run_once()
            assert (await store.job(1)).state.value == "unknown" and backup.requests == []
            created = format_datetime(datetime.fromtimestamp(clock.now, timezone.utc))
            twilio.reply(Reply(json={"messages": [
                {"sid": "SMother", "body": "something else", "status": "delivered", "date_created": created},
                {"sid": "SM1", "body": "Disk full on db1", "status": "delivered", "date_created": created},
            ]}))
            assert await dispatcher.reconcile() == 1
            job = await store.job(1)
            assert job.state.value == "sent" and job.provider_message_id == "SM1"
            listing = twilio.requests[-1]
            assert listing.path.endswith("/Messages.json") and listing.query["To"] == ["+33612121515"]
            assert len([r for r in twilio.requests if r.method == "POST"]) == 1

    async def test_nothing_found_stays_unknown(self, tmp_path, world):
        """When the provider has no trace of the SMS, the job stays unknown for an operator."""
        clock, store, make, open_accounts = world
        sid = "AC" + "1" * 32
        with FakeHttpServer(Reply(json={"sid": "SM1"}, delay=3), Reply(json={"messages": []})) as twilio:
            settings = base_settings(
                tmp_path,
                providers={"twilio": {"type": "twilio", "account_sid": sid, "auth_token": "T",
                                      "from": "+15005550006", "url": twilio.url, "timeout": 0.5}},
                accounts={"arthur45": {"api_key": ACCOUNT_KEY, "credits": 10, "route": ["twilio"]}},
            )
            await open_accounts(settings)
            dispatcher, intake = make(settings)
            await submit(intake, "0612121515")
            await dispatcher.run_once()
            assert await dispatcher.reconcile() == 0
            assert (await store.job(1)).state.value == "unknown"


class Hanging(Provider):
    """A provider that has the request and never answers (until cancelled)."""

    capabilities = Capabilities()

    def __init__(self, name: str) -> None:
        self.name = name
        self.called = asyncio.Event()

    async def send(self, sms: Sms) -> Receipt:
        self.called.set()
        await asyncio.Event().wait()
        raise AssertionError("unreachable")


class TestShutdown:
    async def test_call_cut_by_shutdown_is_never_requeued(self, tmp_path, world):
        """A provider call cancelled after the grace period stays 'sending', so a restart marks
        it unknown instead of sending it a second time."""
        clock, store, make, open_accounts = world
        settings = base_settings(tmp_path, dispatcher={"grace_period": 0.1, "poll_interval": 0.05})
        await open_accounts(settings)
        hanging = Hanging("outbox")
        dispatcher, intake = make(settings, {"outbox": hanging})
        await submit(intake, "0612121515")
        stop = asyncio.Event()
        runner = asyncio.create_task(dispatcher.run(stop))
        await asyncio.wait_for(hanging.called.wait(), 5)
        stop.set()
        await asyncio.wait_for(runner, 5)
        assert (await store.job(1)).state.value == "sending"
        assert await store.recover_sending(clock.time()) == [1]
