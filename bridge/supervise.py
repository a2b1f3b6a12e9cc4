"""One supervisor for every background loop (dispatcher, sweep, reconciler, replies, pollers).

A loop that raises is logged (with an error id) and started again after a backoff. A loop
that keeps failing (``max_failures`` within ``window`` seconds) cannot recover: the
supervisor sets ``failed``, the daemon then answers ``451 4.3.0`` to new mail and exits
non-zero so systemd restarts it. ``beats`` tells when each loop last made progress, for
health checks.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable

import structlog

from bridge.backoff import exponential_backoff

log = structlog.get_logger("bridge.supervise")


class Supervisor:
    """Runs named loops until ``stopping`` is set."""

    def __init__(
        self,
        stopping: asyncio.Event,
        max_failures: int = 8,
        window: float = 600.0,
        backoff_base: float = 0.5,
        backoff_max: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stopping = stopping
        self.max_failures = max_failures
        self.window = window
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.clock = clock
        self.failed = asyncio.Event()
        self.reason: str | None = None
        self.beats: dict[str, float] = {}
        self.intervals: dict[str, float] = {}    # loops run by ``every``: their period
        self.tasks: list[asyncio.Task] = []

    def start(self, name: str, loop: Callable[[], Awaitable[None]]) -> asyncio.Task:
        """Run ``loop()`` under supervision; it should return only once ``stopping`` is set."""
        task = asyncio.create_task(self._guard(name, loop), name=name)
        self.tasks.append(task)
        return task

    def every(self, name: str, interval: float, step: Callable[[], Awaitable[object]]) -> asyncio.Task:
        """Run ``step()`` every ``interval`` seconds under supervision."""
        self.intervals[name] = interval

        async def loop() -> None:
            while not self.stopping.is_set():
                await step()
                self.beat(name)
                try:
                    await asyncio.wait_for(self.stopping.wait(), interval)
                except asyncio.TimeoutError:
                    pass

        return self.start(name, loop)

    def beat(self, name: str) -> None:
        """``name`` made progress now."""
        self.beats[name] = self.clock()

    async def _guard(self, name: str, loop: Callable[[], Awaitable[None]]) -> None:
        failures: list[float] = []
        while not self.stopping.is_set():
            self.beat(name)
            try:
                await loop()
                if self.stopping.is_set():
                    return
                error = "the loop ended by itself"
                log.error("loop_ended", loop=name)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                error_id = uuid.uuid4().hex[:12]
                error = f"{type(exc).__name__}: {exc}"
                log.error("loop_failed", loop=name, error_id=error_id, exc_info=exc)
            now = self.clock()
            failures = [t for t in failures if now - t < self.window] + [now]
            if len(failures) >= self.max_failures:
                self.reason = self.reason or f"{name} failed {len(failures)} times in {self.window:.0f}s: {error}"
                log.critical("loop_gave_up", loop=name, reason=self.reason)
                self.failed.set()
                return
            delay = exponential_backoff(len(failures), self.backoff_base, self.backoff_max)
            try:
                await asyncio.wait_for(self.stopping.wait(), delay)
            except asyncio.TimeoutError:
                pass

    async def join(self, timeout: float) -> None:
        """Wait up to ``timeout`` for the loops to end (``stopping`` set), then cancel them."""
        if not self.tasks:
            return
        done, pending = await asyncio.wait(self.tasks, timeout=timeout)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending, timeout=timeout)


async def first_of(*waits: Awaitable, timeout: float | None = None) -> None:
    """Wait until the first of ``waits`` finishes (or ``timeout`` passes); cancel the others."""
    tasks = [asyncio.ensure_future(w) for w in waits]
    try:
        await asyncio.wait(tasks, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
