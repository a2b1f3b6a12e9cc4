"""The dispatcher: the only code that calls providers.

It claims due jobs (``queued`` -> ``sending``, one write), then for each job tries the
account's route in order:

- ``Receipt``         -> ``sent``.
- ``TransientError``  -> definitely not delivered: the next provider of the route is tried
  at once; when every provider failed this way the job is retried later with exponential
  backoff and jitter (or the provider's ``Retry-After``), until ``dispatcher.max_age``.
- ``PermanentError``  -> definitely not delivered: the next provider is tried too; when
  no provider is left the job is ``failed``, its credit refunded, status 122 mailed.
- ``AmbiguousError`` (or an unexpected exception in provider code) -> the SMS may be
  out: the job becomes ``unknown`` and is never re-sent without an operator
  (``mail2sms queue retry JOB``).

After a crash, jobs found in ``sending`` may have reached a provider: they are marked
``unknown`` at startup (at-most-once), never re-sent blindly. On shutdown the dispatcher
stops claiming, gives in-flight calls ``grace_period`` seconds, then cancels them; a job
cancelled before its provider call started goes back to ``queued``.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Mapping

import structlog

from bridge.backoff import exponential_backoff
from bridge.config import Config
from bridge.errors import AmbiguousError, PermanentError, TransientError
from bridge.providers.base import Provider, Sms
from bridge.replies import compose_status
from bridge.store import Job, Store

log = structlog.get_logger("bridge.dispatcher")


class Dispatcher:
    """Takes due jobs from the store and hands them to providers."""

    def __init__(
        self,
        config: Config,
        store: Store,
        providers: Mapping[str, Provider],
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        on_provider_call: Callable[[Job], None] | None = None,
    ) -> None:
        self.config = config
        self.settings = config.dispatcher
        self.store = store
        self.providers = providers
        self.clock = clock
        self.rng = rng or random.Random()
        self.on_provider_call = on_provider_call
        self._wake = asyncio.Event()
        self._inflight: dict[asyncio.Task, Job] = {}
        self._calling: set[int] = set()

    def wake(self) -> None:
        """New work was committed: look for due jobs now rather than at the next poll."""
        self._wake.set()

    async def run(self, stop: asyncio.Event) -> None:
        """Dispatch until ``stop`` is set, then wind down within the grace period."""
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
        await asyncio.gather(*(self.process(job) for job in jobs))
        return len(jobs)

    async def _fill(self) -> None:
        free = self.settings.concurrency - len(self._inflight)
        if free <= 0:
            return
        self._wake.clear()
        for job in await self.store.claim_jobs(self.clock(), free):
            task = asyncio.create_task(self.process(job), name=f"job-{job.id}")
            self._inflight[task] = job
            task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task) -> None:
        self._inflight.pop(task, None)
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
        done, pending = await asyncio.wait(list(self._inflight), timeout=self.settings.grace_period)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending)
        log.info("dispatcher_stopped", finished=len(done), cancelled=len(pending))

    # --- one job -----------------------------------------------------------------------

    async def process(self, job: Job) -> None:
        """Try the job's route; record exactly one outcome."""
        bound = log.bind(job_id=job.id, message_id=job.message_id)
        try:
            await self._route(job, bound)
        except asyncio.CancelledError:
            if job.id in self._calling:
                # The request may be on the wire: leave it in 'sending'; startup marks
                # it 'unknown' rather than sending it twice.
                bound.warning("job_interrupted")
            else:
                await self.store.mark_retry(job.id, "interrupted before sending", self.clock(), self.clock())
            raise
        finally:
            self._calling.discard(job.id)

    async def _route(self, job: Job, bound: structlog.BoundLogger) -> None:
        account = self.config.accounts.get(job.login)
        route = [name for name in (account.route if account else ()) if name in self.providers]
        if not route:
            await self._fail(job, "no provider configured for this account", bound)
            return
        sms = Sms(
            to=(job.number,),
            text=job.text,
            sender=job.sender,
            low_cost=job.low_cost,
            unicode=job.unicode,
            parts=job.parts,
            reference=f"job-{job.id}",
        )
        transient: list[TransientError] = []
        errors: list[str] = []
        for name in route:
            provider = self.providers[name]
            self._calling.add(job.id)
            if self.on_provider_call:
                self.on_provider_call(job)
            try:
                receipt = await provider.send(sms)
            except TransientError as exc:
                transient.append(exc)
                errors.append(f"{name}: {exc}")
                bound.info("provider_transient", provider=name, error=str(exc))
                continue
            except PermanentError as exc:
                errors.append(f"{name}: {exc}")
                bound.info("provider_refused", provider=name, error=str(exc))
                continue
            except AmbiguousError as exc:
                await self._unknown(job, name, str(exc), bound)
                return
            except Exception as exc:  # a bug in provider code: the request may be out
                bound.exception("provider_crashed", provider=name)
                await self._unknown(job, name, f"{type(exc).__name__}: {exc}", bound)
                return
            finally:
                self._calling.discard(job.id)
            provider_id = receipt.message_ids.get(job.number)
            await self.store.mark_sent(job.id, name, provider_id, self.clock())
            bound.info("sent", provider=name, provider_message_id=provider_id, attempts=job.attempts)
            return
        error = "; ".join(errors)[:500]
        now = self.clock()
        if transient and now - job.created_at < self.settings.max_age:
            delay = exponential_backoff(
                job.attempts, self.settings.backoff_base, self.settings.backoff_max, rng=self.rng
            )
            asked = max((e.retry_after or 0.0) for e in transient)
            when = now + max(delay, asked)
            await self.store.mark_retry(job.id, error, when, now)
            bound.info("retry_scheduled", delay=round(when - now, 1), error=error)
            return
        await self._fail(job, error, bound)

    async def _unknown(self, job: Job, provider: str, error: str, bound: structlog.BoundLogger) -> None:
        await self.store.mark_unknown(job.id, provider, error[:500], self.clock())
        bound.warning("job_unknown", provider=provider, error=error)

    async def _fail(self, job: Job, error: str, bound: structlog.BoundLogger) -> None:
        reply = None
        if job.reply_to:
            account = self.config.accounts.get(job.login)
            language = account.language if account else "fr"
            reply = compose_status(
                code=122,
                to=job.reply_to,
                sender=self.config.replies.sender,
                language=language,
                note=error,
                in_reply_to=job.message_id,
                received=[("Number" if language == "en" else "Numéro", job.number)],
                max_per_hour=self.config.replies.rate_per_hour,
            )
        await self.store.mark_failed(job.id, error, self.clock(), reply)
        bound.warning("job_failed", error=error, refunded=job.cost)
