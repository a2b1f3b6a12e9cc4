"""The operator's queue and store verbs, run as a user would: list by state, cancel, prune."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bridge.model import NewJob, Plan
from bridge.store import SqliteStore

REPO = Path(__file__).resolve().parent.parent

CONFIG = """
store: sqlite://bridge.db
smtp: {listen: "127.0.0.1:2525", recipients: [mail2sms@example.com]}
replies: {relay: "127.0.0.1:25", from: mail2sms@example.com}
providers:
  outbox: {type: file, path: outbox.jsonl}
accounts:
  demo: {api_key: k, credits: 10, route: [outbox]}
"""


def mail2sms(config: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bridge", *args],
                          cwd=REPO, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(REPO), "MAIL2SMS_CONFIG": str(config)})


@pytest.fixture
def config(tmp_path) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(CONFIG)

    async def queue_two() -> None:
        store = await SqliteStore.open(tmp_path / "bridge.db")
        await store.open_accounts({"demo": 10}, 0)
        await store.commit(Plan(key=None, login="demo", message_id=None, reply_to=None, summary="demo@***|x",
                                jobs=tuple(NewJob(n, "hi", None, 1, 2) for n in ("+33612121515", "+33612121516"))), 1)
        await store.close()

    asyncio.run(queue_two())
    return path


def test_cancel_refunds_and_list_filters_by_state(config):
    """`queue cancel` refunds a queued job; `queue list --state cancelled` shows it."""
    result = mail2sms(config, "queue", "cancel", "1")
    assert result.returncode == 0 and "refunded" in result.stdout, result.stderr
    listing = mail2sms(config, "queue", "list", "--state", "cancelled")
    assert listing.returncode == 0 and "+33612121515" in listing.stdout and "+33612121516" not in listing.stdout
    assert "8" in mail2sms(config, "accounts", "list").stdout  # 10 - 2 - 2 + 2
    again = mail2sms(config, "queue", "cancel", "1")
    assert again.returncode == 1 and "only a queued job" in again.stdout


def test_unknown_state_is_a_usage_error(config):
    """`--state sending` (no longer a state) exits 2 and lists the states."""
    result = mail2sms(config, "queue", "list", "--state", "sending")
    assert result.returncode == 2 and "calling" in result.stderr


def test_prune_keeps_queued_jobs(config):
    """`store prune --older-than 0s` deletes the cancelled job, not the queued one."""
    mail2sms(config, "queue", "cancel", "1")
    result = mail2sms(config, "store", "prune", "--older-than", "0s")
    assert result.returncode == 0 and "1 jobs deleted" in result.stdout, result.stderr
    listing = mail2sms(config, "queue", "list")
    assert "+33612121516" in listing.stdout and "+33612121515" not in listing.stdout
    bad = mail2sms(config, "store", "prune", "--older-than", "soon")
    assert bad.returncode == 2
