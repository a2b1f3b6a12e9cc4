"""Intake: one raw mail -> a plan (``decide``, pure) -> one commit in the store.

Shared by the SMTP listener, the IMAP poller and ``mail2sms send``. In the daemon the
commit goes through the dispatcher (``Dispatcher.commit``), which may take the mail's jobs
straight from it. The ingress adapter turns the ``Outcome`` into its own answer (an SMTP
reply, an IMAP move). ``submit`` raises ``StoreError`` when nothing was committed (SMTP then
answers 451 and the sending MTA keeps the mail), including while the daemon refuses mail
because a background loop died.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import structlog

from bridge.config import Config
from bridge.decide import Decision, Envelope, decide
from bridge.errors import StoreError
from bridge.mail import parse_mail
from bridge.metrics import Metrics
from bridge.model import Acceptance, Plan
from bridge.statuses import status_text
from bridge.store import Store

__all__ = ["Envelope", "Intake", "Outcome", "Unavailable"]

log = structlog.get_logger("bridge.intake")


class Unavailable(StoreError):
    """The bridge is not taking mail now (shutting down, or a loop that cannot recover)."""


@dataclass(frozen=True)
class Outcome:
    """What happened to one mail; the ingress adapter turns it into its own answer."""

    status: int                               # 100/101 accepted, else the status told
    text: str                                 # the status text in English
    job_ids: tuple[int, ...] = ()
    duplicate: bool = False
    note: str = ""
    no_reply: str | None = None               # why no status mail may go to the sender, if so

    @property
    def accepted(self) -> bool:
        """True when SMS jobs were committed (possibly with status 113 for some numbers)."""
        return bool(self.job_ids)


class Intake:
    """Turns raw mails into committed jobs and replies."""

    def __init__(
        self,
        config: Config,
        store: Store,
        clock: Callable[[], float] = time.time,
        commit: Callable[[Plan, float], Awaitable[Acceptance]] | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.config = config
        self.clock = clock
        # The daemon's: the dispatcher's, which takes the jobs (``Dispatcher.commit``).
        self.commit = commit or store.commit
        self.refusing: str | None = None
        self.metrics = metrics or Metrics()

    def refuse(self, reason: str) -> None:
        """From now on ``submit`` raises ``Unavailable`` (SMTP 451): nothing is accepted."""
        self.refusing = reason

    async def submit(self, raw: bytes, envelope: Envelope, inline: bool = False) -> Outcome:
        """Decide and commit one mail; raises ``StoreError`` if nothing was committed.

        With ``inline`` the caller reports failures itself (SMTP ``550``), so no status
        mail is queued for them.
        """
        if self.refusing is not None:
            self.metrics.unavailable(envelope.source)
            raise Unavailable(self.refusing)
        now = self.clock()
        decision = decide(parse_mail(raw, envelope.mail_from or None), envelope, self.config, now, inline)
        result = await self.commit(decision.plan, now)
        outcome = _report(decision, envelope, result)
        self.metrics.mail(envelope.source, outcome, decision.plan.login, result.used)
        return outcome


def _report(decision: Decision, envelope: Envelope, result: Acceptance) -> Outcome:
    """Log what happened and say it to the ingress adapter."""
    verdict = decision.verdict
    bound = log.bind(message_id=verdict.mail.message_id, source=envelope.source)
    if result.outcome == "duplicate":
        bound.info("duplicate_dropped")
        return Outcome(0, "duplicate: already received", duplicate=True)
    if verdict.error is not None:
        code, note = verdict.error.code, verdict.error.note
        bound.info("rejected", status=code, reply_suppressed=decision.no_reply)
        return Outcome(code, status_text(code, "en"), note=note, no_reply=decision.no_reply)
    if result.outcome == "insufficient_credit":
        details = {"used": result.used, "available": result.available}
        bound.info("rejected", status=104, **details)
        return Outcome(104, status_text(104, "en", **details), no_reply=decision.no_reply)
    for item in result.refused:
        if item.code != 113:
            bound.info("number_refused", number=item.number, status=item.code, reason=item.reason)
    if result.job_ids:
        bound.info("accepted", login=verdict.account.login, jobs=len(result.job_ids),
                   first_job=result.job_ids[0], status=result.status)
    else:
        bound.info("rejected", status=result.status, note=result.note)
    return Outcome(result.status, status_text(result.status, "en"), result.job_ids, note=result.note,
                   no_reply=decision.no_reply)
