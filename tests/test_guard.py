"""bridge.guard: connection counts and the failure slow-down, on a fake clock."""

from __future__ import annotations

from bridge.guard import FAILURE_WINDOW, MAX_COUNTED_FAILURES, ClientGuard


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make(clock: Clock | None = None) -> ClientGuard:
    return ClientGuard(max_connections=3, max_per_client=2, failure_delay=1.0, clock=clock or Clock())


class TestConnections:
    def test_per_client_cap(self):
        """A third connection from one address is refused; others still get in."""
        guard = make()
        assert [guard.admit("10.0.0.1") for _ in range(3)] == [None, None, "too many connections from your address"]
        assert guard.admit("10.0.0.2") is None

    def test_total_cap(self):
        """Beyond max_connections in all, everyone is refused until one closes."""
        guard = make()
        for client in ("a", "b", "c"):
            assert guard.admit(client) is None
        assert guard.admit("d") == "too many connections"
        guard.release("a")
        assert guard.admit("d") is None

    def test_release_forgets_the_client(self):
        """Closed connections give their slots back; nothing is kept for idle addresses."""
        guard = make()
        guard.admit("a")
        guard.release("a")
        assert guard.open_total == 0 and guard._open == {}


class TestFailures:
    def test_delay_grows_with_recent_failures(self):
        """Each recent failure adds failure_delay; other addresses are not slowed."""
        guard = make()
        assert guard.delay("a") == 0
        for expected in (1, 2, 3):
            assert guard.failed("a") == expected
        assert guard.delay("a") == 3.0 and guard.delay("b") == 0

    def test_failures_expire(self):
        """A failure stops counting after the window."""
        clock = Clock()
        guard = make(clock)
        guard.failed("a")
        clock.now += FAILURE_WINDOW / 2
        guard.failed("a")
        clock.now += FAILURE_WINDOW / 2 + 1
        assert guard.failures("a") == 1
        clock.now += FAILURE_WINDOW
        assert guard.failures("a") == 0 and "a" not in guard._failures

    def test_delay_is_capped(self):
        """The delay stops growing after MAX_COUNTED_FAILURES failures."""
        guard = make()
        for _ in range(MAX_COUNTED_FAILURES + 20):
            guard.failed("a")
        assert guard.delay("a") == MAX_COUNTED_FAILURES * 1.0
