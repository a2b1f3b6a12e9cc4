"""The dispatcher's pure decision: a call's result -> sent | next | retry | unknown | failed."""

from __future__ import annotations

import random

import pytest

from bridge.errors import AmbiguousError, PermanentError, RecipientRefused, TransientError
from bridge.outcomes import Next, RetryPolicy, after_call, after_route


@pytest.mark.parametrize(
    ("error", "has_next", "expected"),
    [
        (None, False, Next.SENT),
        (None, True, Next.SENT),
        (TransientError("503"), True, Next.NEXT_PROVIDER),
        (TransientError("503"), False, Next.RETRY),
        (PermanentError("bad key"), True, Next.NEXT_PROVIDER),
        (PermanentError("bad key"), False, Next.FAILED),
        (RecipientRefused("21610 STOP"), True, Next.FAILED),
        (AmbiguousError("read timeout"), True, Next.UNKNOWN),
        (AmbiguousError("HTTP 500"), False, Next.UNKNOWN),
        (KeyError("bug in provider code"), True, Next.UNKNOWN),
    ],
)
def test_after_call(error, has_next, expected):
    """Only a definite non-delivery moves on; anything that may be out is unknown."""
    assert after_call(error, has_next=has_next) is expected


POLICY = RetryPolicy(max_age=3600, backoff_base=10, backoff_max=100)


class TestAfterRoute:
    def test_transient_retries_with_backoff(self):
        """A transient failure retries after the backoff for that attempt."""
        decision = after_route([TransientError("503")], attempts=2, created_at=0, now=100,
                               policy=POLICY, rng=random.Random(1))
        assert decision.kind is Next.RETRY and 100 + 16 <= decision.retry_at <= 100 + 24

    def test_retry_after_wins_when_longer(self):
        """The provider's Retry-After is honoured when longer than the backoff."""
        decision = after_route([TransientError("429", retry_after=300)], attempts=1, created_at=0,
                               now=100, policy=POLICY)
        assert decision.retry_at == 400

    def test_too_old_fails(self):
        """Past max_age a job is not retried any more."""
        assert after_route([TransientError("503")], attempts=9, created_at=0, now=3600,
                           policy=POLICY).kind is Next.FAILED

    def test_only_permanent_refusals_fail(self):
        """When nothing transient was said, the job fails."""
        assert after_route([], attempts=1, created_at=0, now=1, policy=POLICY).kind is Next.FAILED
