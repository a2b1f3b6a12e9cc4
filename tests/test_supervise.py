"""The supervisor: failing loops are logged and retried; one that cannot recover is reported."""

from __future__ import annotations

import asyncio

from structlog.testing import capture_logs

from bridge.supervise import Supervisor


class TestSupervisor:
    async def test_a_failing_loop_is_retried_and_logged_with_an_error_id(self):
        """A loop that raises twice then runs is restarted; each failure is logged once."""
        stop = asyncio.Event()
        supervisor = Supervisor(stop, backoff_base=0.001, backoff_max=0.001)
        attempts = []

        async def flaky() -> None:
            attempts.append(1)
            if len(attempts) <= 2:
                raise RuntimeError("boom")
            await stop.wait()

        with capture_logs() as logs:
            supervisor.start("flaky", flaky)
            while len(attempts) < 3:
                await asyncio.sleep(0.01)
            stop.set()
            await supervisor.join(1)
        failures = [e for e in logs if e["event"] == "loop_failed"]
        assert len(failures) == 2 and all(e["error_id"] and e["loop"] == "flaky" for e in failures)
        assert not supervisor.failed.is_set()

    async def test_a_loop_that_keeps_failing_is_given_up(self):
        """After max_failures in the window the supervisor sets ``failed`` with the reason."""
        stop = asyncio.Event()
        supervisor = Supervisor(stop, max_failures=3, backoff_base=0.001, backoff_max=0.001)

        async def broken() -> None:
            raise OSError("disk gone")

        supervisor.start("dispatcher", broken)
        await asyncio.wait_for(supervisor.failed.wait(), 2)
        assert supervisor.reason.startswith("dispatcher failed 3 times") and "disk gone" in supervisor.reason

    async def test_a_loop_that_returns_early_counts_as_a_failure(self):
        """A loop must run until stop: returning before it is a failure too."""
        stop = asyncio.Event()
        supervisor = Supervisor(stop, max_failures=2, backoff_base=0.001, backoff_max=0.001)

        async def quits() -> None:
            return None

        supervisor.start("replies", quits)
        await asyncio.wait_for(supervisor.failed.wait(), 2)
        assert "ended by itself" in supervisor.reason

    async def test_every_runs_a_step_periodically_and_beats(self):
        """``every`` runs its step repeatedly and records a heartbeat."""
        stop = asyncio.Event()
        supervisor = Supervisor(stop)
        steps = []

        async def step() -> None:
            steps.append(1)

        supervisor.every("sweep", 0.01, step)
        while len(steps) < 3:
            await asyncio.sleep(0.01)
        stop.set()
        await supervisor.join(1)
        assert "sweep" in supervisor.beats
