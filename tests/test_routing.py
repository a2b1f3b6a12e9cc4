"""Routing (lc=, country, capabilities), pricing, rate limits and circuit breakers."""

from __future__ import annotations

import pytest

from bridge.sections import AccountConfig
from bridge.limits import BreakerState, CircuitBreaker, RateLimiter, SlidingWindow
from bridge.providers.base import Capabilities, Provider
from bridge.routing import choose_route, configured_route, price_per_part


class Cap(Provider):
    """A provider stand-in that only declares capabilities (never sends)."""

    def __init__(self, name, **capabilities):
        self.name = name
        self.capabilities = Capabilities(**capabilities)


ACCOUNT = AccountConfig(
    login="a",
    api_key="k",
    route=("premium", "backup"),
    lowcost_route=("cheap",),
    country_routes={"BE": ("belgian",), "US": ("intl",)},
    pricing={"FR": 1, "*": 3},
)
PROVIDERS = {n: Cap(n) for n in ("premium", "backup", "cheap", "belgian", "intl")}


class TestConfiguredRoute:
    @pytest.mark.parametrize(
        ("number", "low_cost", "expected"),
        [
            ("+33612121515", False, ("premium", "backup")),
            ("+33612121515", True, ("cheap",)),
            ("+32470123456", False, ("belgian",)),
            ("+32470123456", True, ("belgian",)),
            ("+14155550123", False, ("intl",)),
            ("+447400123456", False, ("premium", "backup")),
        ],
        ids=["fr-premium", "fr-lowcost", "be-country", "be-country-wins-over-lc", "us", "uk-default"],
    )
    def test_route_by_options_and_country(self, number, low_cost, expected):
        """lc=1 picks lowcost_route; a country entry overrides both."""
        assert configured_route(ACCOUNT, number, low_cost) == expected

    def test_star_is_the_default_country_route(self):
        """country_routes '*' applies to every country without its own entry."""
        account = AccountConfig(login="a", api_key="k", route=("premium",), country_routes={"FR": ("fr",), "*": ("intl",)})
        assert configured_route(account, "+33612121515", False) == ("fr",)
        assert configured_route(account, "+14155550123", False) == ("intl",)


class TestCapabilities:
    def test_unicode_text_skips_gsm_only_providers(self):
        """A UCS-2 job is not routed to a provider without unicode support."""
        providers = {**PROVIDERS, "premium": Cap("premium", unicode=False)}
        route = choose_route(ACCOUNT, providers, number="+33612121515", low_cost=False,
                             unicode=True, sender=None, parts=1)
        assert route.names == ("backup",)
        assert "unicode" in route.explain()

    def test_alphanumeric_sender_and_parts(self):
        """Providers that cannot show the sender or take the parts are left out."""
        providers = {**PROVIDERS, "premium": Cap("premium", alphanumeric_sender=False),
                     "backup": Cap("backup", max_parts=1)}
        route = choose_route(ACCOUNT, providers, number="+33612121515", low_cost=False,
                             unicode=False, sender="SHOP", parts=2)
        assert route.names == ()
        assert "alphanumeric" in route.explain() and "at most 1 parts" in route.explain()

    def test_numeric_sender_is_fine_everywhere(self):
        """A numeric sender does not need alphanumeric support."""
        providers = {**PROVIDERS, "premium": Cap("premium", alphanumeric_sender=False)}
        route = choose_route(ACCOUNT, providers, number="+33612121515", low_cost=False,
                             unicode=False, sender="33612345678", parts=1)
        assert route.names == ("premium", "backup")

    @pytest.mark.parametrize(
        ("capabilities", "number", "kept"),
        [
            pytest.param({"countries": frozenset({"FR"})}, "+33612121515", True, id="allo-like-france"),
            pytest.param({"countries": frozenset({"FR"})}, "+262692123456", False, id="allo-like-reunion"),
            pytest.param({"excluded": frozenset({"FR"})}, "+33612121515", False, id="orange-like-france"),
            pytest.param({"excluded": frozenset({"FR"})}, "+2250707070707", True, id="orange-like-ivory-coast"),
        ],
    )
    def test_countries(self, capabilities: dict, number: str, kept: bool):
        """A provider is skipped for a destination outside the countries it delivers to."""
        providers = {**PROVIDERS, "premium": Cap("premium", **capabilities)}
        route = choose_route(ACCOUNT, providers, number=number, low_cost=False,
                             unicode=False, sender=None, parts=1)
        assert ("premium" in route.names) is kept
        assert kept or "does not deliver to" in route.explain()


class TestPricing:
    @pytest.mark.parametrize(
        ("account", "number", "price"),
        [
            (ACCOUNT, "+33612121515", 1),
            (ACCOUNT, "+32470123456", 3),
            (None, "+32470123456", 2),
            (AccountConfig(login="b", api_key="k"), "+33612121515", 1),
        ],
        ids=["account-fr", "account-star", "global-be", "global-star"],
    )
    def test_price_per_part(self, account, number, price):
        """The account's price table wins, then the global one, then 1 credit."""
        assert price_per_part(account, {"BE": 2, "*": 1}, number) == price


class TestRateLimiter:
    def test_evenly_spaced(self):
        """50/s gives slots 20 ms apart, never more than 50 in any one-second window."""
        limiter = RateLimiter(50)
        slots = [limiter.take(0.0) for _ in range(1000)]
        assert slots[1] - slots[0] == pytest.approx(0.02)
        assert slots[-1] == pytest.approx(999 / 50)
        for i in range(len(slots) - 50):
            assert slots[i + 50] - slots[i] >= 1.0 - 1e-9

    def test_idle_time_is_not_banked(self):
        """After a quiet spell the limiter does not allow a burst above the rate."""
        limiter = RateLimiter(10)
        limiter.take(0.0)
        assert limiter.take(100.0) == 100.0
        assert limiter.take(100.0) == pytest.approx(100.1)

    def test_a_bulk_call_takes_a_slot_per_number(self):
        """Taking three slots at once leaves the limiter where three takes leave it: the
        call goes at the first slot, the next send three slots later."""
        limiter = RateLimiter(10)
        assert limiter.take(5.0, 3) == 5.0
        assert limiter.next_free(5.0) == pytest.approx(5.3)
        assert limiter.take(5.0) == pytest.approx(5.3)


class TestSlidingWindow:
    def test_limit_then_room_again(self):
        """Three per minute: the fourth waits until the first is a minute old."""
        window = SlidingWindow(3, 60)
        for t in (0, 10, 20):
            assert window.next_free(t) == t
            window.record(t)
        assert window.next_free(30) == 60
        assert window.next_free(61) == 61


class TestCircuitBreaker:
    def test_opens_then_probes_then_closes(self):
        """N failures open it; after the cool-down one probe goes; success closes it."""
        breaker = CircuitBreaker(failures=3, cooldown=10)
        for t in (0, 1):
            assert breaker.allow(t)
            assert not breaker.failure(t)
        assert breaker.failure(2)
        assert breaker.state(5) is BreakerState.OPEN and not breaker.allow(5)
        assert breaker.state(12) is BreakerState.HALF_OPEN
        assert breaker.allow(12) and not breaker.allow(12)  # one probe at a time
        breaker.success()
        assert breaker.state(12) is BreakerState.CLOSED and breaker.allow(12)

    def test_failed_probe_reopens(self):
        """A failed half-open probe opens the circuit for another cool-down."""
        breaker = CircuitBreaker(failures=1, cooldown=10)
        breaker.failure(0)
        assert breaker.allow(10)
        assert breaker.failure(10)
        assert not breaker.allow(15) and breaker.allow(20)

    def test_failed_probes_double_the_wait_up_to_the_maximum(self):
        """A provider that stays down is probed after 10, 20, 40 s, then every 60 s at most;
        a success brings the wait back to 10 s."""
        breaker = CircuitBreaker(failures=1, cooldown=10, max_cooldown=60)
        now = 0.0
        breaker.failure(now)
        waits = []
        for _ in range(5):
            opened = breaker.opened_at
            assert not breaker.allow(opened + breaker.cooldown - 0.001)
            now = opened + breaker.cooldown
            assert breaker.allow(now)
            waits.append(breaker.cooldown)
            breaker.failure(now)
        assert waits == [10, 20, 40, 60, 60]
        now += breaker.cooldown
        assert breaker.allow(now)
        breaker.success()
        assert breaker.cooldown == 10
