"""Rate limits and circuit breakers the dispatcher applies around providers.

- ``RateLimiter``: at most ``rate`` messages per second, evenly spaced (one every
  ``1/rate`` seconds), so no one-second window ever holds more than ``rate`` sends.
- ``SlidingWindow``: at most ``limit`` events per ``period`` (per-account caps per minute
  and per day); says when the next event may happen instead of blocking.
- ``CircuitBreaker``: opens after ``failures`` consecutive failures, lets one probe
  through after ``cooldown`` (half-open), closes on a success; each failed probe doubles
  the wait, up to ``max_cooldown``, so a provider down for hours costs a probe every
  ``max_cooldown``, not every ``cooldown``. A dead provider is then
  skipped at once instead of costing every job a timeout.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import math
from collections import deque
from enum import Enum


class RateLimiter:
    """Evenly spaced sends: slot k of a busy spell is at ``start + k / rate``.

    Slots are computed from the spell's start rather than by adding the interval again
    and again, so float rounding on epoch seconds never squeezes one slot too many
    into a second.
    """

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.interval = 1.0 / rate
        self._start = -math.inf
        self._taken = 0

    def _slot(self, k: int) -> float:
        return self._start + k / self.rate

    def next_free(self, now: float) -> float:
        """When the next send may go (``now`` if it may go at once)."""
        return max(now, self._slot(self._taken))

    def take(self, now: float, count: int = 1) -> float:
        """Reserve the next ``count`` slots (a bulk call counts every number); return the
        first one's time (the caller waits until then)."""
        if self._slot(self._taken) <= now:
            self._start, self._taken = now, 0  # idle time is not banked: a new spell
        slot = self._slot(self._taken)
        self._taken += count
        return slot


class SlidingWindow:
    """At most ``limit`` events in any ``period`` seconds."""

    def __init__(self, limit: int, period: float) -> None:
        self.limit = limit
        self.period = period
        self._events: deque[float] = deque()

    def _trim(self, now: float) -> None:
        while self._events and self._events[0] <= now - self.period:
            self._events.popleft()

    def next_free(self, now: float) -> float:
        """When the next event may happen (``now`` if the window has room)."""
        self._trim(now)
        if len(self._events) < self.limit:
            return now
        return self._events[len(self._events) - self.limit] + self.period

    def record(self, when: float) -> None:
        """Count one event at ``when``."""
        self._events.append(when)


class BreakerState(str, Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    """Consecutive failures open it; after ``cooldown`` one probe decides."""

    def __init__(self, failures: int = 5, cooldown: float = 30.0, max_cooldown: float | None = None) -> None:
        self.threshold = failures
        self.base_cooldown = cooldown
        self.max_cooldown = max(cooldown, max_cooldown if max_cooldown is not None else cooldown)
        self.cooldown = cooldown
        self.failures = 0
        self.opened_at: float | None = None
        self._probing = False

    def state(self, now: float) -> BreakerState:
        """The breaker's state at ``now``."""
        if self.opened_at is None:
            return BreakerState.CLOSED
        if now - self.opened_at >= self.cooldown:
            return BreakerState.HALF_OPEN
        return BreakerState.OPEN

    def allow(self, now: float) -> bool:
        """True when a call may go through (closed, or the one half-open probe)."""
        state = self.state(now)
        if state is BreakerState.CLOSED:
            return True
        if state is BreakerState.HALF_OPEN and not self._probing:
            self._probing = True
            return True
        return False

    def blocked(self, now: float) -> bool:
        """True when no call may go now: open, or half-open with its probe already out."""
        state = self.state(now)
        return state is BreakerState.OPEN or (state is BreakerState.HALF_OPEN and self._probing)

    def retry_at(self, now: float) -> float:
        """When a blocked breaker may let a call through again (a probe out: soon, to see)."""
        if self.state(now) is BreakerState.OPEN and self.opened_at is not None:
            return self.opened_at + self.cooldown
        return now + min(self.cooldown, 5.0)

    def success(self) -> None:
        """A call succeeded: close."""
        self.failures, self.opened_at, self._probing = 0, None, False
        self.cooldown = self.base_cooldown

    def failure(self, now: float) -> bool:
        """A call failed; return True when this opened (or re-opened) the circuit."""
        self.failures += 1
        was_probe, self._probing = self._probing, False
        if was_probe or self.failures >= self.threshold:
            reopened = self.opened_at is None or was_probe
            if was_probe:  # still down: wait longer before the next probe
                self.cooldown = min(self.cooldown * 2, self.max_cooldown)
            self.opened_at = now
            return reopened
        return False


class Throttles:
    """Every provider's breaker and rate limiter, and every account's rate windows."""

    def __init__(self, breakers: dict[str, CircuitBreaker], limiters: dict[str, RateLimiter],
                 windows: dict[str, list[SlidingWindow]]) -> None:
        self.breakers = breakers
        self.limiters = limiters
        self.windows = windows

    @classmethod
    def from_config(cls, config: Any, providers: Mapping[str, Any]) -> "Throttles":
        """From ``providers.<name>.rate``/``circuit`` and ``accounts.<login>.rate_per_*``."""
        from bridge.sections import ProviderPolicy

        policies = {name: config.provider_policies.get(name, ProviderPolicy()) for name in providers}
        return cls(
            {n: CircuitBreaker(p.breaker_failures, p.breaker_cooldown, p.breaker_max_cooldown)
             for n, p in policies.items()},
            {n: RateLimiter(p.rate or providers[n].capabilities.default_rate) for n, p in policies.items()},
            {login: [SlidingWindow(limit, period) for limit, period in
                     ((a.rate_per_minute, 60.0), (a.rate_per_day, 86400.0)) if limit]
             for login, a in config.accounts.items()},
        )

    def load_windows(self, sent: Mapping[str, Iterable[float]]) -> None:
        """Count what each account sent lately (``{login: [times]}``) in its windows."""
        for login, times in sent.items():
            for window in self.windows.get(login, []):
                for when in times:
                    window.record(when)

    def paused_until(self, now: float) -> float | None:
        """When every provider's circuit is open: the first time one may take a call."""
        if not self.breakers or not all(b.blocked(now) for b in self.breakers.values()):
            return None
        return min(b.retry_at(now) for b in self.breakers.values())

    def account_blocked(self, account: Any, now: float) -> bool:
        """True when no provider any route of ``account`` could use would take a call now."""
        if account is None:
            return False
        names = set(account.route) | set(account.lowcost_route)
        for extra in account.country_routes.values():
            names |= set(extra)
        return all(self.breakers[n].blocked(now) for n in names if n in self.breakers)
