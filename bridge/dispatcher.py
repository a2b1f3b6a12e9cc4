"""The dispatcher: the only code that calls providers.

One pass: claim due jobs under a lease (``queued -> claimed``), group those that carry the
same text from the same account (one bulk call where the provider takes several numbers),
check them once more (quiet hours, opt-outs since intake, the account's rate), then walk
the route. Before each call one write records the provider and a client reference
(``claimed -> calling``): the claim's own write when the call can be named then
(``_plan``: first provider, nothing to hold the jobs back), else one more; the call's
outcomes are written in one more write. What each outcome means is
``outcomes.after_call`` / ``after_route`` (pure).

A mail's jobs may also skip the claim: while few calls are in flight, the intake commit
records their call itself (``commit``, ``store.Handoff``) and the call is made once it is on
disk.

A job whose call may have gone out is never put back in the queue: a cancel (shutdown)
during a call marks it ``unknown`` at once, and ``recovery.Recovery`` asks the provider
about it. A crash leaves leases that its sweep ends.

An open circuit on every provider of a route defers that route's jobs, and every due job
of accounts that have no other way out, to the end of the cooldown in one write, with one
log line per route and interval. When every provider is down the loop pauses until the
first may take a call, and no queued row is touched whatever the backlog.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import random
import sys
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from itertools import groupby

import structlog

from bridge import rules, status_mail
from bridge.config import Config
from bridge.errors import ProviderError, RecipientRefused, TransientError
from bridge.leases import new_owner
from bridge.limits import BreakerState, Throttles
from bridge.metrics import Metrics
from bridge.model import Acceptance, Job, JobState, Plan, Settlement
from bridge.outcomes import Next, RetryPolicy, after_call, after_route
from bridge.providers.base import Provider, Receipt, Sms, can_reconcile
from bridge.routing import Route, choose_route
from bridge.store import Store
from bridge.store.protocol import CallPlan, Handoff
from bridge.supervise import first_of

log = structlog.get_logger("bridge.dispatcher")


def _remember_missing_sniffio() -> None:
    """httpcore runs ``import sniffio`` for every request (its lock setup) and falls back to
    asyncio when that fails; a failed import is not cached, so without sniffio installed each
    provider call paid a search of ``sys.path`` (~12 % of the daemon's CPU at 250 calls/s).
    Recording the miss in ``sys.modules`` makes the next import fail at once, as it would."""
    if "sniffio" not in sys.modules and importlib.util.find_spec("sniffio") is None:
        sys.modules["sniffio"] = None  # type: ignore[assignment]  # import raises ImportError


_remember_missing_sniffio()
_MAX_WAIT = 1.0  # seconds a job may wait in memory for a rate limit before being re-queued
#: Mails are handed off (``commit``) while fewer calls than this are in flight: a dispatcher
#: that would otherwise claim each mail alone. Busier, mails come faster than calls end and
#: one claim takes many, like texts of several mails in one bulk call: less work a mail than
#: a handoff each. Intake commits under way are not counted: they come in bursts (one group
#: commit ends many), and after a slow ``fsync`` the mails refused a handoff then waited one
#: more writer round trip, which set the tail (``bench/README.md``, eighth and ninth rounds).
_HANDOFF_BELOW = 4
_PLAN_AHEAD = 0.05  # seconds of a provider's rate one claim may commit to before the calls


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
        owner: str | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.config = config
        self.settings = config.dispatcher
        self.store = store
        self.providers = providers
        self.clock = clock
        self.sleep = sleep
        self.rng = rng or random.Random()
        self.owner = owner or new_owner()
        self.metrics = metrics or Metrics(providers, config.accounts)
        self.policy = RetryPolicy(self.settings.max_age, self.settings.backoff_base, self.settings.backoff_max)
        self.throttles = Throttles.from_config(config, providers)
        self.breakers, self.limiters = self.throttles.breakers, self.throttles.limiters
        self._wake = asyncio.Event()
        self._slot = asyncio.Event()
        self._inflight: set[asyncio.Task] = set()
        self._handoffs: dict[asyncio.Task, int] = {}  # intake commits offered a handoff -> their numbers
        self.closing = False                  # shutdown began: no more handoffs
        self._calls: dict[int, str] = {}      # job id -> reference of the call on the wire
        self._recorded: dict[int, str] = {}   # job id -> reference recorded by the claim, not yet on the wire
        self._open_logged: dict[tuple[str, ...], float] = {}
        self.passes = 0                       # loop passes (a busy loop would show here)
        self._max_batch = max((p.capabilities.max_numbers for p in providers.values()), default=1)
        self._per_group = 1                   # jobs to claim per free slot (bulk mails: more)
        self._windowed = frozenset(login for login, windows in self.throttles.windows.items() if windows)

    async def load_windows(self) -> None:
        """Rebuild the per-account windows from what the store says was sent lately."""
        self.throttles.load_windows(await self.store.sent_times(self.clock() - 86400))

    def wake(self) -> None:
        """New work was committed: look for due jobs now rather than at the next poll."""
        self._wake.set()

    # --- jobs straight from intake ------------------------------------------------------

    async def commit(self, plan: Plan, now: float) -> Acceptance:
        """Commit a mail's plan (``Intake``'s commit in the daemon), handing its due jobs
        straight to this dispatcher while few calls are in flight (``_HANDOFF_BELOW``).

        The commit then records their call as a claim's plan would (``store.Handoff``): the
        call is made as soon as the commit is on disk, without a wake-up, a claim and its
        commit in between. Jobs the handoff leaves queued (a busy dispatcher, a rate window,
        quiet hours, a later ``date=``, an open circuit...) wake the loop, which claims them
        as before. The commit goes on if the caller is cancelled, and its jobs are taken
        all the same.
        """
        handoff = self._handoff(now)
        if handoff is None:
            result = await self.store.commit(plan, now)
            if result.job_ids:
                self.wake()
            return result
        task = asyncio.ensure_future(self.store.commit(plan, now, handoff))
        self._handoffs[task] = len(plan.jobs)  # a slot, and room at the providers' rates, held
        task.add_done_callback(self._adopt)
        return await asyncio.shield(task)

    def _handoff(self, now: float) -> Handoff | None:
        """An offer of one call (one slot held until the commit is done), or None when the
        dispatcher is busy (``_HANDOFF_BELOW`` calls in flight), out of slots or stopping."""
        if (self.closing or len(self._inflight) >= _HANDOFF_BELOW
                or len(self._inflight) + len(self._handoffs) >= self.settings.concurrency):
            return None
        return Handoff(self.owner, self.settings.lease, self._plan(now, 1))

    def _adopt(self, commit: asyncio.Task) -> None:
        """A commit offered a handoff is done (its caller may have been cancelled meanwhile):
        call what it recorded, give its slot back."""
        del self._handoffs[commit]
        self._slot.set()
        if commit.cancelled() or commit.exception() is not None:
            return  # nothing was committed; the caller has the error
        result = commit.result()
        if len(result.calling) < len(result.job_ids):
            self.wake()  # what the commit did not call: the loop claims it
        calls: dict[str | None, list[Job]] = {}
        for job in result.calling:
            calls.setdefault(job.client_ref, []).append(job)
            self._recorded[job.id] = job.client_ref
        for group in calls.values():
            self._start(group)

    def _start(self, group: list[Job]) -> None:
        """Process ``group`` in a task of its own, counted in flight."""
        task = asyncio.create_task(self.process(group), name=f"job-{group[0].id}")
        self._inflight.add(task)
        task.add_done_callback(self._done)

    # --- the loop ----------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Dispatch until ``stop`` is set. Errors propagate to the supervisor."""
        while not stop.is_set():
            self.passes += 1
            if len(self._inflight) + len(self._handoffs) >= self.settings.concurrency:
                self._slot.clear()
                await first_of(stop.wait(), self._slot.wait())
                continue
            paused = self.throttles.paused_until(self.clock())
            if paused is not None:  # every provider is down: nothing could go out before then
                await first_of(stop.wait(), timeout=max(0.0, paused - self.clock()))
                continue
            self._wake.clear()
            free = self.settings.concurrency - len(self._inflight) - len(self._handoffs)
            wanted = free * self._per_group
            jobs = await self._claim(wanted, free)
            called: dict[str | None, list[Job]] = {}  # recorded by the claim: one call each
            for job in jobs:
                if job.state is JobState.CALLING:
                    called.setdefault(job.client_ref, []).append(job)
            groups = list(called.values()) + sorted(
                self._groups([j for j in jobs if j.state is not JobState.CALLING]), key=lambda group: group[0].id)
            if len(groups) > free:  # more calls than free slots: the rest go back at once (never a recorded one)
                await self.store.settle_claimed(self.owner, [
                    Settlement(j.id, JobState.QUEUED, None, retry_at=self.clock())
                    for group in groups[free:] for j in group], self.clock())
                groups = groups[:free]
            if groups:  # claim as many jobs per call as the last claim grouped, up to bulk size
                self._per_group = max(1, min(self._max_batch, -(-len(jobs) // len(groups))))
            for group in groups:
                self._start(group)
            if len(jobs) < wanted and not self._wake.is_set():  # everything due is taken, and no
                timeout = await self._next_wait()                 # mail came since: sleep until woken or due
                await first_of(stop.wait(), self._wake.wait(), timeout=timeout)

    async def run_once(self, only: Sequence[int] = ()) -> int:
        """Claim what is due now (of ``only``), process it and wait for it (tests, the CLI)."""
        jobs = await self.store.claim(self.owner, self.clock(), max(len(only), self.settings.concurrency),
                                      self.settings.lease, only)
        await asyncio.gather(*(self.process(group) for group in self._groups(jobs)))
        return len(jobs)

    async def _claim(self, wanted: int, free: int) -> list[Job]:
        """Claim due jobs, recording at once the calls ``_plan`` allows (one write, not two)."""
        now = self.clock()
        claim = asyncio.ensure_future(
            self.store.claim(self.owner, now, wanted, self.settings.lease, plan=self._plan(now, free)))
        try:
            jobs = await asyncio.shield(claim)
        except asyncio.CancelledError:  # the write goes on: put back what it took, unsent
            with contextlib.suppress(Exception):  # a failed claim took nothing
                jobs = await claim
                self._recorded.update((j.id, j.client_ref) for j in jobs if j.state is JobState.CALLING)
                await asyncio.shield(self._interrupted(jobs))
            raise
        self._recorded.update((j.id, j.client_ref) for j in jobs if j.state is JobState.CALLING)
        return jobs

    def _plan(self, now: float, calls: int) -> CallPlan:
        """The calls a claim may record in its own write, so a job goes ``queued -> calling`` in
        one commit instead of two (claim, then start_call), still before the call is made.

        Only what the rest of the pass would surely call at once: up to ``calls`` calls, each
        one chunk of like jobs (``_groups``) with one route, to that route's first provider
        while its circuit is closed and its rate leaves room now (``_PLAN_AHEAD`` seconds of
        it); never a job that ``_screen`` could hold back (quiet hours, an opt-out since intake,
        an account with its own rate windows). Other claimed jobs take the usual way. The plan
        runs inside the claim's transaction (SQLite: on the writer thread), so it reads only
        the config, the providers' capabilities and this snapshot. The room that intake commits
        under way with a handoff (``commit``) may take, as many numbers as each mail has, is
        not given twice.
        """
        held = sum(self._handoffs.values())
        room = {name: max(1, int(self.limiters[name].rate * _PLAN_AHEAD)) - held for name in self.providers
                if self.breakers[name].state(now) is BreakerState.CLOSED and self.limiters[name].next_free(now) <= now}
        room = {name: left for name, left in room.items() if left > 0}
        windowed = self._windowed

        def plan(jobs: list[Job]) -> list[tuple[list[int], str, str]]:
            out: list[tuple[list[int], str, str]] = []
            for group in self._groups(jobs):
                routes: dict[tuple[str, ...], list[Job]] = {}
                for job in group:
                    if job.next_attempt_at <= now and self._plain(job, now, windowed):
                        names = self._route(job).names
                        if names and names[0] in room:
                            routes.setdefault(names, []).append(job)
                for names, same in routes.items():
                    for chunk in _chunks(same, self.providers[names[0]].capabilities.max_numbers):
                        if len(out) >= calls or room[names[0]] < len(chunk):
                            return out
                        room[names[0]] -= len(chunk)
                        out.append(([j.id for j in chunk], names[0], _reference(chunk[0])))
            return out

        return plan

    def _plain(self, job: Job, now: float, windowed: frozenset[str]) -> bool:
        """True when ``_screen`` would let ``job`` through at ``now`` without a window to count."""
        account = self.config.accounts.get(job.login)
        if account is None or job.suppressed or job.login in windowed:
            return False
        quiet = account.quiet_hours or self.config.quiet_hours
        return rules.quiet_release(quiet, job.category, now) is None

    def _done(self, task: asyncio.Task) -> None:
        self._inflight.discard(task)
        self._slot.set()
        if not task.cancelled() and task.exception() is not None:
            log.error("job_task_failed", task=task.get_name(), exc_info=task.exception())

    async def _next_wait(self) -> float:
        due = await self.store.next_due()
        if due is None:
            return self.settings.poll_interval
        return min(self.settings.poll_interval, max(0.0, due - self.clock()))

    async def shutdown(self) -> None:
        """Take no more handoffs and adopt those under way; wait ``grace_period`` for in-flight
        jobs, then cancel them (calls -> unknown)."""
        self.closing = True
        if self._handoffs:
            await asyncio.wait(list(self._handoffs), timeout=self.settings.grace_period)
        if not self._inflight:
            return
        done, pending = await asyncio.wait(set(self._inflight), timeout=self.settings.grace_period)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending, timeout=self.settings.grace_period)
        log.info("dispatcher_stopped", finished=len(done), cancelled=len(pending))

    def _groups(self, jobs: Sequence[Job]) -> list[list[Job]]:
        """Jobs that can share one provider call: same account, text, sender and options."""
        def key(job: Job) -> tuple:
            return (job.login, job.text, job.sender or "", job.low_cost, job.unicode, job.parts, job.category)

        ordered = sorted(jobs, key=lambda j: (key(j), j.id))
        return [list(group) for _, group in groupby(ordered, key=key)]

    # --- one group of jobs -------------------------------------------------------------

    async def process(self, jobs: Job | Sequence[Job]) -> None:
        """Deliver a group of like claimed jobs; record exactly one outcome for each."""
        jobs = [jobs] if isinstance(jobs, Job) else list(jobs)
        try:
            if jobs and jobs[0].state is JobState.CALLING:  # recorded by the claim: call at once
                await self._deliver(jobs, self._route(jobs[0]).names, recorded=jobs[0].client_ref)
                return
            jobs = await self._screen(jobs)
            routes: dict[tuple[str, ...], list[Job]] = {}
            for job in jobs:
                routes.setdefault(self._route(job).names, []).append(job)
            for names, same_route in routes.items():
                if not names:
                    reason = self._route(same_route[0]).explain()
                    await self._fail_claimed(same_route, f"no provider can send it: {reason}")
                else:
                    await self._deliver(same_route, names)
        except asyncio.CancelledError:
            await asyncio.shield(self._interrupted(jobs))
            raise

    async def _interrupted(self, jobs: list[Job]) -> None:
        """Cancelled: calls on the wire become unknown; jobs not yet called go back."""
        now = self.clock()
        on_wire: dict[str, list[int]] = {}
        for job in jobs:
            if job.id in self._calls:
                on_wire.setdefault(self._calls.pop(job.id), []).append(job.id)
        for ref, ids in on_wire.items():
            log.warning("jobs_interrupted_during_call", job_ids=ids, reference=ref)
            await self.store.settle_call(ref, [
                Settlement(i, JobState.UNKNOWN, "the bridge stopped during the call: it may have been sent; "
                           "to be reconciled") for i in ids], now)
        recorded: dict[str, list[int]] = {}
        for job in jobs:
            if job.id in self._recorded:
                recorded.setdefault(self._recorded.pop(job.id), []).append(job.id)
        for ref, ids in recorded.items():  # recorded by the claim, never sent: back to claimed
            await self.store.settle_call(ref, [Settlement(i, JobState.CLAIMED, "interrupted before sending")
                                               for i in ids], now, self.settings.lease)
        called = {i for ids in on_wire.values() for i in ids}
        back = [Settlement(j.id, JobState.QUEUED, "interrupted before sending", retry_at=now)
                for j in jobs if j.id not in called]
        await self.store.settle_claimed(self.owner, back, now)  # refused ids: already settled

    async def _screen(self, jobs: list[Job]) -> list[Job]:
        """Last checks: quiet hours (marketing), opt-outs since intake (read at the claim), the
        account's rate."""
        now = self.clock()
        kept, later, failed = [], [], []
        windows = self.throttles.windows.get(jobs[0].login, []) if jobs else []
        for job in jobs:
            account = self.config.accounts.get(job.login)
            quiet = (account.quiet_hours if account else None) or self.config.quiet_hours
            release = rules.quiet_release(quiet, job.category, now)
            reason = job.suppressed  # the opt-outs, read when the job was claimed
            when = max((w.next_free(now) for w in windows), default=now)
            if release is not None:
                later.append(Settlement(job.id, JobState.QUEUED, "quiet hours (marketing)", retry_at=release))
            elif reason:
                failed.append((job, reason))
            elif when > now:
                later.append(Settlement(job.id, JobState.QUEUED, "account rate limit", retry_at=when))
            else:
                for window in windows:
                    window.record(now)
                kept.append(job)
        if later:
            await self.store.settle_claimed(self.owner, later, now)
            log.info("jobs_deferred", job_ids=[s.job_id for s in later], reason=later[0].error)
        for job, reason in failed:
            await self._fail_claimed([job], reason, code=125)
        return kept

    def _route(self, job: Job) -> Route:
        account = self.config.accounts.get(job.login)
        if account is None:
            return Route((), (("-", "the account is no longer configured"),))
        return choose_route(
            account, self.providers, number=job.number, low_cost=job.low_cost,
            unicode=job.unicode, sender=job.sender, parts=job.parts,
        )

    async def _deliver(self, jobs: list[Job], route: tuple[str, ...], recorded: str | None = None) -> None:
        """Walk the route with the jobs not yet delivered; settle every job. ``recorded``: the
        reference of the first call, already recorded by the claim (one chunk, ``route[0]``)."""
        now = self.clock()
        if recorded is None and all(self.breakers[name].blocked(now) for name in route):
            await self._route_open(jobs, route, now)
            return
        pending, transient, errors = jobs, [], {job.id: [] for job in jobs}
        for index, name in enumerate(route):
            if not pending:
                return
            ref, recorded = recorded, None
            if not self.breakers[name].allow(self.clock()):
                if ref is not None:  # it opened since the claim: that call is not made
                    await self._uncall(ref, pending, f"{name}: circuit open")
                transient.append(TransientError("circuit open", provider=name))
                for job in pending:
                    errors[job.id].append(f"{name}: circuit open")
                continue
            has_next = index + 1 < len(route)
            left: list[Job] = []
            for i, chunk in enumerate(_chunks(pending, self.providers[name].capabilities.max_numbers)):
                if i and self.breakers[name].blocked(self.clock()):  # opened by an earlier chunk
                    left += chunk
                    transient.append(TransientError("circuit open", provider=name))
                    for job in chunk:
                        errors[job.id].append(f"{name}: circuit open")
                    continue
                left += await self._call(name, chunk, has_next, transient, errors, ref)
            pending = left
        if pending:  # still claimed: every provider said no for sure, or was open
            await self._after_route(pending, transient, errors)

    async def _route_open(self, jobs: list[Job], route: tuple[str, ...], now: float) -> None:
        """Every provider of the route is open: defer to the first reopening, in one write."""
        until = min(self.breakers[n].retry_at(now) for n in route)
        reason = f"circuit open on {', '.join(route)}"
        await self.store.settle_claimed(
            self.owner, [Settlement(j.id, JobState.QUEUED, reason, retry_at=until) for j in jobs], now)
        # With every provider down the loop pauses (no row is touched); else the accounts that
        # have no other way out wait, all their due jobs in one write.
        throttles = self.throttles
        logins = [] if throttles.paused_until(now) else sorted(
            {j.login for j in jobs if throttles.account_blocked(self.config.accounts.get(j.login), now)})
        deferred = await self.store.defer_logins(logins, until, reason, now) if logins else 0
        if now - self._open_logged.get(route, 0.0) >= self.settings.poll_interval * 30:
            self._open_logged[route] = now
            log.warning("route_open", route=list(route), deferred=len(jobs) + deferred, until=round(until, 1))

    async def _call(self, name: str, chunk: list[Job], has_next: bool, transient, errors,
                    ref: str | None = None) -> list[Job]:
        """One provider call for ``chunk`` (``ref``: already recorded by the claim); return the
        jobs to try at the next provider."""
        limiter = self.limiters[name]
        slot = limiter.next_free(self.clock())
        if slot - self.clock() > _MAX_WAIT:
            if ref is not None:
                await self._uncall(ref, chunk, f"{name}: rate limit")
            await self.store.settle_claimed(self.owner, [
                Settlement(j.id, JobState.QUEUED, f"{name}: rate limit", retry_at=slot) for j in chunk], self.clock())
            return []
        slot = limiter.take(self.clock(), len(chunk))  # a bulk call counts every number
        if slot > self.clock():
            await self.sleep(slot - self.clock())
        if ref is None:
            ref = _reference(chunk[0])
            ids = set(await self.store.start_call(self.owner, [j.id for j in chunk], name, ref, self.clock(),
                                                  self.settings.lease))
            chunk = [j for j in chunk if j.id in ids]  # a lost lease: not ours to send
            if not chunk:
                return []
        for job in chunk:
            self._recorded.pop(job.id, None)  # from here on the call is on the wire (below)
        first = chunk[0]
        sms = Sms(to=tuple(j.number for j in chunk), text=first.text, sender=first.sender,
                  low_cost=first.low_cost, unicode=first.unicode, parts=first.parts, reference=ref,
                  category=first.category)
        self._calls.update((j.id, ref) for j in chunk)
        started = time.perf_counter()
        try:
            receipt, error = await self.providers[name].send(sms), None
        except asyncio.CancelledError:
            raise  # the jobs stay in _calls: process() marks them unknown
        except Exception as exc:
            receipt, error = None, exc
        finally:
            self.metrics.call_took(name, time.perf_counter() - started)
        return await self._settle(name, ref, chunk, receipt, error, has_next, transient, errors)

    async def _settle(self, name, ref, chunk, receipt: Receipt | None, error, has_next, transient, errors):
        """Write the call's outcome for all its jobs in one write; the jobs left to route."""
        breaker, now = self.breakers[name], self.clock()
        kind = after_call(error, has_next=has_next)
        if kind is Next.SENT or (kind in (Next.FAILED, Next.NEXT_PROVIDER) and not isinstance(error, TransientError)):
            breaker.success()  # it answered: the provider is alive
        else:
            breaker.failure(now)
        items, left = [], []
        for job in chunk:
            if kind is Next.SENT:
                rejected = receipt.rejected.get(job.number) if receipt else None
                items.append(Settlement(job.id, JobState.FAILED, f"{name}: {rejected}",
                                        reply=self._status(job, 122, f"{name}: {rejected}")) if rejected
                             else Settlement(job.id, JobState.SENT, None, receipt.message_ids.get(job.number)))
            elif kind is Next.UNKNOWN:
                items.append(Settlement(job.id, JobState.UNKNOWN, self._unknown_note(name, error)))
            else:
                errors[job.id].append(f"{name}: {error}")
                if kind is Next.FAILED and not isinstance(error, TransientError) and (
                        isinstance(error, RecipientRefused) or not transient):
                    note = "; ".join(errors[job.id])[:500]
                    items.append(Settlement(job.id, JobState.FAILED, note, reply=self._status(job, 122, note)))
                else:
                    items.append(Settlement(job.id, JobState.CLAIMED, f"{name}: {error}"[:500]))
                    left.append(job)
        if isinstance(error, TransientError):
            transient.append(error)
        refused = await self.store.settle_call(ref, items, now, self.settings.lease)
        if isinstance(error, RecipientRefused) and error.opted_out:
            for job in chunk:  # the provider knows this person said STOP: so do we, from now on
                await self.store.optout_add(job.number, None, f"provider:{name}", now)
        self.metrics.settled(name, chunk, items, refused)
        for job in chunk:
            self._calls.pop(job.id, None)
        self._log_call(name, ref, chunk, kind, error, refused)
        return [job for job in left if job.id not in refused]

    async def _uncall(self, ref: str, jobs: list[Job], reason: str) -> None:
        """A call the claim recorded is not made after all: ``calling -> claimed`` (a definite
        non-delivery), so the jobs go on the usual way (next provider, or back to the queue)."""
        for job in jobs:
            self._recorded.pop(job.id, None)
        await self.store.settle_call(ref, [Settlement(j.id, JobState.CLAIMED, reason) for j in jobs],
                                     self.clock(), self.settings.lease)

    def _unknown_note(self, name: str, error: BaseException | None) -> str:
        """Why a job is unknown and what happens next (``queue list --state unknown``)."""
        if can_reconcile(self.providers[name]):
            then = f"it will be looked up at {name}"
        else:
            then = f"{name} offers no lookup: check with it, then `mail2sms queue retry` if it did not go out"
        return f"{_describe(error)[:300]}; {then}"

    async def _after_route(self, jobs: list[Job], transient, errors) -> None:
        """Jobs back in ``claimed`` after the whole route: retry later or fail, in one write."""
        now = self.clock()
        items = []
        for job in jobs:
            decision = after_route(transient, attempts=job.attempts + 1, created_at=job.created_at,
                                   now=now, policy=self.policy, rng=self.rng)
            note = "; ".join(errors[job.id])[:500]
            if decision.kind is Next.RETRY:
                items.append(Settlement(job.id, JobState.QUEUED, note, retry_at=decision.retry_at))
            else:
                items.append(Settlement(job.id, JobState.FAILED, note, reply=self._status(job, 122, note)))
        await self.store.settle_claimed(self.owner, items, now)
        self.metrics.settled(None, jobs, items)
        retry = [i for i in items if i.state is JobState.QUEUED]
        if retry:
            log.info("retry_scheduled", job_ids=[i.job_id for i in retry],
                     delay=round(min(i.retry_at for i in retry) - now, 1), error=retry[0].error)
        for item in items:
            if item.state is JobState.FAILED:
                log.warning("job_failed", job_id=item.job_id, error=item.error)

    def _log_call(self, name, ref, chunk, kind: Next, error, refused) -> None:
        ids = [j.id for j in chunk]
        if refused:
            log.warning("settle_refused", provider=name, reference=ref, job_ids=refused)
        if kind is Next.SENT:
            log.info("sent", job_ids=ids, provider=name, reference=ref, message_id=chunk[0].message_id)
        elif kind is Next.UNKNOWN and not isinstance(error, ProviderError):  # a bug in provider code
            log.error("provider_crashed", job_ids=ids, provider=name, reference=ref, exc_info=error)
        elif kind is Next.UNKNOWN:
            log.warning("job_unknown", job_ids=ids, provider=name, reference=ref, error=str(error))
        else:
            log.info("provider_refused", job_ids=ids, provider=name, error=str(error), next=kind.value)

    async def _fail_claimed(self, jobs: list[Job], error: str, code: int = 122) -> None:
        items = [Settlement(j.id, JobState.FAILED, error, reply=self._status(j, code, error)) for j in jobs]
        await self.store.settle_claimed(self.owner, items, self.clock())
        self.metrics.settled(None, jobs, items)
        log.warning("job_failed", job_ids=[j.id for j in jobs], error=error, status=code)

    def _status(self, job: Job, code: int, note: str):
        return status_mail.for_job(job, code, note, self.config)

def _describe(error: BaseException | None) -> str:
    if error is None:
        return ""
    if isinstance(error, ProviderError):
        return str(error)
    return f"{type(error).__name__}: {error}"


def _reference(job: Job) -> str:
    """The client reference of the next call for ``job`` (and its chunk), as claimed."""
    return f"m2s-{job.id}-{job.attempts + 1}"


def _chunks(jobs: list[Job], size: int) -> list[list[Job]]:
    size = max(1, size)
    return [jobs[i:i + size] for i in range(0, len(jobs), size)]
