"""One retry schedule for everything that retries (SMS jobs, reply mails)."""

from __future__ import annotations

import random


def exponential_backoff(
    attempts: int, base: float, maximum: float, jitter: float = 0.2, rng: random.Random | None = None
) -> float:
    """Seconds to wait before attempt ``attempts + 1``: ``base * 2**(attempts-1)``, capped.

    ``jitter`` spreads retries by up to that fraction either way, so jobs that failed
    together (a provider outage) do not all come back in the same second.
    """
    delay = min(maximum, base * 2 ** max(0, attempts - 1))
    spread = delay * jitter
    return max(0.0, delay + (rng or random).uniform(-spread, spread))
