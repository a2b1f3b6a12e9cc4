"""The values the pipeline passes around, and the one job state machine.

Pure data: nothing here does I/O. The store persists these, intake's decision produces
``Plan`` values, the dispatcher reads ``Job`` values and settles them.

The life of one SMS job (every change is a compare-and-set on the state it leaves)::

    queued ──claim (lease)──> claimed ──record provider + reference──> calling
    claimed ──defer, shutdown, lease expired before the call──> queued
    claimed ──refused before any call (opt-out, no route, too old)──> failed
    calling ──receipt──> sent ──delivery report──> delivered | undelivered
    calling ──definite non-delivery──> claimed (next provider) | queued (retry at T) | failed
    calling ──ambiguous answer, or lease expired (crash)──> unknown
    unknown ──reconcile──> sent | failed      (operator: queued, accepting a duplicate)
    queued ──operator──> cancelled            failed ──operator──> queued

A job that may have reached a provider (``calling``, ``unknown``, ``sent``, ...) never
goes back to ``queued`` by itself.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, fields
from enum import Enum
from typing import Any

from bridge.errors import BridgeError


class JobState(str, Enum):
    """Where an SMS job is."""

    QUEUED = "queued"
    CLAIMED = "claimed"
    CALLING = "calling"
    SENT = "sent"
    DELIVERED = "delivered"
    UNDELIVERED = "undelivered"
    UNKNOWN = "unknown"
    FAILED = "failed"
    CANCELLED = "cancelled"


S = JobState

#: Every allowed transition: state -> the states it may move to.
TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    S.QUEUED: frozenset({S.CLAIMED, S.CANCELLED}),
    S.CLAIMED: frozenset({S.QUEUED, S.CALLING, S.FAILED}),
    S.CALLING: frozenset({S.SENT, S.CLAIMED, S.QUEUED, S.FAILED, S.UNKNOWN, S.DELIVERED, S.UNDELIVERED}),
    S.UNKNOWN: frozenset({S.SENT, S.FAILED, S.QUEUED, S.DELIVERED, S.UNDELIVERED}),
    S.SENT: frozenset({S.DELIVERED, S.UNDELIVERED}),
    S.FAILED: frozenset({S.QUEUED}),
    S.DELIVERED: frozenset(),
    S.UNDELIVERED: frozenset(),
    S.CANCELLED: frozenset(),
}

#: The states from which each outcome of a provider call may be written: a late answer
#: still settles a job the sweep marked ``unknown``; a retry or the next provider only
#: follows a call still on record.
CALL_OUTCOME_SOURCES: dict[JobState, frozenset[JobState]] = {
    S.SENT: frozenset({S.CALLING, S.UNKNOWN}),
    S.FAILED: frozenset({S.CALLING, S.UNKNOWN}),
    S.DELIVERED: frozenset({S.CALLING, S.UNKNOWN, S.SENT}),
    S.UNDELIVERED: frozenset({S.CALLING, S.UNKNOWN, S.SENT}),
    S.CLAIMED: frozenset({S.CALLING}),
    S.QUEUED: frozenset({S.CALLING}),
    S.UNKNOWN: frozenset({S.CALLING}),
}

#: States a job never leaves by itself (only an operator's command moves them).
TERMINAL = frozenset({S.SENT, S.DELIVERED, S.UNDELIVERED, S.FAILED, S.CANCELLED})


class ReplyState(str, Enum):
    """Where a status mail is: queued (retried with backoff), then sent or failed."""

    QUEUED = "queued"
    SENT = "sent"
    FAILED = "failed"


class IllegalTransition(BridgeError):
    """A state change the table does not allow: a bug, never applied."""

    def __init__(self, source: JobState, target: JobState) -> None:
        super().__init__(f"illegal job transition {source.value} -> {target.value}")
        self.source, self.target = source, target


def check_transition(sources: frozenset[JobState] | JobState, target: JobState) -> frozenset[JobState]:
    """The sources as a set, once every ``source -> target`` is in the table; raises otherwise."""
    sources = frozenset({sources}) if isinstance(sources, JobState) else frozenset(sources)
    for source in sources:
        if target not in TRANSITIONS[source]:
            raise IllegalTransition(source, target)
    return sources


@dataclass(frozen=True)
class NewJob:
    """An SMS job to create at intake."""

    number: str
    text: str
    sender: str | None
    parts: int
    cost: int
    unicode: bool = False
    low_cost: bool = False
    send_at: float | None = None              # epoch seconds; None: now
    category: str = "transactional"           # or "marketing" (quiet hours, STOP)


@dataclass(frozen=True)
class NewReply:
    """A numbered status to mail back."""

    to: str
    code: int
    message: bytes                             # the whole RFC 5322 message
    max_per_hour: int = 0                      # drop it past this many to ``to``'s mailbox (0: no cap)
    max_per_domain_per_hour: int = 0           # ... or to ``to``'s domain (0: no cap)
    max_total_per_hour: int = 0                # ... or past this many to anyone (0: no cap)


@dataclass(frozen=True)
class Job:
    """An SMS job as stored."""

    id: int
    login: str
    number: str
    text: str
    sender: str | None
    parts: int
    cost: int
    unicode: bool
    low_cost: bool
    state: JobState
    attempts: int
    created_at: float
    next_attempt_at: float
    provider: str | None = None
    provider_message_id: str | None = None
    last_error: str | None = None
    message_id: str | None = None              # the mail's Message-ID, for replies
    reply_to: str | None = None                # where the sender's statuses go
    category: str = "transactional"
    client_ref: str | None = None              # our reference, sent to the provider
    called_at: float | None = None             # when the last provider call started
    suppressed: str | None = None              # set at claim: why the number may not be texted now
    subject: str | None = None                 # the mail's subject, API key hidden (threaded mails)

    @classmethod
    def of(cls, values: Iterable[Any]) -> Job:
        """The job of every field's value in field order, built without running ``__init__``:
        a frozen dataclass sets each of its 23 fields through ``object.__setattr__`` (3.5 us
        against 1.5 us), and a claim makes one or two jobs per row, hundreds for a bulk mail."""
        job = object.__new__(cls)
        job.__dict__.update(zip(_JOB_FIELDS, values, strict=True))
        return job

    def calling(self, provider: str, client_ref: str) -> Job:
        """This job as its call was recorded (``claimed -> calling``): what ``dataclasses.replace``
        gives, built as ``of`` builds a job (a claim makes one per job called)."""
        job = object.__new__(Job)
        job.__dict__.update(self.__dict__, state=JobState.CALLING, provider=provider, client_ref=client_ref)
        return job


_JOB_FIELDS = tuple(f.name for f in fields(Job))


@dataclass(frozen=True)
class Reply:
    """A reply as stored."""

    id: int
    to: str
    code: int
    message: bytes
    attempts: int
    created_at: float


@dataclass(frozen=True)
class Refusal:
    """A number of the mail that gets no SMS, with the status that explains why."""

    number: str
    code: int                                  # 113 invalid, 125 opted out, 126 country, 127 cap
    reason: str


@dataclass(frozen=True)
class Limits:
    """Anti-pumping caps checked inside the commit (None: no cap)."""

    per_number_per_hour: int | None = None
    sms_per_day: int | None = None
    spend_per_day: int | None = None


@dataclass(frozen=True)
class Counts:
    """What the store reads in the commit's transaction for the rules to decide on."""

    optouts: frozenset[tuple[str, str]] = frozenset()   # (number, sender or "") suppressed
    per_number_hour: dict[str, int] = field(default_factory=dict)
    sms_today: int = 0
    spent_today: int = 0


@dataclass(frozen=True)
class StatusRecipe:
    """How to mail this request's outcome-dependent status (composed in the commit)."""

    to: str
    sender: str                                # the bridge's From address
    language: str
    in_reply_to: str | None
    references: tuple[str, ...]
    received: tuple[tuple[str, str], ...]      # (label, value) lines echoed in the body
    max_per_hour: int
    max_per_domain_per_hour: int
    max_total_per_hour: int
    receipts: bool                             # also mail 100/101


@dataclass(frozen=True)
class Acceptance:
    """What the commit did: ``accepted``, ``rejected``, ``duplicate`` or ``insufficient_credit``."""

    outcome: str
    job_ids: tuple[int, ...] = ()
    used: int = 0
    available: int = 0
    refused: tuple[Refusal, ...] = ()
    status: int = 0                            # the status told (100, 101, 113, 125...)
    note: str = ""
    calling: tuple[Job, ...] = ()              # jobs whose call the commit recorded (a handoff)


@dataclass(frozen=True)
class Plan:
    """Intake's decision for one mail, before the commit; the store applies it."""

    key: str | None                            # idempotency key; None: never deduplicated
    login: str | None
    message_id: str | None
    reply_to: str | None                       # where later job statuses go (None: nowhere)
    summary: str                               # the subject with the API key redacted
    jobs: Sequence[NewJob] = ()
    replies: Sequence[NewReply] = ()           # statuses decided before the commit
    extra_keys: tuple[str, ...] = ()           # more keys meaning "the same mail" (IMAP UID)
    refused: tuple[Refusal, ...] = ()          # numbers refused before the commit
    sender: str | None = None                  # the SMS sender, for per-sender opt-outs
    limits: Limits = Limits()
    status: StatusRecipe | None = None         # None: this mail may not be answered


@dataclass(frozen=True)
class Settlement:
    """One job's outcome, written with the others of the same call in one transaction.

    ``state`` is ``sent``, ``claimed`` (try the next provider), ``queued`` (retry at
    ``retry_at``), ``failed`` (refunded; ``reply`` queued) or ``unknown``.
    """

    job_id: int
    state: JobState
    error: str | None = None
    provider_message_id: str | None = None
    retry_at: float | None = None
    reply: NewReply | None = None
