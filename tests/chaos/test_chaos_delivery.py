"""Exactly once under SIGKILL: 5 kills while mails arrive and SMS go out, then recovery.

The daemon is a subprocess of this checkout; the test sees it only as a user would: SMTP
answers, SMS at the gateway, status mails at the relay, and the SQLite file (read-only).
``CHAOS_SEED`` replays a run; ``-s`` (or ``-rA``) shows the counts.

(No conftest.py in this folder: tests/test_*.py import helpers with ``from conftest import``,
which a second conftest module would shadow.)
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

try:
    import aiosmtpd  # noqa: F401
    import yaml  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on the machine
    raise ImportError(
        f"the chaos tests need {exc.name}: install the test extras with "
        "`python3 -m pip install -e '.[test]'` (or run `make test`)") from exc

from chaos_harness import seed_from_env
from chaos_storm import Outcome, Storm, run_storm


@pytest.fixture
def storm(tmp_path: Path) -> Iterator[Callable[[Storm], Outcome]]:
    """Run a storm in ``tmp_path``; the gateway, relay, clients and daemon it started are
    stopped at the end of the test, passed or failed."""
    with contextlib.ExitStack() as stack:
        yield lambda plan: run_storm(plan, tmp_path, stack)


def _print(title: str, plan: Storm, outcome: Outcome) -> None:
    print(f"\n[{title}] seed={plan.seed} (replay with CHAOS_SEED={plan.seed})")
    print(f"[{title}] seconds: " + json.dumps({k: round(v, 1) for k, v in outcome.seconds.items()}))
    print(f"[{title}] counts: " + json.dumps(outcome.verdict.counts))


def _judge(outcome: Outcome) -> None:
    if outcome.verdict.problems:
        pytest.fail(f"{len(outcome.verdict.problems)} broken promises:\n" + outcome.verdict.report(),
                    pytrace=False)


def test_every_mail_gives_one_sms_or_one_status_with_lookup(storm):
    """2,000 mails, 5 SIGKILLs, a gateway that can be asked by reference: after recovery each
    number got exactly one SMS or one numbered status, credits balance, nothing unknown."""
    plan = Storm(seed=seed_from_env(20261201), mails=2000, kills=5, lookup=True)
    outcome = storm(plan)
    _print("lookup", plan, outcome)
    _judge(outcome)


def test_without_lookup_unknown_jobs_are_only_the_interrupted_calls(storm):
    """500 mails, 5 SIGKILLs, a gateway with no lookup: no SMS twice, credits balance, and
    the jobs left unknown are only calls cut by a kill or by the client's timeout."""
    plan = Storm(seed=seed_from_env(20261202), mails=500, kills=5, lookup=False,
                 send_budget=50, settle_budget=25)
    outcome = storm(plan)
    _print("no-lookup", plan, outcome)
    _judge(outcome)
