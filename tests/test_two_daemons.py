"""Two ``python -m bridge run`` processes on one PostgreSQL database, one SIGKILLed mid-run.

Mail goes round-robin to both; a mail the killed one did not answer is given to the other
(as a sending MTA does). Every SMS must go out at most once, every accepted mail must have
its job, the survivor must take over the dead one's claimed jobs, and the balance must be
exact.
"""

from __future__ import annotations

import asyncio
import json
import smtplib
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import asyncpg
import yaml
from conftest import ACCOUNT_KEY, compose
from pg import pg_url  # noqa: F401  (fixture)
from test_crash import daemons, free_port  # noqa: F401  (fixture)

MAILS = 300
CREDITS = 1000


def write_config(folder: Path, url: str, port: int) -> Path:
    """A bridge on ``url`` listening on ``port``, SMS to ``folder/outbox.jsonl``."""
    folder.mkdir()
    settings = {
        "store": url,
        "smtp": {"listen": f"127.0.0.1:{port}", "recipients": ["mail2sms@example.com"]},
        "replies": {"relay": "127.0.0.1:1", "from": "mail2sms@example.com", "enabled": False},
        "dispatcher": {"poll_interval": 0.05, "grace_period": 5, "lease": 5, "sweep_interval": 1},
        "providers": {"outbox": {"type": "file", "path": str(folder / "outbox.jsonl")}},
        "accounts": {"arthur45": {"api_key": ACCOUNT_KEY, "credits": CREDITS, "route": ["outbox"]}},
        "logging": {"format": "json"},
    }
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(settings))
    return path


def deliver(ports: list[int], i: int, timeout: float = 60.0) -> None:
    """Hand mail ``i`` to its bridge, or to the other one if that one does not say 250."""
    raw = compose(f"arthur45@{ACCOUNT_KEY}|06121{i:05}", f"mail {i}", message_id=f"<m{i}@example.org>")
    deadline = time.monotonic() + timeout
    attempt = 0
    while True:
        port = ports[(i + attempt) % 2]
        attempt += 1
        try:
            with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
                client.sendmail("alice@example.org", ["mail2sms@example.com"], raw)
            return
        except (OSError, smtplib.SMTPException):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def sms_lines(*paths: Path) -> list[dict]:
    """Every SMS the file providers wrote."""
    return [json.loads(line) for path in paths if path.exists() for line in path.read_text().splitlines()]


class TestTwoDaemons:
    async def test_sigkill_one_of_two_every_sms_at_most_once_balances_exact(self, tmp_path, pg_url, daemons):
        """300 mails round-robin, one daemon SIGKILLed after a third: all accepted, none sent twice."""
        ports = [free_port(), free_port()]
        configs = [write_config(tmp_path / name, pg_url, port) for name, port in zip("ab", ports)]
        first = daemons(configs[0], ports[0])
        daemons(configs[1], ports[1])
        with ThreadPoolExecutor(4) as pool:
            sent = [pool.submit(deliver, ports, i) for i in range(MAILS)]
            while sum(f.done() for f in sent) < MAILS // 3:
                await asyncio.sleep(0.01)
            first.kill()
            for future in sent:
                await asyncio.wrap_future(future)   # every mail got its 250 from one of them
        conn = await asyncpg.connect(pg_url)
        try:
            deadline = time.monotonic() + 60
            while await conn.fetchval("SELECT COUNT(*) FROM jobs WHERE state IN ('queued', 'claimed', 'calling')"):
                assert time.monotonic() < deadline, "the survivor did not finish the dead one's jobs"
                await asyncio.sleep(0.2)
            jobs = await conn.fetch("SELECT id, text, state, client_ref FROM jobs")
            balance = await conn.fetchval("SELECT balance FROM balances WHERE login='arthur45'")
        finally:
            await conn.close()
        outboxes = [sms_lines(tmp_path / name / "outbox.jsonl") for name in "ab"]
        assert all(outboxes), "both bridges sent SMS"
        lines = outboxes[0] + outboxes[1]
        assert sorted(job["text"] for job in jobs) == sorted(f"mail {i}" for i in range(MAILS))  # one job per mail
        texts = [line["text"] for line in lines]
        assert len(texts) == len(set(texts)), "an SMS went out twice"
        by_state = {state: {job["text"] for job in jobs if job["state"] == state} for state in ("sent", "unknown")}
        assert set(by_state) == {"sent", "unknown"} and len(by_state["sent"]) + len(by_state["unknown"]) == MAILS
        assert by_state["sent"] <= set(texts)       # every sent job is in an outbox ...
        assert set(texts) <= by_state["sent"] | by_state["unknown"]   # ... unknown ones may be (reconcile)
        assert len(by_state["unknown"]) <= 8        # only what the dead one had on the wire
        assert balance == CREDITS - MAILS
