"""The dispatcher against fake providers: failover, breakers, rate limits, bulk, pricing."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from datetime import datetime, timezone
from email.utils import format_datetime

from conftest import ACCOUNT_KEY, Recorder, base_settings, wait_until
from structlog.testing import capture_logs
from provider_fakes import FakeHttpServer, Reply, closed_port

from bridge.errors import RecipientRefused, TransientError
from bridge.intake import Envelope, Intake
from bridge.providers.base import Capabilities, Provider, Receipt, Sms
from bridge.recovery import Recovery
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



async def _sleep_forever(seconds: float) -> None:
    await asyncio.Event().wait()


async def _process_then_cancel(dispatcher, jobs) -> None:
    """Start processing ``jobs``, cancel it 50 ms later (a shutdown), let it settle."""
    task = asyncio.create_task(dispatcher.process(jobs))
    await asyncio.sleep(0.05)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await asyncio.sleep(0.05)

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
            assert await Recovery(dispatcher.config, store, dispatcher.providers, dispatcher.owner, clock.time).reconcile() == 0  # not before dispatcher.reconcile_after
            clock.now += 31
            assert await Recovery(dispatcher.config, store, dispatcher.providers, dispatcher.owner, clock.time).reconcile() == 1
            job = await store.job(1)
            assert job.state.value == "sent" and job.provider_message_id == "SM1"
            listing = twilio.requests[-1]
            assert listing.path.endswith("/Messages.json") and listing.query["To"] == ["+33612121515"]
            assert len([r for r in twilio.requests if r.method == "POST"]) == 1

    async def test_nothing_found_fails_and_refunds(self, tmp_path, world):
        """When the provider's complete list has no trace of the SMS, it never got it: the job
        is failed and refunded (never re-queued by itself)."""
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
            clock.now += 31
            assert await Recovery(dispatcher.config, store, dispatcher.providers, dispatcher.owner, clock.time).reconcile() == 1
            job = await store.job(1)
            assert job.state.value == "failed" and "never received" in job.last_error
            assert (await store.balances())["arthur45"] == 10


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
        """A provider call cancelled after the grace period becomes 'unknown' (with its
        provider and reference, to be reconciled), never 'queued' to be sent a second time."""
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
        await dispatcher.shutdown()
        job = await store.job(1)
        assert job.state.value == "unknown"
        assert job.provider == "outbox" and job.client_ref == "m2s-1-1"
        assert await store.claim("another", clock.time() + 3600, 10, 60) == []


class BulkThenCancel(Provider):
    """Accepts a bulk call, then cancels the dispatching task while its outcome is written."""

    capabilities = Capabilities(max_numbers=10)

    def __init__(self, name: str) -> None:
        self.name = name
        self.task: asyncio.Task | None = None
        self.calls: list[Sms] = []

    async def send(self, sms: Sms) -> Receipt:
        self.calls.append(sms)
        asyncio.get_running_loop().call_soon(self.task.cancel)  # lands during the settle write
        return Receipt({n: f"id-{n}" for n in sms.to})


class TestCancellation:
    async def test_cancel_during_the_settle_of_a_bulk_call_requeues_nothing(self, tmp_path, world):
        """A bulk call accepted 3 numbers; a cancel during the settle write leaves all 3 sent,
        none back in the queue (they would be sent twice)."""
        clock, store, make, open_accounts = world
        settings = base_settings(tmp_path)
        await open_accounts(settings)
        provider = BulkThenCancel("outbox")
        dispatcher, intake = make(settings, {"outbox": provider})
        await submit(intake, "0612121515;0612121516;0612121517", text="Same text")
        jobs = await store.claim(dispatcher.owner, clock.time(), 10, 60)
        provider.task = asyncio.create_task(dispatcher.process(jobs))
        try:
            await provider.task
        except asyncio.CancelledError:
            pass
        await asyncio.sleep(0.1)  # let the shielded writes finish
        assert await states(store) == ["sent"] * 3
        assert await store.claim("other", clock.time() + 3600, 10, 60) == []
        assert len(provider.calls) == 1

    async def test_cancel_while_waiting_for_the_rate_limit_puts_jobs_back(self, tmp_path, world):
        """Jobs claimed but not yet called when cancelled go back to the queue, unsent."""
        clock, store, make, open_accounts = world
        settings = base_settings(tmp_path)
        await open_accounts(settings)
        recorder = Recorder("outbox", clock)

        dispatcher, intake = make(settings, {"outbox": recorder})
        dispatcher.sleep = _sleep_forever  # the rate limit's wait never ends
        dispatcher.limiters["outbox"].take(clock.time())  # the next slot is in the future
        await submit(intake, "0612121515")
        jobs = await store.claim(dispatcher.owner, clock.time(), 10, 60)
        await _process_then_cancel(dispatcher, jobs)
        assert await states(store) == ["queued"] and recorder.calls == []


class TestIdleLoop:
    async def test_busy_slots_do_not_spin_the_loop(self, tmp_path, world):
        """With every slot busy on a hanging call, the loop waits instead of spinning."""
        clock, store, make, open_accounts = world
        settings = base_settings(tmp_path, dispatcher={"concurrency": 1, "poll_interval": 0.05})
        await open_accounts(settings)
        hanging = Hanging("outbox")
        dispatcher, intake = make(settings, {"outbox": hanging})
        for i in range(5):
            await submit(intake, f"061212151{i}", text=f"t{i}")
        stop = asyncio.Event()
        runner = asyncio.create_task(dispatcher.run(stop))
        await asyncio.wait_for(hanging.called.wait(), 5)
        before = dispatcher.passes
        for _ in range(20):
            dispatcher.wake()  # new mail keeps arriving
            await asyncio.sleep(0.01)
        assert dispatcher.passes - before <= 2
        stop.set()
        await asyncio.wait_for(runner, 5)
        for task in list(dispatcher._inflight):
            task.cancel()

    async def test_open_circuit_defers_the_account_in_one_write_with_one_log_line(self, tmp_path, world):
        """Provider refusing connections: after the breaker opens, every queued job of the
        account waits for the cooldown, and the loop logs one summary line, not one per job."""
        clock, store, make, open_accounts = world
        settings = base_settings(
            tmp_path,
            providers={"down": {"type": "smspartner", "api_key": "P", "url": f"http://127.0.0.1:{closed_port()}",
                                "circuit": {"failures": 1, "cooldown": 30}}},
            accounts={"arthur45": {"api_key": ACCOUNT_KEY, "credits": 1000, "route": ["down"]}},
            dispatcher={"concurrency": 4},
        )
        await open_accounts(settings)
        dispatcher, intake = make(settings)
        for i in range(40):
            await submit(intake, f"06121215{i:02d}", text=f"alert {i}")
        with capture_logs() as logs:
            await dispatcher.run_once()   # the first call fails and opens the circuit
            await dispatcher.run_once()   # the next jobs find it open
        queued = [j for j in await store.jobs(limit=100) if j.state.value == "queued"]
        assert len(queued) == 40
        reopening = clock.time() + 30
        assert sum(1 for j in queued if j.next_attempt_at >= reopening - 0.01) >= 36
        assert [e["event"] for e in logs].count("route_open") == 1
        assert await dispatcher.run_once() == 0  # nothing due until the cooldown ends


class BulkRecorder(Recorder):
    """A Recorder that takes up to 500 numbers per call."""

    capabilities = Capabilities(max_numbers=500)


class TestBulkClaims:
    async def test_a_100_number_mail_goes_out_in_a_few_bulk_calls(self, tmp_path, world):
        """The dispatcher claims more jobs per slot as it sees one mail's jobs share a call:
        100 numbers leave in a handful of bulk calls, each number exactly once."""
        clock, store, make, open_accounts = world
        settings = base_settings(tmp_path, dispatcher={"concurrency": 4, "poll_interval": 0.01})
        settings["accounts"]["arthur45"]["credits"] = 1000
        settings["providers"]["outbox"]["rate"] = 100_000
        await open_accounts(settings)
        recorder = BulkRecorder("outbox", clock)
        dispatcher, intake = make(settings, {"outbox": recorder})
        await submit(intake, ";".join(f"+336121{i:05d}" for i in range(100)), text="Same text")
        stop = asyncio.Event()
        runner = asyncio.create_task(dispatcher.run(stop))
        await wait_until(lambda: sum(len(sms.to) for _, sms in recorder.calls) >= 100, what="all sent")
        stop.set()
        await asyncio.wait_for(runner, 5)
        await dispatcher.shutdown()
        numbers = [n for _, sms in recorder.calls for n in sms.to]
        assert len(numbers) == len(set(numbers)) == 100
        assert len(recorder.calls) <= 6
        assert Counter(await states(store)) == {"sent": 100}

    async def test_one_number_mails_are_never_over_claimed(self, tmp_path, world):
        """Distinct one-number mails: never more calls at once than the concurrency."""
        clock, store, make, open_accounts = world
        settings = base_settings(tmp_path, dispatcher={"concurrency": 2, "poll_interval": 0.01})
        await open_accounts(settings)
        hanging = Hanging("outbox")
        dispatcher, intake = make(settings, {"outbox": hanging})
        for i in range(6):
            await submit(intake, f"061212151{i}", text=f"t{i}")
        stop = asyncio.Event()
        runner = asyncio.create_task(dispatcher.run(stop))
        await asyncio.wait_for(hanging.called.wait(), 5)
        await asyncio.sleep(0.1)
        assert Counter(await states(store)) == {"calling": 2, "queued": 4}
        stop.set()
        await asyncio.wait_for(runner, 5)
        for task in list(dispatcher._inflight):
            task.cancel()


class FailsThenHangs(Provider):
    """Refuses connections while ``failing``; then takes the request and never answers."""

    capabilities = Capabilities()

    def __init__(self, name: str) -> None:
        self.name = name
        self.failing = True
        self.hanging = asyncio.Event()

    async def send(self, sms: Sms) -> Receipt:
        if self.failing:
            raise TransientError("connection refused", provider=self.name)
        self.hanging.set()
        await asyncio.Event().wait()
        raise AssertionError("unreachable")


class TestHalfOpen:
    async def test_while_the_probe_is_out_other_jobs_wait_instead_of_churning(self, tmp_path, world):
        """Half-open with its one probe on the wire: the other jobs are deferred in one write,
        not each retried with a log line."""
        clock, store, make, open_accounts = world
        settings = base_settings(tmp_path, dispatcher={"concurrency": 4, "poll_interval": 0.01})
        settings["providers"]["outbox"]["circuit"] = {"failures": 1, "cooldown": 30}
        await open_accounts(settings)
        provider = FailsThenHangs("outbox")
        dispatcher, intake = make(settings, {"outbox": provider})
        for i in range(20):
            await submit(intake, f"06121215{i:02d}", text=f"alert {i}")
        await dispatcher.run_once()            # the circuit opens
        clock.now += 31                        # half-open: one probe may go
        provider.failing = False
        stop = asyncio.Event()
        with capture_logs() as logs:
            runner = asyncio.create_task(dispatcher.run(stop))
            await asyncio.wait_for(provider.hanging.wait(), 5)
            await asyncio.sleep(0.2)
            stop.set()
            await asyncio.wait_for(runner, 5)
        for task in list(dispatcher._inflight):
            task.cancel()
        events = [e["event"] for e in logs]
        assert "retry_scheduled" not in events and events.count("route_open") <= 1
        waiting = [j for j in await store.jobs(limit=100) if j.state.value == "queued"]
        assert len(waiting) == 19 and dispatcher.throttles.paused_until(clock.now) is not None


class RefusesRecipient(Provider):
    """Says the recipient sent STOP (as Twilio 21610 does)."""

    capabilities = Capabilities()

    def __init__(self, name: str) -> None:
        self.name = name
        self.calls: list[Sms] = []

    async def send(self, sms: Sms) -> Receipt:
        self.calls.append(sms)
        raise RecipientRefused("21610: the recipient replied STOP", provider=self.name, opted_out=True)


class TestRecipientRefused:
    async def test_an_opted_out_recipient_stops_the_route_and_is_remembered(self, tmp_path, world):
        """The first provider says the person sent STOP: no other provider texts them, the job
        fails and is refunded, and the number joins the opt-out list (later mails: 125)."""
        clock, store, make, open_accounts = world
        settings = base_settings(
            tmp_path,
            providers={"first": {"type": "file", "path": str(tmp_path / "a.jsonl")},
                       "second": {"type": "file", "path": str(tmp_path / "b.jsonl")}},
            accounts={"arthur45": {"api_key": ACCOUNT_KEY, "credits": 10, "route": ["first", "second"]}},
        )
        await open_accounts(settings)
        first, second = RefusesRecipient("first"), Recorder("second", clock)
        dispatcher, intake = make(settings, {"first": first, "second": second})
        await submit(intake, "0612121515")
        await dispatcher.run_once()
        job = await store.job(1)
        assert job.state.value == "failed" and len(first.calls) == 1 and second.calls == []
        assert (await store.balances())["arthur45"] == 10
        [row] = await store.optouts()
        assert row["number"] == "+33612121515" and row["source"] == "provider:first"


class TestBreakerBetweenChunks:
    async def test_a_circuit_opened_by_one_chunk_spares_the_next_chunks(self, tmp_path, world):
        """Sixteen numbers, one per call, to a provider refusing connections: once its
        circuit opens, the group's remaining numbers are not tried one by one."""
        clock, store, make, open_accounts = world
        settings = base_settings(tmp_path, dispatcher={"concurrency": 1})
        settings["providers"]["outbox"]["circuit"] = {"failures": 2, "cooldown": 30}
        settings["providers"]["outbox"]["rate"] = 100_000
        await open_accounts(settings)
        recorder = Recorder("outbox", clock, fail_first=1000)
        dispatcher, intake = make(settings, {"outbox": recorder})
        await submit(intake, ";".join(f"06121215{i:02d}" for i in range(16)), text="Same text")
        await dispatcher.run_once(only=range(1, 17))
        assert len(recorder.calls) == 2
        assert Counter(await states(store)) == {"queued": 16}


class TestUnknownSaysWhy:
    async def test_unknown_job_says_whether_it_will_be_looked_up(self, tmp_path, world):
        """A timeout at a provider without a lookup: the job says to check with the provider."""
        clock, store, make, open_accounts = world
        with FakeHttpServer(Reply(json=OK, delay=3)) as slow:
            settings = base_settings(
                tmp_path,
                providers={"vonage": {"type": "vonage", "api_key": "k", "api_secret": "s", "from": "BRIDGE",
                                      "url": slow.url, "timeout": 0.5}},
                accounts={"arthur45": {"api_key": ACCOUNT_KEY, "credits": 10, "route": ["vonage"]}},
            )
            await open_accounts(settings)
            dispatcher, intake = make(settings)
            await submit(intake, "0612121515")
            await dispatcher.run_once()
        job = await store.job(1)
        assert job.state.value == "unknown" and "vonage offers no lookup" in job.last_error


class ChecksTheStore(Provider):
    """Reads its jobs from the store during each call: what a crash at that moment would leave."""

    capabilities = Capabilities(max_numbers=10)

    def __init__(self, name: str, store: Store) -> None:
        self.name = name
        self.store = store
        self.seen: list[tuple[str, str | None, str | None, str]] = []  # (state, provider, ref, sent ref)

    async def send(self, sms: Sms) -> Receipt:
        for job in await self.store.jobs(limit=100):
            if job.number in sms.to:
                self.seen.append((job.state.value, job.provider, job.client_ref, sms.reference))
        return Receipt({n: f"id-{n}" for n in sms.to})


class TestCallRecordedByTheClaim:
    async def test_the_merged_claim_records_the_call_before_it_is_made(self, tmp_path, world):
        """Claimed and recorded in one write, each job is 'calling' with its provider and the
        reference the provider receives while the call is on the wire; then it is sent once."""
        clock, store, make, open_accounts = world
        settings = base_settings(tmp_path, dispatcher={"poll_interval": 0.01})
        await open_accounts(settings)
        checker = ChecksTheStore("outbox", store)
        dispatcher, intake = make(settings, {"outbox": checker})
        await submit(intake, "0612121515;0612121516", text="Same text")
        await submit(intake, "0612121517", text="Other text")
        stop = asyncio.Event()
        runner = asyncio.create_task(dispatcher.run(stop))
        await wait_until(lambda: len(checker.seen) >= 3, what="three numbers called")
        stop.set()
        await asyncio.wait_for(runner, 5)
        await dispatcher.shutdown()
        assert len(checker.seen) == 3
        assert all(state == "calling" and provider == "outbox" and ref == sent and ref.startswith("m2s-")
                   for state, provider, ref, sent in checker.seen)
        assert await states(store) == ["sent"] * 3

    async def test_a_circuit_opened_since_the_claim_spares_that_provider(self, tmp_path, world):
        """A call recorded by the claim whose provider's circuit opened meanwhile is not made:
        the job goes to the next provider, sent once, never left 'calling'."""
        clock, store, make, open_accounts = world
        settings = base_settings(tmp_path, providers={
            "primary": {"type": "file", "path": str(tmp_path / "p.jsonl"), "circuit": {"failures": 1}},
            "secondary": {"type": "file", "path": str(tmp_path / "s.jsonl")}})
        settings["accounts"]["arthur45"]["route"] = ["primary", "secondary"]
        await open_accounts(settings)
        primary, secondary = Recorder("primary", clock), Recorder("secondary", clock)
        dispatcher, intake = make(settings, {"primary": primary, "secondary": secondary})
        await submit(intake, "0612121515")
        [job] = await dispatcher._claim(10, 4)
        assert job.state.value == "calling" and job.provider == "primary"
        dispatcher.breakers["primary"].failure(clock.time())
        await dispatcher.process([job])
        assert primary.calls == [] and len(secondary.calls) == 1
        assert (await store.job(job.id)).state.value == "sent"
        assert (await store.job(job.id)).provider == "secondary"

    async def test_cancel_before_a_recorded_call_puts_the_job_back_unsent(self, tmp_path, world):
        """Cancelled after the claim recorded its call but before it went out (waiting for
        the rate limit): the job is queued again, not unknown, and nothing was sent."""
        clock, store, make, open_accounts = world
        settings = base_settings(tmp_path)
        await open_accounts(settings)
        recorder = Recorder("outbox", clock)

        dispatcher, intake = make(settings, {"outbox": recorder})
        dispatcher.sleep = _sleep_forever  # the rate limit's wait never ends
        await submit(intake, "0612121515")
        jobs = await dispatcher._claim(10, 4)
        assert [j.state.value for j in jobs] == ["calling"]
        dispatcher.limiters["outbox"].take(clock.time())  # the recorded call now has to wait
        await _process_then_cancel(dispatcher, jobs)
        assert await states(store) == ["queued"] and recorder.calls == []

    async def test_jobs_the_screen_would_hold_are_only_claimed(self, tmp_path, world):
        """A number opted out since intake is claimed but not recorded as called: it fails
        with status 125 and no provider ever sees it."""
        clock, store, make, open_accounts = world
        settings = base_settings(tmp_path)
        await open_accounts(settings)
        recorder = Recorder("outbox", clock)
        dispatcher, intake = make(settings, {"outbox": recorder})
        await submit(intake, "0612121515")
        await store.optout_add("+33612121515", None, "test", clock.time())
        jobs = await dispatcher._claim(10, 4)
        assert await states(store) == ["claimed"]
        await dispatcher.process(jobs)
        assert recorder.calls == [] and await states(store) == ["failed"]

    async def test_shutdown_during_the_claim_puts_recorded_calls_back(self, tmp_path, world):
        """Cancelled while its claim (which records the call) is being written: the claim
        completes, and its jobs go back to the queue unsent rather than wait to be 'unknown'."""
        clock, store, make, open_accounts = world
        settings = base_settings(tmp_path, dispatcher={"poll_interval": 0.05})
        await open_accounts(settings)
        recorder = Recorder("outbox", clock)
        dispatcher, intake = make(settings, {"outbox": recorder})
        await submit(intake, "0612121515")
        gate, claiming = asyncio.Event(), asyncio.Event()
        claim = store.claim

        async def slow_claim(*args, **kwargs):
            claiming.set()
            await gate.wait()
            return await claim(*args, **kwargs)

        store.claim = slow_claim
        runner = asyncio.create_task(dispatcher.run(asyncio.Event()))
        await asyncio.wait_for(claiming.wait(), 5)
        runner.cancel()
        gate.set()
        await asyncio.gather(runner, return_exceptions=True)
        job = await store.job(1)
        assert job.state.value == "queued" and recorder.calls == []


def handing_off(dispatcher, store: Store, clock) -> Intake:
    """An intake that commits through the dispatcher, as the daemon's does."""
    return Intake(dispatcher.config, store, clock.time, commit=dispatcher.commit)


async def recording(tmp_path, world):
    """The world's clock and store, a dispatcher sending to a ``Recorder``, and an intake
    that commits through it."""
    clock, store, make, open_accounts = world
    settings = base_settings(tmp_path)
    await open_accounts(settings)
    recorder = Recorder("outbox", clock)
    dispatcher, _ = make(settings, {"outbox": recorder})
    return clock, store, dispatcher, recorder, handing_off(dispatcher, store, clock)


class TestHandoffFromIntake:
    async def test_a_mail_goes_out_from_its_commit_without_a_claim(self, tmp_path, world):
        """With a call slot free, the intake commit records the call ('calling', provider and
        reference on disk before the request) and the SMS goes out with the dispatcher's loop
        never running: no wake-up, no claim."""
        clock, store, make, open_accounts = world
        settings = base_settings(tmp_path)
        settings["providers"]["outbox"]["rate"] = 1000  # room for a call of two numbers now
        await open_accounts(settings)
        checker = ChecksTheStore("outbox", store)
        dispatcher, _ = make(settings, {"outbox": checker})
        await submit(handing_off(dispatcher, store, clock), "0612121515;0612121516", text="Straight out")
        await wait_until(lambda: len(checker.seen) == 2, what="the call")
        await dispatcher.shutdown()
        assert checker.seen == [("calling", "outbox", "m2s-1-1", "m2s-1-1")] * 2  # one bulk call
        assert await states(store) == ["sent", "sent"]
        assert dispatcher.passes == 0 and not dispatcher._wake.is_set()

    async def test_without_a_free_slot_the_job_waits_for_the_claim(self, tmp_path, world):
        """Every call slot busy: the mail's job is committed 'queued' and the loop is woken to
        claim it once a slot frees, as without the handoff."""
        clock, store, make, open_accounts = world
        settings = base_settings(tmp_path, dispatcher={"concurrency": 1, "grace_period": 0.1})
        await open_accounts(settings)
        hanging = Hanging("outbox")
        dispatcher, _ = make(settings, {"outbox": hanging})
        intake = handing_off(dispatcher, store, clock)
        await submit(intake, "0612121515", text="First")
        await asyncio.wait_for(hanging.called.wait(), 5)
        await submit(intake, "0612121516", text="Second")
        assert await states(store) == ["calling", "queued"] and dispatcher._wake.is_set()
        await dispatcher.shutdown()
        assert await states(store) == ["unknown", "queued"]

    async def test_a_busy_dispatcher_claims_the_new_mails_together(self, tmp_path, world):
        """With four calls in flight, new mails are only queued (and the loop woken): a claim
        then takes them together, the same text of several mails in one bulk call."""
        clock, store, make, open_accounts = world
        settings = base_settings(tmp_path, dispatcher={"grace_period": 0.1})
        await open_accounts(settings)
        hanging = Hanging("outbox")
        dispatcher, _ = make(settings, {"outbox": hanging})
        intake = handing_off(dispatcher, store, clock)
        for i in range(4):
            hanging.called.clear()
            clock.now += 1  # the provider's rate allows the next call at once
            await submit(intake, f"06121215{i:02d}", text=f"Alert {i}")
            await asyncio.wait_for(hanging.called.wait(), 5)
        clock.now += 1
        await submit(intake, "0612121599", text="Alert 4")
        assert await states(store) == ["calling"] * 4 + ["queued"] and dispatcher._wake.is_set()
        await dispatcher.shutdown()

    async def test_mails_committed_together_are_all_handed_off(self, tmp_path, world):
        """Six mails committed at once (one group commit) with no call in flight: each commit
        records its call, however many commits are under way; the loop is never woken."""
        clock, store, make, open_accounts = world
        settings = base_settings(tmp_path)
        settings["providers"]["outbox"]["rate"] = 1000  # room for six calls now
        await open_accounts(settings)
        recorder = Recorder("outbox", clock)
        dispatcher, _ = make(settings, {"outbox": recorder})
        intake = handing_off(dispatcher, store, clock)
        await asyncio.gather(*(submit(intake, f"06121215{i:02d}", text=f"Alert {i}") for i in range(6)))
        await wait_until(lambda: len(recorder.calls) == 6, what="six calls")
        await dispatcher.shutdown()
        assert await states(store) == ["sent"] * 6
        assert dispatcher.passes == 0 and not dispatcher._wake.is_set()

    async def test_jobs_due_later_or_held_are_left_to_the_loop(self, tmp_path, world):
        """A later ``date=`` and marketing in quiet hours are never handed off: committed
        'queued', the loop woken (it works out when they are due)."""
        clock, store, dispatcher, recorder, intake = await recording(tmp_path, world)
        later = datetime.fromtimestamp(clock.time() + 7200, timezone.utc).astimezone()
        await submit(intake, "0612121515", extra=f"|date={later:%Y-%m-%d %H:%M:%S}")
        assert await states(store) == ["queued"] and dispatcher._wake.is_set()
        dispatcher._wake.clear()
        clock.now = datetime(2026, 5, 3, 12, 0, tzinfo=timezone.utc).timestamp()  # a Sunday
        await submit(intake, "0612121516", extra="|type=marketing")
        assert await states(store) == ["queued", "queued"] and dispatcher._wake.is_set()
        await asyncio.sleep(0.05)
        assert recorder.calls == []

    async def test_a_sender_gone_during_the_commit_still_gets_its_sms_out_once(self, tmp_path, world):
        """The SMTP session that submitted the mail is cancelled while its commit is written:
        the commit goes on and its recorded call is made, once."""
        clock, store, dispatcher, recorder, intake = await recording(tmp_path, world)
        session = asyncio.create_task(submit(intake, "0612121515"))
        await asyncio.sleep(0)  # in the commit
        session.cancel()
        await asyncio.gather(session, return_exceptions=True)
        assert session.cancelled()
        await wait_until(lambda: recorder.calls, what="the call")
        await dispatcher.shutdown()
        assert len(recorder.calls) == 1 and await states(store) == ["sent"]

    async def test_shutdown_takes_the_handoffs_under_way_and_no_more(self, tmp_path, world):
        """A commit under way when shutdown begins is adopted and its SMS sent before the
        dispatcher stops (never left 'calling' for a restart to call unknown); a mail
        committed after that is only queued."""
        clock, store, dispatcher, recorder, intake = await recording(tmp_path, world)
        session = asyncio.create_task(submit(intake, "0612121515"))
        await asyncio.sleep(0)
        await dispatcher.shutdown()
        assert len(recorder.calls) == 1 and await states(store) == ["sent"]
        await session
        clock.now += 60  # the provider's rate would allow another call at once
        await submit(intake, "0612121516")
        await asyncio.sleep(0.05)
        assert await states(store) == ["sent", "queued"] and len(recorder.calls) == 1

    async def test_concurrent_handoffs_do_not_overrun_a_providers_rate(self, tmp_path, world):
        """At one SMS a second, of two mails committed together only one is handed off; the
        other is queued for the loop, which paces it (no call recorded to wait in 'calling')."""
        clock, store, make, open_accounts = world
        settings = base_settings(tmp_path)
        settings["providers"]["outbox"]["rate"] = 1
        await open_accounts(settings)
        checker = ChecksTheStore("outbox", store)
        dispatcher, _ = make(settings, {"outbox": checker})
        intake = handing_off(dispatcher, store, clock)
        await asyncio.gather(submit(intake, "0612121515", text="One"), submit(intake, "0612121516", text="Two"))
        await wait_until(lambda: checker.seen, what="the first call")
        await dispatcher.shutdown()
        assert sorted(await states(store)) == ["queued", "sent"]
        assert len(checker.seen) == 1
