"""Which providers may carry a job, in which order, and what it costs (pure functions).

The route is the account's ``route`` (premium), or its ``lowcost_route`` for ``lc=1``
when it has one; a ``country_routes`` entry for the destination's country (or ``*``)
replaces either. Providers whose declared ``Capabilities`` cannot carry the job are dropped:
UCS-2 text needs ``unicode``, an alphanumeric sender needs ``alphanumeric_sender``, the
job's parts must not exceed ``max_parts``, and the destination's country must be within
``countries`` and not ``excluded`` (Orange's API does not serve France, Allo only does).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from bridge.sections import AccountConfig
from bridge.numbers import region_of
from bridge.providers.base import Provider


@dataclass(frozen=True)
class Route:
    """Providers to try in order, and the ones left out with the reason."""

    names: tuple[str, ...]
    skipped: tuple[tuple[str, str], ...] = ()

    def explain(self) -> str:
        """Why the route is empty (or shorter than configured), for the job's error."""
        return "; ".join(f"{name}: {reason}" for name, reason in self.skipped) or "no provider configured"


def configured_route(account: AccountConfig, number: str, low_cost: bool) -> tuple[str, ...]:
    """The account's route for this destination, before capability checks."""
    routes = account.country_routes
    country = region_of(number)
    if country in routes:
        return routes[country]
    if low_cost and account.lowcost_route:
        return account.lowcost_route
    if "*" in routes:
        return routes["*"]
    return account.route


def incapable(provider: Provider, *, unicode: bool, sender: str | None, parts: int,
              number: str | None = None) -> str | None:
    """Why ``provider`` cannot carry such a job, or None when it can."""
    can = provider.capabilities
    if unicode and not can.unicode:
        return "cannot send UCS-2 (unicode) text"
    if sender and not sender.isdigit() and not can.alphanumeric_sender:
        return "cannot send from an alphanumeric sender"
    if parts > can.max_parts:
        return f"accepts at most {can.max_parts} parts"
    if number is not None and not can.carries(region_of(number)):
        return f"does not deliver to {region_of(number) or 'this country'}"
    return None


def choose_route(
    account: AccountConfig,
    providers: Mapping[str, Provider],
    *,
    number: str,
    low_cost: bool,
    unicode: bool,
    sender: str | None,
    parts: int,
) -> Route:
    """The providers that may carry the job, in the account's order."""
    names, skipped = [], []
    for name in configured_route(account, number, low_cost):
        provider = providers.get(name)
        reason = "not configured" if provider is None else incapable(
            provider, unicode=unicode, sender=sender, parts=parts, number=number
        )
        if reason:
            skipped.append((name, reason))
        else:
            names.append(name)
    return Route(tuple(names), tuple(skipped))


def price_per_part(account: AccountConfig | None, global_pricing: Mapping[str, int], number: str) -> int:
    """Credits per SMS part towards ``number``: the account's price, else the global one."""
    country = region_of(number) or "*"
    for table in ((account.pricing if account else {}), global_pricing):
        if country in table:
            return table[country]
        if "*" in table:
            return table["*"]
    return 1
