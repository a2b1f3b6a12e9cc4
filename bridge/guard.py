"""Abuse limits at the SMTP edge, per client address (pure bookkeeping, no sockets).

``ClientGuard`` counts, for the listener:

- open connections, in all and per client address (``smtp.max_connections``,
  ``smtp.max_connections_per_client``): beyond them a new connection gets ``421``;
- recent failures per client address (wrong AUTH password, wrong API key in a subject):
  each costs ``smtp.auth.failure_delay`` seconds more before the next answer to that
  address, for a quarter of an hour, so guessing passwords or keys gets slower and slower.

The per-connection disconnect after ``smtp.auth.max_failures`` failures is the listener's.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

#: How long a failure slows its client address down.
FAILURE_WINDOW = 900.0
#: The most failures that add to the delay (30 s with the default 1 s each).
MAX_COUNTED_FAILURES = 30
#: Addresses tracked at most; the oldest are forgotten first (bounds memory under a flood).
MAX_TRACKED = 50_000


class ClientGuard:
    """Connection counts and recent failures per client address."""

    def __init__(
        self,
        max_connections: int,
        max_per_client: int,
        failure_delay: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_connections = max_connections
        self.max_per_client = max_per_client
        self.failure_delay = failure_delay
        self.clock = clock
        self.open_total = 0
        self._open: dict[str, int] = {}
        self._failures: dict[str, deque[float]] = {}

    def admit(self, client: str) -> str | None:
        """Count a new connection from ``client``; the reason to refuse it, or None."""
        if self.open_total >= self.max_connections:
            return "too many connections"
        if self._open.get(client, 0) >= self.max_per_client:
            return "too many connections from your address"
        self.open_total += 1
        self._open[client] = self._open.get(client, 0) + 1
        return None

    def release(self, client: str) -> None:
        """Forget one connection ``admit`` accepted."""
        self.open_total = max(0, self.open_total - 1)
        left = self._open.get(client, 0) - 1
        if left > 0:
            self._open[client] = left
        else:
            self._open.pop(client, None)

    def failed(self, client: str) -> int:
        """Note one failure of ``client``; return its recent failures."""
        recent = self._recent(client)
        recent.append(self.clock())
        self._failures[client] = self._failures.pop(client, recent)  # most recent last
        while len(self._failures) > MAX_TRACKED:
            self._failures.pop(next(iter(self._failures)))
        return len(recent)

    def failures(self, client: str) -> int:
        """How many failures ``client`` had in the last ``FAILURE_WINDOW`` seconds."""
        return len(self._recent(client))

    def delay(self, client: str) -> float:
        """Seconds to wait before answering ``client``: grows with its recent failures."""
        return self.failure_delay * min(self.failures(client), MAX_COUNTED_FAILURES)

    def _recent(self, client: str) -> deque[float]:
        recent = self._failures.get(client, deque())
        horizon = self.clock() - FAILURE_WINDOW
        while recent and recent[0] < horizon:
            recent.popleft()
        if not recent:
            self._failures.pop(client, None)
        return recent
