"""One chaos run: mails over SMTP to a daemon subprocess that is SIGKILLed and restarted.

``run_storm`` starts the gateway, the relay, the daemon and the SMTP clients, kills and
restarts the daemon at the planned moments, waits until it has nothing left to do and
returns the verdict. Whatever it starts is registered on the caller's ``ExitStack``, so it
is stopped even when the run fails half-way.
"""

from __future__ import annotations

import contextlib
import random
import time
from dataclasses import dataclass
from pathlib import Path

from chaos_checks import Verdict, verdict
from chaos_fakes import FlakyGateway, StatusRelay
from chaos_harness import (
    Daemon, Senders, build_corpus, free_port, kill_plan, run_kills, snapshot, wait_quiescent,
    write_config,
)


@dataclass(frozen=True)
class Storm:
    """What to throw at the daemon."""

    seed: int
    mails: int
    kills: int
    lookup: bool                    # the gateway can be looked up by reference
    connections: int = 6
    send_budget: float = 100.0      # s for the clients to get every mail accepted
    settle_budget: float = 50.0     # s for the daemon to become quiescent afterwards
    kill_wait: float = 20.0         # s to wait for a kill's moment before killing anyway


@dataclass
class Outcome:
    verdict: Verdict
    seconds: dict[str, float]


def run_storm(plan: Storm, folder: Path, stack: contextlib.ExitStack) -> Outcome:
    """Run ``plan`` in ``folder``; return the verdict and how long each phase took."""
    rng = random.Random(plan.seed)
    gateway = stack.enter_context(FlakyGateway(seed=rng.randrange(2**32)))
    relay = stack.enter_context(StatusRelay())
    port = free_port()
    config = write_config(folder, port, gateway, relay, lookup=plan.lookup)
    store = folder / "bridge.db"
    mails = build_corpus(plan.mails, plan.seed)
    daemon = Daemon(config, port)
    stack.callback(daemon.kill)
    began = time.monotonic()
    daemon.start()
    senders = Senders(port, mails, plan.connections, deadline=began + plan.send_budget)
    stack.callback(senders.stop)
    senders.start()
    points = kill_plan(rng, plan.kills, plan.mails, sum(len(m.valid) for m in mails))
    kills = run_kills(daemon, gateway, senders, points, rng, store, wait_limit=plan.kill_wait)
    senders.join(max(1.0, began + plan.send_budget - time.monotonic()))
    sent = time.monotonic()
    settle, pending = wait_quiescent(store, daemon, allow_unknown=not plan.lookup,
                                     timeout=plan.settle_budget)
    result = verdict(mails, senders.delivery, gateway, relay.mails(), snapshot(store), kills,
                     unknown_allowed=not plan.lookup)
    if pending:
        result.problems.insert(0, pending)
    seconds = {"total": time.monotonic() - began, "sending": sent - began, "settling": settle}
    return Outcome(result, seconds)
