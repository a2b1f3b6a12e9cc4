"""The daemon as a real process: SIGKILL after 250, restart, graceful SIGTERM, sd_notify."""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import yaml
from conftest import ACCOUNT_KEY, compose, smtp_send, wait_until
from provider_fakes import FakeHttpServer, Reply, closed_port

REPO = Path(__file__).resolve().parent.parent
OK = {"success": True, "code": 200, "message_id": 307, "nb_sms": 1, "cost": 0.038}


def free_port() -> int:
    return closed_port()


def write_config(tmp_path: Path, smtp_port: int, provider_url: str) -> Path:
    settings = {
        "store": "sqlite://bridge.db",
        "smtp": {"listen": f"127.0.0.1:{smtp_port}", "recipients": ["mail2sms@example.com"]},
        "replies": {"relay": "127.0.0.1:1", "from": "mail2sms@example.com", "enabled": False},
        "dispatcher": {"poll_interval": 0.05, "grace_period": 5},
        "providers": {"partner": {"type": "smspartner", "api_key": "PK", "url": provider_url, "timeout": 30}},
        "accounts": {"arthur45": {"api_key": ACCOUNT_KEY, "credits": 10, "route": ["partner"]}},
        "logging": {"format": "json"},
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(settings))
    return path


class Daemon:
    """``python -m bridge run`` in a subprocess."""

    def __init__(self, config: Path, port: int, env: dict[str, str] | None = None) -> None:
        self.port = port
        self.log = config.parent / "daemon.log"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bridge", "run", "--config", str(config)],
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})},
            stdout=subprocess.DEVNULL,
            stderr=open(self.log, "ab"),
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"daemon exited: {self.log.read_text()[-2000:]}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise AssertionError("daemon did not start listening")

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def terminate(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(20)


@pytest.fixture
def daemons():
    started: list[Daemon] = []

    def start(*args, **kwargs) -> Daemon:
        daemon = Daemon(*args, **kwargs)
        started.append(daemon)
        return daemon

    yield start
    for daemon in started:
        if daemon.proc.poll() is None:
            daemon.kill()


def job_states(tmp_path: Path) -> list[str]:
    with sqlite3.connect(tmp_path / "bridge.db") as conn:
        return [row[0] for row in conn.execute("SELECT state FROM jobs ORDER BY id")]


async def test_sigkill_after_250_then_restart_sends_once(tmp_path, daemons):
    """Killed right after answering 250, the restarted daemon sends the SMS exactly once."""
    port = free_port()
    with FakeHttpServer(Reply(json=OK), Reply(json=OK)) as fake:
        config = write_config(tmp_path, port, fake.url)
        daemon = daemons(config, port)
        # Due in 2 s: the kill lands before the dispatcher could have claimed it.
        when = datetime.now(ZoneInfo("Europe/Paris")) + timedelta(seconds=2)
        raw = compose(f"arthur45@{ACCOUNT_KEY}|0612121515|date={when:%Y-%m-%d %H:%M:%S}", "Survive")
        code, _ = await smtp_send(port, raw)
        assert code == 250
        daemon.kill()
        assert fake.requests == [] and job_states(tmp_path) == ["queued"]
        daemons(config, port)
        await wait_until(lambda: job_states(tmp_path) == ["sent"], timeout=15, what="sent after restart")
        assert len(fake.requests) == 1
        assert fake.requests[0].json()["message"] == "Survive"


async def test_sigkill_during_provider_call_is_not_resent(tmp_path, daemons):
    """Killed while the provider holds the request: the job was recorded 'calling' (provider and
    reference) before the call, the restart marks it unknown at once, and it is not re-sent."""
    port = free_port()
    with FakeHttpServer(Reply(json=OK, delay=10), Reply(json=OK)) as fake:
        config = write_config(tmp_path, port, fake.url)
        daemon = daemons(config, port)
        code, _ = await smtp_send(port, compose(f"arthur45@{ACCOUNT_KEY}|0612121515", "Maybe out"))
        assert code == 250
        await wait_until(lambda: fake.requests, what="provider call")
        daemon.kill()
        assert job_states(tmp_path) == ["calling"]
        second = daemons(config, port)
        await wait_until(lambda: job_states(tmp_path) == ["unknown"], what="job unknown")
        with sqlite3.connect(tmp_path / "bridge.db") as conn:
            provider, ref = conn.execute("SELECT provider, client_ref FROM jobs").fetchone()
        assert provider == "partner" and ref == "m2s-1-1"
        time.sleep(0.5)
        assert len(fake.requests) == 1
        assert second.terminate() == 0


async def test_sigkill_while_jobs_wait_for_the_rate_limit_sends_them_after_restart(tmp_path, daemons):
    """Jobs claimed but still waiting for the provider's rate limit when the bridge is killed
    never reached the provider: after a restart they are sent, each exactly once."""
    port = free_port()
    with FakeHttpServer(*[Reply(json=OK)] * 12) as fake:
        config = write_config(tmp_path, port, fake.url)
        settings = yaml.safe_load(config.read_text())
        settings["providers"]["partner"]["rate"] = 1
        config.write_text(yaml.safe_dump(settings))
        daemon = daemons(config, port)
        for i in range(4):
            raw = compose(f"arthur45@{ACCOUNT_KEY}|06121215{i:02d}", f"Alert {i}", message_id=f"<m{i}@t>")
            assert (await smtp_send(port, raw))[0] == 250
        await wait_until(lambda: fake.requests, what="first provider call")
        daemon.kill()
        assert "unknown" not in job_states(tmp_path)
        daemons(config, port)
        await wait_until(lambda: job_states(tmp_path) == ["sent"] * 4, timeout=20, what="all sent")
        texts = sorted(r.json()["message"] for r in fake.requests)
        assert texts == [f"Alert {i}" for i in range(4)]


async def test_sigterm_finishes_in_flight_calls(tmp_path, daemons):
    """SIGTERM stops accepting but lets an in-flight provider call finish and record it."""
    port = free_port()
    with FakeHttpServer(Reply(json=OK, delay=1)) as fake:
        config = write_config(tmp_path, port, fake.url)
        daemon = daemons(config, port)
        assert (await smtp_send(port, compose(f"arthur45@{ACCOUNT_KEY}|0612121515")))[0] == 250
        await wait_until(lambda: fake.requests, what="provider call")
        assert daemon.terminate() == 0
        assert job_states(tmp_path) == ["sent"]
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()


async def test_sd_notify_ready_and_stopping(tmp_path, daemons):
    """Under systemd (NOTIFY_SOCKET), the daemon reports READY=1 and then STOPPING=1."""
    port = free_port()
    sock_path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind(str(sock_path))
        listener.settimeout(10)
        config = write_config(tmp_path, port, "http://127.0.0.1:1")
        daemon = daemons(config, port, env={"NOTIFY_SOCKET": str(sock_path)})
        assert listener.recv(256).startswith(b"READY=1")
        daemon.proc.send_signal(signal.SIGTERM)
        assert listener.recv(256).startswith(b"STOPPING=1")
        assert daemon.proc.wait(10) == 0


def test_bad_config_exits_2_without_traceback(tmp_path):
    """`mail2sms run` on a broken config exits 2 and names the key."""
    path = tmp_path / "config.yaml"
    path.write_text("smtp:\n  listen: nowhere\nproviders: {}\n")
    result = subprocess.run(
        [sys.executable, "-m", "bridge", "run", "--config", str(path)],
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=30,
    )
    assert result.returncode == 2
    assert "smtp.listen" in result.stderr and "Traceback" not in result.stderr


def test_port_in_use_exits_1(tmp_path):
    """A listener that cannot bind is a runtime failure (exit 1), explained in the log."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        config = write_config(tmp_path, port, "http://127.0.0.1:1")
        result = subprocess.run(
            [sys.executable, "-m", "bridge", "run", "--config", str(config)],
            cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=30,
        )
    assert result.returncode == 1
    assert "startup_failed" in result.stderr
