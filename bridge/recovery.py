"""Recovery, run by every instance: expired leases end, ``unknown`` jobs are settled.

- ``sweep``: a ``claimed`` job whose lease expired (its call never started) goes back to
  ``queued``; a ``calling`` one becomes ``unknown``. Leases of a dead bridge on this host
  (its process is gone) end at once, so a restart after ``kill -9`` does not wait for them.
- ``reconcile``: each ``unknown`` job whose call is ``reconcile_after`` old is looked up at
  its provider with the reference recorded before the call (or the message id, or number
  and time, as the API allows): sent or delivered -> ``sent``; failed, or never received
  -> ``failed`` (refunded, status 122). What a provider cannot tell stays ``unknown``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

import structlog

from bridge import status_mail
from bridge.config import Config
from bridge.leases import dead_owners
from bridge.metrics import Metrics
from bridge.model import Job, JobState, Settlement
from bridge.providers.base import Provider, Sms, can_reconcile
from bridge.store import Store

log = structlog.get_logger("bridge.recovery")


class Recovery:
    """The sweep and the reconciler of one bridge instance."""

    def __init__(
        self,
        config: Config,
        store: Store,
        providers: Mapping[str, Provider],
        owner: str,
        clock: Callable[[], float] = time.time,
        wake: Callable[[], None] = lambda: None,
        metrics: Metrics | None = None,
    ) -> None:
        self.config = config
        self.settings = config.dispatcher
        self.store = store
        self.providers = providers
        self.owner = owner
        self.clock = clock
        self.wake = wake
        self.metrics = metrics or Metrics(providers, config.accounts)
        self._after = 0

    async def sweep(self) -> tuple[list[int], list[int]]:
        """End expired leases (and those of dead bridges on this host)."""
        dead = dead_owners(await self.store.lease_owners(), self.owner)
        requeued, unknown = await self.store.sweep(self.clock(), dead)
        if requeued or unknown:
            log.warning("leases_expired", requeued=requeued, unknown=unknown, dead_owners=dead)
            if requeued:
                self.wake()
        return requeued, unknown

    async def reconcile(self, limit: int = 50) -> int:
        """Ask providers about ``unknown`` jobs; settle those they can tell. Returns how many."""
        settled = 0
        jobs = await self.store.unknown_jobs(self.clock() - self.settings.reconcile_after, limit, self._after)
        # A cursor over the ids, so jobs no provider can settle never hide the others.
        self._after = jobs[-1].id if len(jobs) == limit else 0
        for job in jobs:
            settled += await self._reconcile(job)
        return settled

    async def _reconcile(self, job: Job) -> int:
        provider = self.providers.get(job.provider or "")
        if provider is None or not job.client_ref or not can_reconcile(provider):
            return 0
        sms = Sms(to=(job.number,), text=job.text, sender=job.sender, parts=job.parts,
                  unicode=job.unicode, low_cost=job.low_cost, reference=job.client_ref, category=job.category)
        try:
            found = await provider.reconcile(sms, job.called_at or job.created_at, job.provider_message_id)
        except Exception as exc:  # a failed lookup changes nothing
            log.info("reconcile_failed", job_id=job.id, provider=job.provider, error=str(exc))
            return 0
        if found is None:
            return 0
        state, provider_id = found
        if state in ("delivered", "sent"):
            item = Settlement(job.id, JobState.SENT, None, provider_id)
        elif state in ("failed", "not_found"):
            note = f"{job.provider}: " + ("not delivered (reconciled)" if state == "failed"
                                          else "the provider never received it (reconciled)")
            item = Settlement(job.id, JobState.FAILED, note, reply=status_mail.for_job(job, 122, note, self.config))
        else:
            return 0
        refused = await self.store.settle_call(job.client_ref, [item], self.clock())
        self.metrics.settled(job.provider, [job], [item], refused)
        log.info("job_reconciled", job_id=job.id, provider=job.provider, state=state, applied=not refused)
        return 0 if refused else 1
