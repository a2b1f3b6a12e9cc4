"""``smtp.processes``: SMTP front processes beside the daemon, as real processes on one port."""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import ACCOUNT_KEY, base_settings, compose, make_config
from provider_fakes import closed_port

from bridge.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent


def children(pid: int) -> list[int]:
    """The processes ``pid`` started (``/proc``), alive."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            fields = stat.rsplit(")", 1)[1].split()
            if int(fields[1]) == pid and fields[0] != "Z":
                found.append(int(entry))
    return found


class Daemon:
    """``python -m bridge run`` with ``smtp.processes: 3`` and the ``file`` provider."""

    def __init__(self, tmp_path: Path, processes: int = 3, smtp: dict | None = None) -> None:
        self.port = closed_port()
        settings = {
            "store": "sqlite://bridge.db",
            "smtp": {"listen": f"127.0.0.1:{self.port}", "recipients": ["mail2sms@example.com"],
                     "processes": processes, **(smtp or {})},
            "replies": {"relay": "127.0.0.1:1", "from": "mail2sms@example.com", "enabled": False},
            "dispatcher": {"poll_interval": 0.05},
            "providers": {"outbox": {"type": "file", "path": "outbox.jsonl"}},
            "accounts": {"arthur45": {"api_key": ACCOUNT_KEY, "credits": 1000, "route": ["outbox"]}},
        }
        self.dir = tmp_path
        config = tmp_path / "config.yaml"
        config.write_text(yaml.safe_dump(settings))
        self.log = tmp_path / "daemon.log"
        self.proc = subprocess.Popen([sys.executable, "-m", "bridge", "run", "--config", str(config)], cwd=REPO,
                                     env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.DEVNULL,
                                     stderr=open(self.log, "ab"))
        wait(self.started, "the daemon and its fronts to start")
        assert len(children(self.proc.pid)) == processes - 1

    def started(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"daemon exited: {self.log.read_text()[-2000:]}")
        return '"bridge_started"' in self.log.read_text()

    def outbox(self) -> list[dict]:
        path = self.dir / "outbox.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []

    def jobs(self) -> list[tuple[int, str, str]]:
        with sqlite3.connect(self.dir / "bridge.db") as conn:
            return conn.execute("SELECT id, number, state FROM jobs ORDER BY id").fetchall()


def wait(predicate, what: str, timeout: float = 20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def send_each_on_its_own_connection(port: int, numbers: list[str]) -> list[tuple[int, bytes]]:
    """One connection per mail, as ``sendmail``-style clients do; the DATA replies."""
    import smtplib

    replies = []
    for i, number in enumerate(numbers):
        raw = compose(f"arthur45@{ACCOUNT_KEY}|{number}", f"front {i}", message_id=f"<front-{i}@example.org>")
        with smtplib.SMTP("127.0.0.1", port, timeout=20) as client:
            client.ehlo()
            client.mail("alice@example.org")
            client.rcpt("mail2sms@example.com")
            replies.append(client.data(raw))
    return replies


@pytest.fixture
def daemon(tmp_path):
    started = Daemon(tmp_path)
    yield started
    if started.proc.poll() is None:
        started.proc.kill()
        started.proc.wait(10)
    for pid in children(started.proc.pid):
        os.kill(pid, signal.SIGKILL)


def test_every_mail_is_committed_once_whichever_process_takes_it(daemon):
    """60 mails, each on its own connection, spread by the kernel over the daemon and its two
    fronts: every one gets its 250 after the commit and goes out exactly once."""
    numbers = [f"+336121215{i:02d}" for i in range(60)]
    fronts = children(daemon.proc.pid)
    writes = sum(_writes(pid) for pid in fronts)
    replies = send_each_on_its_own_connection(daemon.port, numbers)
    assert sum(_writes(pid) for pid in fronts) - writes >= 12  # the fronts answered sessions of their own
    assert all(code == 250 and b"1 SMS queued" in text for code, text in replies), replies
    wait(lambda: len(daemon.outbox()) >= 60, "the SMS to go out")
    time.sleep(0.3)
    assert sorted(line["to"] for line in daemon.outbox()) == sorted(numbers)
    assert [state for _, _, state in daemon.jobs()] == ["sent"] * 60


def test_a_front_that_dies_is_started_again_and_the_daemon_stops_them_all(daemon):
    """kill -9 of a front: the daemon starts another and mail keeps coming in; SIGTERM to the
    daemon stops every front with it (no process left listening)."""
    first = children(daemon.proc.pid)
    os.kill(first[0], signal.SIGKILL)
    wait(lambda: len(set(children(daemon.proc.pid)) - set(first)) == 1, "a new front")
    replies = send_each_on_its_own_connection(daemon.port, [f"+336121216{i:02d}" for i in range(20)])
    assert all(code == 250 for code, _ in replies), replies
    wait(lambda: len(daemon.outbox()) >= 20, "the SMS to go out")
    fronts = children(daemon.proc.pid)
    daemon.proc.send_signal(signal.SIGTERM)
    assert daemon.proc.wait(30) == 0
    assert not [pid for pid in fronts if Path(f"/proc/{pid}").exists()
                and "Z" not in Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[:1]]
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", daemon.port), timeout=1).close()


def test_a_front_whose_daemon_is_gone_stops_listening(daemon):
    """The daemon killed (-9): its fronts notice the socket to it closed and exit, so no
    process goes on taking mail it could not commit."""
    fronts = children(daemon.proc.pid)
    daemon.proc.kill()
    daemon.proc.wait(10)
    wait(lambda: not any(Path(f"/proc/{pid}").exists() and _alive(pid) for pid in fronts), "the fronts to exit")


def _writes(pid: int) -> int:
    """The write system calls ``pid`` made so far (``/proc/PID/io``)."""
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("syscw:"):
            return int(line.split()[1])
    return 0


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_starttls_and_auth_work_in_every_process(tmp_path, certificate):
    """30 sessions with STARTTLS and AUTH, spread over the daemon and its fronts: each is
    offered AUTH only after STARTTLS, logs in, and sends for its own account; a wrong
    password is refused."""
    import smtplib

    from test_smtp_tls_auth import client_context

    cert, key = certificate
    daemon = Daemon(tmp_path, smtp={"tls": {"cert": str(cert), "key": str(key)},
                                    "auth": {"users": {"zabbix": {"password": "s3cret", "account": "arthur45"}}}})
    try:
        fronts = children(daemon.proc.pid)
        writes = sum(_writes(pid) for pid in fronts)
        for i in range(30):
            with smtplib.SMTP("127.0.0.1", daemon.port, timeout=20) as client:
                client.ehlo()
                assert not client.has_extn("auth")
                client.starttls(context=client_context())
                client.ehlo()
                client.login("zabbix", "s3cret")
                client.mail("alice@example.org")
                client.rcpt("mail2sms@example.com")
                raw = compose(f"arthur45@{ACCOUNT_KEY}|+336121217{i:02d}", f"tls {i}", message_id=f"<tls-{i}@x>")
                code, text = client.data(raw)
                assert code == 250 and b"1 SMS queued" in text, (code, text)
        assert sum(_writes(pid) for pid in fronts) - writes >= 12
        with smtplib.SMTP("127.0.0.1", daemon.port, timeout=20) as client:
            client.starttls(context=client_context())
            client.ehlo()
            with pytest.raises(smtplib.SMTPAuthenticationError):
                client.login("zabbix", "wrong")
        wait(lambda: len(daemon.outbox()) >= 30, "the SMS to go out")
    finally:
        daemon.proc.kill()
        daemon.proc.wait(10)
        for pid in children(daemon.proc.pid):
            os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize("value", [0, 65, "two", 1.5, True])
def test_a_wrong_number_of_processes_names_the_key(tmp_path, value):
    settings = base_settings(tmp_path)
    settings["smtp"]["processes"] = value
    with pytest.raises(ConfigError) as raised:
        make_config(tmp_path, settings)
    assert "smtp.processes" in str(raised.value)
