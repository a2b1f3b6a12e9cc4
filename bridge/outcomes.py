"""The dispatcher's one decision, pure: what a provider call's result means for a job.

    Receipt                         -> sent (a number the receipt rejects: failed)
    TransientError (or open circuit)-> next provider | retry at T | failed (too old)
    PermanentError                  -> next provider | failed
    PermanentError for the recipient (opted out, barred) -> failed, never another provider
    AmbiguousError, any other error -> unknown (may be out: never re-sent blindly)

Retries wait ``exponential_backoff(attempts)`` or the longest ``Retry-After`` a provider
asked for, whichever is longer, until the job is ``max_age`` old.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum

from bridge.backoff import exponential_backoff
from bridge.errors import AmbiguousError, PermanentError, RecipientRefused, TransientError


class Next(str, Enum):
    """What happens to a job after one call (or after its whole route)."""

    SENT = "sent"
    NEXT_PROVIDER = "next_provider"
    RETRY = "retry"
    UNKNOWN = "unknown"
    FAILED = "failed"


@dataclass(frozen=True)
class RetryPolicy:
    """How long and how often a job that was definitely not delivered is retried."""

    max_age: float = 86400.0
    backoff_base: float = 5.0
    backoff_max: float = 900.0


@dataclass(frozen=True)
class Decision:
    """``kind``, and for ``RETRY`` when."""

    kind: Next
    retry_at: float | None = None


def after_call(error: BaseException | None, *, has_next: bool) -> Next:
    """The fate of a call's jobs from its error (None: a receipt), route aside from retries."""
    if error is None:
        return Next.SENT
    if isinstance(error, PermanentError):
        if isinstance(error, RecipientRefused) or not has_next:
            return Next.FAILED
        return Next.NEXT_PROVIDER
    if isinstance(error, TransientError):
        return Next.NEXT_PROVIDER if has_next else Next.RETRY
    if isinstance(error, AmbiguousError):
        return Next.UNKNOWN
    return Next.UNKNOWN  # a bug in provider code: the request may be out


def after_route(
    transient: Sequence[TransientError],
    *,
    attempts: int,
    created_at: float,
    now: float,
    policy: RetryPolicy,
    rng: random.Random | None = None,
) -> Decision:
    """Every provider of the route said no for sure: retry later, or fail when nothing
    transient was said or the job is too old."""
    if not transient or now - created_at >= policy.max_age:
        return Decision(Next.FAILED)
    delay = exponential_backoff(max(1, attempts), policy.backoff_base, policy.backoff_max, rng=rng)
    asked = max((e.retry_after or 0.0) for e in transient)
    return Decision(Next.RETRY, now + max(delay, asked))
