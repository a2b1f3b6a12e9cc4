"""The bridge's Prometheus metrics, in a registry of its own (never the global one).

Every ``Bridge`` owns one ``Metrics``: tests can run several bridges in one process, and
nothing a library registers globally leaks into ``/metrics``. The code that does the work
calls one method per event (``mail``, ``settled``, ``timed``, ``reply``, ``report``);
what only the store or the dispatcher knows (jobs per state, balances, circuit
breakers, loop heartbeats) is read at scrape time by ``refresh``, the store part
cached for ``cache`` seconds so a scraper hammering ``/metrics`` costs the store little.

Names (all prefixed ``mail2sms_``; counters end in ``_total`` on the wire):

===============================  =======================  ==================================
metric                           labels                   meaning
===============================  =======================  ==================================
mails_total                      ingress, outcome         accepted, refused, duplicate, unavailable (451)
mail_statuses_total              status                   numbered statuses told (100, 113, 104, ...)
sms_total                        provider, outcome        per job and call: sent, not_delivered
                                                          (next provider or retry), unknown, failed
                                                          (provider ``none``: given up without a call)
sms_parts_total                  provider                 parts of the SMS a provider accepted
provider_call_seconds            provider                 histogram of provider call durations
credits_spent_total              account                  credits debited at intake
credits_refunded_total           account                  credits given back for failed jobs
credits_balance                  account                  balance in the store (scrape time)
jobs                             state                    jobs in the store per state (scrape time)
circuit_state                    provider                 0 closed, 1 half-open, 2 open
replies_total                    result                   status mails sent, retried, failed
replies_queued                   -                        status mails waiting in the store
delivery_reports_total           provider, result         delivered, undelivered, ignored (intermediate
                                                          status), not_applied (already final),
                                                          unknown_message, malformed, forbidden
imap_pushes_total                mailbox, result          pushes from the IMAP server: woken, standby
                                                          (another bridge polls it), forbidden
loop_beat_age_seconds            loop                     seconds since a supervised loop made progress
ready                            -                        1 when ``/readyz`` would answer 200
===============================  =======================  ==================================
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics, generate_latest

from bridge.errors import StoreError
from bridge.model import Job, JobState, Settlement
from bridge.statuses import CATALOGUE

if TYPE_CHECKING:
    from bridge.intake import Outcome
    from bridge.limits import CircuitBreaker
    from bridge.store import Store

# No ``*_created`` series: they double the output and no dashboard or alert here reads them.
disable_created_metrics()

#: The classic text format, which every Prometheus version (and most agents) reads.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
INGRESSES = ("smtp", "imap", "cli")
MAIL_OUTCOMES = ("accepted", "refused", "duplicate", "unavailable")
SMS_OUTCOMES = ("sent", "not_delivered", "unknown", "failed")
REPLY_RESULTS = ("sent", "retried", "failed")
REPORT_RESULTS = ("delivered", "undelivered", "ignored", "not_applied", "unknown_message", "malformed", "forbidden")
PUSH_RESULTS = ("woken", "standby", "forbidden")
INBOUND_KINDS = ("reply", "stop", "start", "unmatched", "duplicate", "part", "malformed", "forbidden")
NO_PROVIDER = "none"                      # jobs given up on without (or after) a call
BREAKER_VALUES = {"closed": 0, "half_open": 1, "open": 2}
_LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
#: Settlement state of a provider call -> the ``outcome`` label of ``sms_total``.
_CALL_OUTCOME = {
    JobState.SENT: "sent",
    JobState.CLAIMED: "not_delivered",
    JobState.QUEUED: "not_delivered",
    JobState.UNKNOWN: "unknown",
    JobState.FAILED: "failed",
}


class Metrics:
    """Every metric of one bridge, and the calls that move them."""

    def __init__(
        self,
        providers: Iterable[str] = (),
        accounts: Iterable[str] = (),
        cache: float = 2.0,
        clock=time.monotonic,
        mailboxes: Iterable[str] = (),
    ) -> None:
        self.registry = r = CollectorRegistry()
        self.cache = cache
        self.clock = clock
        self._store_read_at: float | None = None
        self.mails = Counter("mail2sms_mails", "Mails handled by intake.", ["ingress", "outcome"], registry=r)
        self.statuses = Counter("mail2sms_mail_statuses", "Numbered statuses told about mails.", ["status"],
                                registry=r)
        self.sms = Counter("mail2sms_sms", "SMS job outcomes, per provider call.", ["provider", "outcome"],
                           registry=r)
        self.parts = Counter("mail2sms_sms_parts", "SMS parts accepted by providers.", ["provider"], registry=r)
        self.latency = Histogram("mail2sms_provider_call_seconds", "Provider call durations.", ["provider"],
                                 buckets=_LATENCY_BUCKETS, registry=r)
        self.spent = Counter("mail2sms_credits_spent", "Credits debited at intake.", ["account"], registry=r)
        self.refunded = Counter("mail2sms_credits_refunded", "Credits refunded for failed jobs.", ["account"],
                                registry=r)
        self.balance = Gauge("mail2sms_credits_balance", "Credit balance per account.", ["account"], registry=r)
        self.jobs = Gauge("mail2sms_jobs", "Jobs in the store per state.", ["state"], registry=r)
        self.circuit = Gauge("mail2sms_circuit_state", "Circuit breaker: 0 closed, 1 half-open, 2 open.",
                             ["provider"], registry=r)
        self.replies = Counter("mail2sms_replies", "Status mails handed to the relay, by result.", ["result"],
                               registry=r)
        self.replies_queued = Gauge("mail2sms_replies_queued", "Status mails waiting to be sent.", registry=r)
        self.reports = Counter("mail2sms_delivery_reports", "Delivery reports received, by result.",
                               ["provider", "result"], registry=r)
        self.inbound = Counter("mail2sms_inbound_sms", "SMS received from phones (replies, STOP, START), by kind.",
                               ["provider", "kind"], registry=r)
        self.imap_pushes = Counter("mail2sms_imap_pushes", "Pushes from the IMAP server, by result.",
                                   ["mailbox", "result"], registry=r)
        self.loop_age = Gauge("mail2sms_loop_beat_age_seconds", "Seconds since a supervised loop made progress.",
                              ["loop"], registry=r)
        self.ready = Gauge("mail2sms_ready", "1 when the bridge is ready (as /readyz).", registry=r)
        self._children: dict[tuple, Any] = {}
        self._zero(list(providers), list(accounts), list(mailboxes))

    def _of(self, metric: Any, *values: str) -> Any:
        """``metric.labels(*values)``, looked up once (prometheus_client takes a lock and
        checks the values on every ``labels`` call; a mail moves half a dozen series)."""
        key = (id(metric), values)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*values)
        return child

    def _zero(self, providers: list[str], accounts: list[str], mailboxes: list[str]) -> None:
        """Create the known label sets at 0, so rates and dashboards work before the first event."""
        for ingress in INGRESSES:
            for outcome in MAIL_OUTCOMES:
                self._of(self.mails, ingress, outcome)
        for provider in [*providers, NO_PROVIDER]:
            for outcome in SMS_OUTCOMES:
                self._of(self.sms, provider, outcome)
        for provider in providers:
            self._of(self.parts, provider)
            self._of(self.latency, provider)
            for result in REPORT_RESULTS:
                self._of(self.reports, provider, result)
            for kind in INBOUND_KINDS:
                self._of(self.inbound, provider, kind)
        for account in accounts:
            self._of(self.spent, account)
            self._of(self.refunded, account)
        for code in CATALOGUE:
            self._of(self.statuses, str(code))
        for result in REPLY_RESULTS:
            self._of(self.replies, result)
        for state in JobState:
            self._of(self.jobs, state.value)
        for mailbox in mailboxes:
            for result in PUSH_RESULTS:
                self._of(self.imap_pushes, mailbox, result)

    # --- events, one call each from the code that does the work ---------------------------

    def mail(self, ingress: str, outcome: Outcome, login: str | None = None, spent: int = 0) -> None:
        """Intake handled one mail; ``spent`` credits were debited when it was accepted."""
        if outcome.duplicate:
            self._of(self.mails, ingress, "duplicate").inc()
            return
        self._of(self.mails, ingress, "accepted" if outcome.accepted else "refused").inc()
        if outcome.status:
            self._of(self.statuses, str(outcome.status)).inc()
        if outcome.accepted and login and spent:
            self._of(self.spent, login).inc(spent)

    def unavailable(self, ingress: str) -> None:
        """Intake refused a mail for now (SMTP 451): a loop died, or the bridge is stopping."""
        self._of(self.mails, ingress, "unavailable").inc()

    def call_took(self, provider: str, seconds: float) -> None:
        """One provider call took ``seconds`` (whatever its outcome)."""
        self._of(self.latency, provider).observe(seconds)

    def settled(self, provider: str | None, jobs: Sequence[Job], items: Sequence[Settlement],
                refused: Sequence[int] = ()) -> None:
        """Outcomes written for ``jobs``: of a call to ``provider``, or (None) decided without one.

        Without a provider only ``failed`` counts (a retry later was already counted as
        ``not_delivered`` at the call). Jobs in ``refused`` (the store's CAS said no) count
        nothing: another writer settled them.
        """
        by_id = {job.id: job for job in jobs}
        skipped = set(refused)
        outcomes: dict[str, int] = {}
        parts = 0
        refunds: dict[str, int] = {}
        for item in items:
            job = by_id.get(item.job_id)
            if job is None or item.job_id in skipped:
                continue
            if provider is None and item.state is not JobState.FAILED:
                continue
            outcome = _CALL_OUTCOME.get(item.state)
            if outcome is None:
                continue
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
            if item.state is JobState.SENT and provider:
                parts += job.parts
            elif item.state is JobState.FAILED and job.cost:
                refunds[job.login] = refunds.get(job.login, 0) + job.cost
        # added up first: a bulk call settles hundreds of jobs, each series moves once
        for outcome, count in outcomes.items():
            self._of(self.sms, provider or NO_PROVIDER, outcome).inc(count)
        if parts:
            self._of(self.parts, provider).inc(parts)
        for login, cost in refunds.items():
            self._of(self.refunded, login).inc(cost)

    def reply(self, result: str) -> None:
        """One status mail handed to the relay: ``sent``, ``retried`` (later) or ``failed``."""
        self._of(self.replies, result).inc()

    def report(self, provider: str, result: str) -> None:
        """One delivery report received from ``provider`` (see ``REPORT_RESULTS``)."""
        self._of(self.reports, provider, result).inc()

    def inbound_sms(self, provider: str, kind: str) -> None:
        """One SMS received from a phone through ``provider`` (see ``INBOUND_KINDS``)."""
        self._of(self.inbound, provider, kind).inc()

    def imap_push(self, mailbox: str, result: str) -> None:
        """One push from the IMAP server for ``imap.<mailbox>``: woken, standby or forbidden."""
        self._of(self.imap_pushes, mailbox, result).inc()

    # --- scrape time -------------------------------------------------------------------

    async def refresh(self, store: Store | None, breakers: Mapping[str, CircuitBreaker],
                      loop_ages: Mapping[str, float], ready: bool, now: float) -> None:
        """Read what only the store, the breakers and the supervisor know.

        The store is read at most once per ``cache`` seconds; a store that does not answer
        leaves the last values (``/readyz`` and ``mail2sms_ready`` say it is down).
        """
        for name, breaker in breakers.items():
            self._of(self.circuit, name).set(BREAKER_VALUES[breaker.state(now).value])
        for name, age in loop_ages.items():
            self._of(self.loop_age, name).set(round(age, 3))
        self.ready.set(1 if ready else 0)
        stamp = self.clock()
        if store is None or (self._store_read_at is not None and stamp - self._store_read_at < self.cache):
            return
        self._store_read_at = stamp
        try:
            counts = await store.count_jobs()
            balances = await store.balances()
            queued = await store.count_replies("queued")
        except StoreError:
            return
        for state in JobState:
            self._of(self.jobs, state.value).set(counts.get(state.value, 0))
        for login, credits in balances.items():
            self._of(self.balance, login).set(credits)
        self.replies_queued.set(queued)

    def render(self) -> bytes:
        """The text exposition format of every metric."""
        return generate_latest(self.registry)
