"""The dispatcher: the only code that calls providers.

It claims due jobs (``queued`` -> ``sending``, one write), groups those that carry the same
text from the same account to the same route (one bulk call where the provider takes
several numbers), and tries the route in order (see ``routing.py`` for how it is chosen):

- ``Receipt``         -> ``sent`` (numbers the receipt lists as rejected: ``failed``).
- ``TransientError``  -> definitely not delivered: the next provider is tried at once;
  when every provider failed this way the job is retried with exponential backoff and
  jitter (or the provider's ``Retry-After``) until ``dispatcher.max_age``.
- ``PermanentError``  -> definitely not delivered: the next provider is tried too; when
  none is left the job is ``failed``, its credit refunded, status 122 mailed.
- ``AmbiguousError`` (or a crash in provider code) -> the SMS may be out: the job becomes
  ``unknown``; never re-sent automatically. ``reconcile()`` asks providers that can tell
  (a status API) and settles it as sent or failed.

Around every call: a circuit breaker per provider (an open circuit counts as a definite
non-delivery, so the route moves on without waiting for a timeout), a rate limit per
provider (messages per second, evenly spaced) and per account (per minute, per day). A job
that would wait more than ``_MAX_WAIT`` for a limit goes back to the queue for that time,
so one busy provider or account never holds the dispatcher's slots.

Just before sending, a marketing job that fell into quiet hours (a retry, a date chosen
at intake under other settings) goes back to the queue until the next allowed minute, and
a job whose number opted out since intake fails with status 125 and is refunded.

After a crash, jobs found in ``sending`` are marked ``unknown`` at startup (at-most-once).
On shutdown the dispatcher stops claiming, gives in-flight calls ``grace_period`` seconds,
then cancels them; a job cancelled before its provider call started goes back to the queue.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import datetime, timezone
from itertools import groupby

import structlog

from bridge.backoff import exponential_backoff
from bridge.config import Config
from bridge.errors import AmbiguousError, PermanentError, TransientError
from bridge.limits import CircuitBreaker, RateLimiter, SlidingWindow
from bridge.providers.base import Provider, Receipt, Sms, can_reconcile
from bridge.replies import compose_status
from bridge.routing import Route, choose_route
from bridge.store import Job, JobState, Store

log = structlog.get_logger("bridge.dispatcher")
_MAX_WAIT = 1.0  # seconds a job may wait in memory for a rate limit before being re-queued


class Dispatcher:
    """Takes due jobs from the store and hands them to providers."""

    def __init__(
        self,
        config: Config,
        store: Store,
        providers: Mapping[str, Provider],
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.config = config
        self.settings = config.dispatcher
        self.store = store
        self.providers = providers
        self.clock = clock
        self.sleep = sleep
        self.rng = rng or random.Random()
        self.breakers = {
            name: CircuitBreaker(p.breaker_failures, p.breaker_cooldown)
            for name, p in _policies(config, providers).items()
        }
        self.limiters = {
            name: RateLimiter(p.rate or providers[name].capabilities.default_rate)
            for name, p in _policies(config, providers).items()
        }
        self.windows: dict[str, list[SlidingWindow]] = {
            login: [SlidingWindow(limit, period) for limit, period in
                    ((a.rate_per_minute, 60.0), (a.rate_per_day, 86400.0)) if limit]
            for login, a in config.accounts.items()
        }
        self._wake = asyncio.Event()
        self._inflight: set[asyncio.Task] = set()
        self._calling: set[int] = set()

    async def load_windows(self) -> None:
        """Rebuild the per-account windows from what the store says was sent lately."""
        for login, times in (await self.store.sent_times(self.clock() - 86400)).items():
            for window in self.windows.get(login, []):
                for when in times:
                    window.record(when)

    def wake(self) -> None:
        """New work was committed: look for due jobs now rather than at the next poll."""
        self._wake.set()

    # --- the loop ----------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Dispatch until ``stop`` is set, then wind down within the grace period."""
        await self.load_windows()
        while not stop.is_set():
            try:
                await self._fill()
            except Exception:
                log.exception("dispatch_loop_error")
            await self._idle(stop)
        await self.shutdown()

    async def run_once(self) -> int:
        """Claim what is due now, process it and wait for it (tests and the CLI)."""
        jobs = await self.store.claim_jobs(self.clock(), self.settings.concurrency)
        await asyncio.gather(*(self.process(group) for group in self._groups(jobs)))
        return len(jobs)

    async def _fill(self) -> None:
        free = self.settings.concurrency - len(self._inflight)
        if free <= 0:
            return
        self._wake.clear()
        jobs = await self.store.claim_jobs(self.clock(), free)
        for group in self._groups(jobs):
            task = asyncio.create_task(self.process(group), name=f"job-{group[0].id}")
            self._inflight.add(task)
            task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task) -> None:
        self._inflight.discard(task)
        self._wake.set()  # a slot is free

    async def _idle(self, stop: asyncio.Event) -> None:
        waiters = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(self._wake.wait())]
        try:
            await asyncio.wait(waiters, timeout=await self._next_wait(), return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()

    async def _next_wait(self) -> float:
        if self._wake.is_set():
            return 0.0  # work arrived while claiming: no need to ask the store when
        if len(self._inflight) >= self.settings.concurrency:
            return self.settings.poll_interval
        due = await self.store.next_due()
        if due is None:
            return self.settings.poll_interval
        return min(self.settings.poll_interval, max(0.0, due - self.clock()))

    async def shutdown(self) -> None:
        """Wait ``grace_period`` for in-flight jobs, then cancel and account for the rest."""
        if not self._inflight:
            return
        done, pending = await asyncio.wait(set(self._inflight), timeout=self.settings.grace_period)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending)
        log.info("dispatcher_stopped", finished=len(done), cancelled=len(pending))

    def _groups(self, jobs: Sequence[Job]) -> list[list[Job]]:
        """Jobs that can share one provider call: same account, text, sender and options."""
        def key(job: Job) -> tuple:
            return (job.login, job.text, job.sender or "", job.low_cost, job.unicode, job.parts, job.category)

        ordered = sorted(jobs, key=lambda j: (key(j), j.id))
        return [list(group) for _, group in groupby(ordered, key=key)]

    # --- one group of jobs -------------------------------------------------------------

    async def process(self, jobs: Job | Sequence[Job]) -> None:
        """Deliver a group of like jobs (or one job); record exactly one outcome for each."""
        jobs = [jobs] if isinstance(jobs, Job) else list(jobs)
        try:
            jobs = await self._screen(jobs)
            jobs = await self._throttle(jobs) if jobs else jobs
            routes: dict[tuple[str, ...], list[Job]] = {}
            for job in jobs:
                route = self._route(job)
                if not route.names:
                    await self._fail(job, f"no provider can send it: {route.explain()}")
                    continue
                routes.setdefault(route.names, []).append(job)
            for names, same_route in routes.items():
                await self._deliver(same_route, names)
        except asyncio.CancelledError:
            now = self.clock()
            for job in jobs:
                if job.id in self._calling:
                    # The request may be on the wire: left in 'sending', startup marks it
                    # 'unknown' rather than sending it twice.
                    log.warning("job_interrupted", job_id=job.id)
                else:
                    await asyncio.shield(self.store.defer(job.id, now, "interrupted before sending", now))
            raise
        finally:
            for job in jobs:
                self._calling.discard(job.id)

    async def _screen(self, jobs: list[Job]) -> list[Job]:
        """Last checks before sending: quiet hours for marketing, opt-outs since intake."""
        now = self.clock()
        kept = []
        for job in jobs:
            if job.category == "marketing":
                account = self.config.accounts.get(job.login)
                quiet = (account.quiet_hours if account else None) or self.config.quiet_hours
                release = quiet.next_allowed(datetime.fromtimestamp(now, timezone.utc)).timestamp()
                if release > now:
                    await self.store.defer(job.id, release, "quiet hours (marketing)", now)
                    log.info("job_held", job_id=job.id, reason="quiet_hours", until=release)
                    continue
            if job.suppressed:  # looked up when the job was claimed
                await self._fail(job, job.suppressed, code=125)
                continue
            kept.append(job)
        return kept

    def _route(self, job: Job) -> Route:
        account = self.config.accounts.get(job.login)
        if account is None:
            return Route((), (("-", "the account is no longer configured"),))
        return choose_route(
            account, self.providers, number=job.number, low_cost=job.low_cost,
            unicode=job.unicode, sender=job.sender, parts=job.parts,
        )

    async def _throttle(self, jobs: list[Job]) -> list[Job]:
        """The jobs the account's rate windows allow now; the others go back to the queue."""
        windows = self.windows.get(jobs[0].login, [])
        if not windows:
            return jobs
        now = self.clock()
        allowed = []
        for job in jobs:
            when = max(w.next_free(now) for w in windows)
            if when > now:
                await self.store.defer(job.id, when, "account rate limit", now)
                log.info("job_deferred", job_id=job.id, reason="account_rate", until=when)
                continue
            for window in windows:
                window.record(now)
            allowed.append(job)
        return allowed

    async def _deliver(self, jobs: list[Job], route: tuple[str, ...]) -> None:
        """Walk the route with the jobs not yet delivered; settle every job."""
        pending = jobs
        errors: dict[int, list[str]] = {job.id: [] for job in jobs}
        transient: dict[int, list[TransientError]] = {job.id: [] for job in jobs}
        for name in route:
            if not pending:
                return
            provider = self.providers[name]
            if not self.breakers[name].allow(self.clock()):
                for job in pending:
                    errors[job.id].append(f"{name}: circuit open")
                    transient[job.id].append(TransientError("circuit open", provider=name))
                continue
            left: list[Job] = []
            for chunk in _chunks(pending, provider.capabilities.max_numbers):
                left += await self._call(name, provider, chunk, errors, transient)
            pending = left
        for job in pending:
            await self._give_up_or_retry(job, errors[job.id], transient[job.id])

    async def _call(self, name, provider, chunk, errors, transient) -> list[Job]:
        """One provider call for ``chunk``; return the jobs to try at the next provider."""
        slot = self.limiters[name].next_free(self.clock())
        if slot - self.clock() > _MAX_WAIT:
            for job in chunk:
                await self.store.defer(job.id, slot, f"{name}: rate limit", self.clock())
            return []
        slot = self.limiters[name].take(self.clock())
        for _ in chunk[1:]:
            self.limiters[name].take(self.clock())  # a bulk call counts every number
        if slot > self.clock():
            await self.sleep(slot - self.clock())
        first = chunk[0]
        sms = Sms(
            to=tuple(job.number for job in chunk), text=first.text, sender=first.sender,
            low_cost=first.low_cost, unicode=first.unicode, parts=first.parts,
            reference=",".join(f"job-{job.id}" for job in chunk), category=first.category,
        )
        breaker = self.breakers[name]
        ids = [job.id for job in chunk]
        self._calling.update(ids)
        try:
            receipt = await provider.send(sms)
        except asyncio.CancelledError:
            raise  # the jobs stay in _calling: process() leaves them in 'sending'
        except Exception as exc:
            self._calling.difference_update(ids)
            return await self._call_failed(name, chunk, exc, errors, transient)
        self._calling.difference_update(ids)
        breaker.success()
        await self._settle(chunk, name, receipt)
        return []

    async def _call_failed(self, name, chunk, exc, errors, transient) -> list[Job]:
        """Record a failed call; return the jobs the next provider may try."""
        breaker = self.breakers[name]
        if isinstance(exc, TransientError):
            breaker.failure(self.clock())
            return self._note(chunk, name, exc, errors, transient, "provider_transient")
        if isinstance(exc, PermanentError):
            breaker.success()  # it answered: the provider is alive
            return self._note(chunk, name, exc, errors, None, "provider_refused")
        breaker.failure(self.clock())
        if isinstance(exc, AmbiguousError):
            error = str(exc)
        else:  # a bug in provider code: the request may be out
            log.error("provider_crashed", provider=name, job_ids=[j.id for j in chunk],
                      exc_info=exc)
            error = f"{type(exc).__name__}: {exc}"
        for job in chunk:
            await self._unknown(job, name, error)
        return []

    def _note(self, chunk, name, exc, errors, transient, event) -> list[Job]:
        for job in chunk:
            errors[job.id].append(f"{name}: {exc}")
            if transient is not None:
                transient[job.id].append(exc)
        log.info(event, provider=name, job_ids=[j.id for j in chunk], error=str(exc))
        return list(chunk)

    async def _settle(self, chunk: list[Job], name: str, receipt: Receipt) -> None:
        now = self.clock()
        for job in chunk:
            if job.number in receipt.rejected:
                await self._fail(job, f"{name}: {receipt.rejected[job.number]}")
                continue
            provider_id = receipt.message_ids.get(job.number)
            await self.store.mark_sent(job.id, name, provider_id, now)
            log.info("sent", job_id=job.id, message_id=job.message_id, provider=name,
                     provider_message_id=provider_id, attempts=job.attempts)

    async def _give_up_or_retry(self, job: Job, errors: list[str], transient: list[TransientError]) -> None:
        error = "; ".join(errors)[:500]
        now = self.clock()
        if transient and now - job.created_at < self.settings.max_age:
            delay = exponential_backoff(
                job.attempts, self.settings.backoff_base, self.settings.backoff_max, rng=self.rng
            )
            asked = max((e.retry_after or 0.0) for e in transient)
            when = now + max(delay, asked)
            await self.store.mark_retry(job.id, error, when, now)
            log.info("retry_scheduled", job_id=job.id, delay=round(when - now, 1), error=error)
            return
        await self._fail(job, error)

    async def _unknown(self, job: Job, provider: str, error: str) -> None:
        await self.store.mark_unknown(job.id, provider, error[:500], self.clock())
        log.warning("job_unknown", job_id=job.id, message_id=job.message_id, provider=provider, error=error)

    async def _fail(self, job: Job, error: str, code: int = 122) -> None:
        reply = None
        if job.reply_to:
            account = self.config.accounts.get(job.login)
            language = account.language if account else "fr"
            reply = compose_status(
                code=code,
                to=job.reply_to,
                sender=self.config.replies.sender,
                language=language,
                note=error,
                in_reply_to=job.message_id,
                received=[("Number" if language == "en" else "Numéro", job.number)],
                max_per_hour=self.config.replies.rate_per_hour,
            )
        await self.store.mark_failed(job.id, error, self.clock(), reply)
        log.warning("job_failed", job_id=job.id, message_id=job.message_id, error=error, refunded=job.cost)

    # --- unknown jobs ------------------------------------------------------------------

    async def reconcile(self, limit: int = 50) -> int:
        """Ask providers about ``unknown`` jobs; settle those they can tell. Returns how many."""
        settled = 0
        for job in await self.store.jobs(JobState.UNKNOWN.value, limit):
            provider = self.providers.get(job.provider or "")
            if provider is None or not can_reconcile(provider):
                continue
            sms = Sms(to=(job.number,), text=job.text, sender=job.sender, parts=job.parts,
                      unicode=job.unicode, low_cost=job.low_cost, reference=f"job-{job.id}")
            try:
                found = await provider.reconcile(sms, job.created_at, job.provider_message_id)
            except Exception as exc:  # a failed lookup changes nothing
                log.info("reconcile_failed", job_id=job.id, provider=job.provider, error=str(exc))
                continue
            if found is None:
                continue
            state, provider_id = found
            if state in ("delivered", "sent"):
                await self.store.mark_sent(job.id, job.provider, provider_id, self.clock())
            elif state == "failed":
                await self._fail(job, f"{job.provider}: not delivered (reconciled)")
            else:
                continue
            settled += 1
            log.info("job_reconciled", job_id=job.id, provider=job.provider, state=state)
        return settled

    async def run_reconciler(self, stop: asyncio.Event, interval: float = 60.0) -> None:
        """Reconcile unknown jobs every ``interval`` seconds until ``stop``."""
        while not stop.is_set():
            try:
                await self.reconcile()
            except Exception:
                log.exception("reconcile_loop_error")
            try:
                await asyncio.wait_for(stop.wait(), interval)
            except asyncio.TimeoutError:
                pass


def _chunks(jobs: list[Job], size: int) -> list[list[Job]]:
    size = max(1, size)
    return [jobs[i:i + size] for i in range(0, len(jobs), size)]


def _policies(config: Config, providers: Mapping[str, Provider]):
    from bridge.config import ProviderPolicy

    return {name: config.provider_policies.get(name, ProviderPolicy()) for name in providers}
