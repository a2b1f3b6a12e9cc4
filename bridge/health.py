"""Is the bridge ready? What ``/readyz`` answers, and the loop ages ``/metrics`` shows.

Ready means all of:

- the store answers ``ping()`` within ``ping_timeout`` seconds;
- the SMTP listeners are bound and serving;
- the bridge is not stopping and its supervisor has not given up on a loop;
- every supervised loop made progress lately. A loop run by ``Supervisor.every`` beats
  after each step: it is late past ``max(3 x its interval, 60 s)``. A loop that runs for
  good (the dispatcher, IMAP pollers) must still be running; the dispatcher must also
  have made a pass (``Dispatcher.passes``) within ``max(3 x poll_interval, 60 s)``: an
  idle dispatcher passes at least once per poll interval.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bridge.daemon import Bridge

#: A loop is late when it made no progress for max(LATE_FACTOR x its period, LATE_FLOOR) s.
LATE_FACTOR = 3.0
LATE_FLOOR = 60.0


@dataclass(frozen=True)
class Readiness:
    """The verdict, what is wrong (check -> reason), and each loop's age in seconds."""

    ready: bool
    problems: dict[str, str] = field(default_factory=dict)
    loops: dict[str, float] = field(default_factory=dict)


def late_after(interval: float) -> float:
    """Seconds without progress after which a loop of this period is late."""
    return max(LATE_FACTOR * interval, LATE_FLOOR)


class ReadinessCheck:
    """Checks one running bridge; keeps what it needs to see the dispatcher progress."""

    def __init__(self, bridge: Bridge, ping_timeout: float = 2.0,
                 clock: Callable[[], float] | None = None) -> None:
        self.bridge = bridge
        self.ping_timeout = ping_timeout
        self.clock = clock or bridge.supervisor.clock
        self._passes: tuple[int, float] = (-1, self.clock())

    async def check(self) -> Readiness:
        """Run every check; never raises."""
        problems: dict[str, str] = {}
        store_problem = await self._store()
        if store_problem:
            problems["store"] = store_problem
        bridge = self.bridge
        if not bridge.servers or not all(server.is_serving() for server in bridge.servers):
            problems["smtp"] = "the SMTP listener is not bound"
        if bridge.stopping.is_set():
            problems["bridge"] = "stopping"
        if bridge.supervisor.failed.is_set():
            problems["supervisor"] = f"a loop could not recover: {bridge.supervisor.reason}"
        loops = self._loops(problems)
        return Readiness(not problems, problems, loops)

    async def _store(self) -> str | None:
        store = self.bridge.store
        if store is None:
            return "not open"
        try:
            await asyncio.wait_for(store.ping(), self.ping_timeout)
        except asyncio.TimeoutError:
            return f"no answer within {self.ping_timeout:g}s"
        except Exception as exc:  # any failure means "not ready", whatever its type
            return f"{type(exc).__name__}: {exc}"[:300]
        return None

    def _loops(self, problems: dict[str, str]) -> dict[str, float]:
        """Each loop's age; late or ended loops are added to ``problems``."""
        supervisor = self.bridge.supervisor
        now = self.clock()
        tasks = {task.get_name(): task for task in supervisor.tasks}
        ages: dict[str, float] = {}
        for name, beat in sorted(supervisor.beats.items()):
            task = tasks.get(name)
            if task is not None and task.done():
                problems[f"loop:{name}"] = "ended"
            if name in supervisor.intervals:
                ages[name] = age = now - beat
                limit = late_after(supervisor.intervals[name])
            elif name == "dispatcher" and self.bridge.dispatcher is not None:
                ages[name] = age = self._dispatcher_age(now)
                limit = late_after(self.bridge.config.dispatcher.poll_interval)
            else:
                continue
            if age > limit and f"loop:{name}" not in problems:
                problems[f"loop:{name}"] = f"no progress for {age:.0f}s (late after {limit:.0f}s)"
        return ages

    def _dispatcher_age(self, now: float) -> float:
        passes = self.bridge.dispatcher.passes
        seen, since = self._passes
        if passes != seen:
            self._passes = (passes, now)
            return 0.0
        return now - since
