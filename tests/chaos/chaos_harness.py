"""Black-box chaos harness: a daemon subprocess, the mails, the clients, the kills, the store.

The daemon under test is ``python -m bridge run`` from this checkout, started and SIGKILLed
as a process. The harness talks to it only over SMTP (sending mail), HTTP (it is the SMS
gateway, see ``chaos_fakes``), SMTP again (it is the reply relay) and by reading the SQLite
file read-only, through these columns only: jobs(id, number, text, state, provider),
balances(login, balance), ledger(login, amount, reason, job), replies(to_addr, code, state).
"""

from __future__ import annotations

import os
import random
import signal
import smtplib
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.policy import SMTP as SMTP_POLICY
from pathlib import Path
from typing import Any

import yaml

from chaos_fakes import FlakyGateway, StatusRelay

REPO = Path(__file__).resolve().parents[2]
LOGIN = "chaos"
API_KEY = "c4a05-k3y-0123456789"
OPENING = 1_000_000
RECIPIENT = "mail2sms@example.com"
PRICE_PER_PART = 1                      # every SMS of the corpus is one GSM-7 part

#: Job states in which the daemon still owes an outcome (today's and the rebuilt core's).
BUSY_JOB_STATES = ("queued", "claimed", "calling", "sending")
#: Reply states in which a status mail is still to be sent.
BUSY_REPLY_STATES = ("queued", "claimed", "sending")


def seed_from_env(default: int) -> int:
    """``CHAOS_SEED`` when set, else ``default``."""
    value = os.environ.get("CHAOS_SEED", "").strip()
    return int(value) if value else default


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --- config -----------------------------------------------------------------------------


def write_config(
    folder: Path, smtp_port: int, gateway: FlakyGateway, relay: StatusRelay, *, lookup: bool
) -> Path:
    """The daemon's config.yaml; ``lookup`` adds the gateway lookup and the lease settings."""
    provider: dict[str, Any] = {
        "type": "http",
        "url": gateway.send_url,
        "method": "POST",
        "body": {"to": "{to}", "text": "{text}", "ref": "{reference}"},
        "success_status": [200],
        "definite_503": True,                           # this gateway's 503 means "not taken"
        "permanent_status": [400],
        "message_id_path": "id",
        "timeout": 1.5,
        "rate": 500,                                    # the gateway's rate is not under test
        "circuit": {"failures": 50, "cooldown": 1},     # keep random 503s from stalling the run
    }
    dispatcher: dict[str, Any] = {
        "concurrency": 16, "poll_interval": 0.1, "backoff_base": 0.2, "backoff_max": 2,
        "grace_period": 2,
    }
    if lookup:
        provider["reconcile_url"] = gateway.lookup_url
        dispatcher.update({"lease": 3, "sweep_interval": 1, "reconcile_interval": 1, "reconcile_after": 2})
    settings = {
        "timezone": "Europe/Paris",
        "store": "sqlite://bridge.db",
        "smtp": {"listen": f"127.0.0.1:{smtp_port}", "recipients": [RECIPIENT]},
        "replies": {"relay": f"127.0.0.1:{relay.port}", "from": RECIPIENT, "rate_per_hour": 100000,
                    "timeout": 5},
        "dispatcher": dispatcher,
        "pricing": {"*": PRICE_PER_PART},
        "providers": {"gateway": provider},
        "accounts": {LOGIN: {"api_key": API_KEY, "credits": OPENING, "route": ["gateway"],
                             "max_per_number_per_hour": 1000}},
        "logging": {"format": "json", "level": os.environ.get("CHAOS_LOG_LEVEL", "warning")},
    }
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(settings, sort_keys=False))
    return path


# --- the daemon ---------------------------------------------------------------------------


class Daemon:
    """``python -m bridge run`` of this checkout as a subprocess, restartable."""

    def __init__(self, config: Path, port: int) -> None:
        self.config = config
        self.port = port
        self.log = config.parent / "daemon.log"
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    def start(self, timeout: float = 30.0) -> None:
        """Start and wait until the SMTP port answers; fail with the log's tail otherwise."""
        with open(self.log, "ab") as log:
            log.write(f'{{"chaos": "start", "n": {self.starts}}}\n'.encode())
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "bridge", "run", "--config", str(self.config)],
                cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log,
            )
        self.starts += 1
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"daemon exited with {self.proc.returncode} at start:\n{self.tail()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return
            except OSError:
                time.sleep(0.05)
        raise AssertionError(f"daemon not listening after {timeout} s:\n{self.tail()}")

    def kill(self) -> None:
        """SIGKILL and reap."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(15)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it does not exit within 20 s."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.kill()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def tail(self, chars: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return "(no log)"


# --- the mails ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Mail:
    """One mail of the corpus and what the daemon must make of it."""

    index: int
    message_id: str                    # "<...>"
    sender: str
    raw: bytes
    text: str
    valid: tuple[str, ...]             # E.164 numbers that must each get one SMS (or a status)
    status: frozenset[int] = frozenset()   # the one status the mail itself must get, if any

    @property
    def bare_id(self) -> str:
        return self.message_id.strip("<>")


def _number(serial: int) -> tuple[str, str]:
    """A distinct valid French mobile number: (as written in the subject, E.164)."""
    digits = f"61{serial:07d}"
    national = "0" + digits
    return (national if serial % 2 else "+33" + digits), "+33" + digits


def build_corpus(count: int, seed: int) -> list[Mail]:
    """``count`` mails: mostly one number, some several, some partly or wholly invalid."""
    rng = random.Random(seed)
    mails, serial = [], 0
    for i in range(count):
        text = f"Chaos {seed} mail {i}: alert {rng.randrange(10**6):06d}"
        subject_key, body, status, written, valid = API_KEY, text, frozenset(), [], []
        roll = rng.random()
        wanted = 1 if roll < 0.80 else rng.randint(2, 4) if roll < 0.92 else rng.randint(1, 2)
        for _ in range(wanted):
            as_written, e164 = _number(serial)
            serial += 1
            written.append(as_written)
            valid.append(e164)
        if 0.92 <= roll < 0.96:                 # some numbers invalid: the others are sent, 113
            written.append(f"06AB{i:06d}"[:10])
            status = frozenset({113})
        elif roll >= 0.96:                      # nothing can be sent: one numbered status
            kind = rng.choice(("no_number", "bad_key", "empty", "malformed"))
            valid = []
            if kind == "no_number":
                written, status = [f"06AB{i:06d}"[:10]], frozenset({114})
            elif kind == "bad_key":
                subject_key, status = "wrong-key", frozenset({102})
            elif kind == "empty":
                body, status = "", frozenset({110})
            else:
                status = frozenset({105, 109})
        subject = f"{LOGIN}@{subject_key}|{';'.join(written)}"
        if status & {105, 109}:
            subject = f"chaos mail {i} without any field"
        message_id = f"<chaos-{seed}-{i}@clients.example>"
        sender = f"client{i}@clients.example"
        message = EmailMessage()
        message["From"] = sender
        message["To"] = RECIPIENT
        message["Subject"] = subject
        message["Message-ID"] = message_id
        message.set_content(body or "\n")
        mails.append(Mail(i, message_id, sender, message.as_bytes(policy=SMTP_POLICY), text,
                          tuple(valid), status))
    return mails


# --- the clients ----------------------------------------------------------------------------


@dataclass
class Delivery:
    """What the SMTP clients achieved."""

    accepted: set[int] = field(default_factory=set)        # mail index -> got 250 to DATA
    refused: dict[int, str] = field(default_factory=dict)  # 5xx answers (never expected)
    attempts: int = 0
    resent: int = 0                                        # DATA sent again after a failure
    lock: threading.Lock = field(default_factory=threading.Lock)


class Senders:
    """``connections`` threads sending the corpus like MTAs: retry until 250, same bytes."""

    def __init__(self, port: int, mails: list[Mail], connections: int, deadline: float) -> None:
        self.port = port
        self.mails = mails
        self.deadline = deadline          # time.monotonic() after which workers give up
        self.delivery = Delivery()
        self._next = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._work, name=f"smtp-{n}", daemon=True)
                         for n in range(connections)]

    def start(self) -> Senders:
        for thread in self._threads:
            thread.start()
        return self

    def done(self) -> bool:
        return not any(t.is_alive() for t in self._threads)

    def join(self, timeout: float) -> None:
        end = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, end - time.monotonic()))

    def stop(self) -> None:
        self._stop.set()
        self.join(15)

    def accepted_count(self) -> int:
        with self.delivery.lock:
            return len(self.delivery.accepted)

    def _take(self) -> Mail | None:
        with self._lock:
            if self._next >= len(self.mails):
                return None
            self._next += 1
            return self.mails[self._next - 1]

    def _work(self) -> None:
        client: smtplib.SMTP | None = None
        try:
            while (mail := self._take()) is not None:
                client = self._deliver(mail, client)
        finally:
            _close(client)

    def _deliver(self, mail: Mail, client: smtplib.SMTP | None) -> smtplib.SMTP | None:
        tries = 0
        while not self._stop.is_set() and time.monotonic() < self.deadline:
            tries += 1
            with self.delivery.lock:
                self.delivery.attempts += 1
                self.delivery.resent += tries > 1
            try:
                if client is None:
                    client = smtplib.SMTP("127.0.0.1", self.port, timeout=20)
                    client.ehlo("chaos-client.example")
                code, answer = client.mail(mail.sender)
                if code == 250:
                    code, answer = client.rcpt(RECIPIENT)
                if code == 250:
                    code, answer = client.data(mail.raw)
            except (OSError, smtplib.SMTPException):
                _close(client)                  # the daemon died mid-session: reconnect, resend
                client = None
                time.sleep(min(0.05 * tries, 0.5))
                continue
            if code == 250:
                with self.delivery.lock:
                    self.delivery.accepted.add(mail.index)
                return client
            if 500 <= code < 600:
                with self.delivery.lock:
                    self.delivery.refused[mail.index] = f"{code} {answer!r}"
                try:
                    client.rset()
                except (OSError, smtplib.SMTPException):
                    _close(client)
                    client = None
                return client
            _close(client)                      # 4xx: the MTA keeps the mail and retries
            client = None
            time.sleep(min(0.05 * tries, 0.5))
        return client


def _close(client: smtplib.SMTP | None) -> None:
    if client is None:
        return
    try:
        client.close()
    except OSError:
        pass


# --- the kills ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Kill:
    """One SIGKILL: when, what had happened, and the gateway requests it interrupted."""

    at: float                          # time.monotonic()
    accepted: int                      # mails accepted so far
    sms: int                           # SMS the gateway had received so far
    in_flight: int                     # requests read but not answered at that moment
    in_flight_settled: int             # ... or answered less than SETTLE s before it
    calling: frozenset[int] = frozenset()  # jobs the store had recorded 'calling' (on the wire)


#: An answer written this short a time before a kill may not have been read and recorded
#: by the daemon yet (read, then one durable write): such a call still counts as in flight.
SETTLE = float(os.environ.get("CHAOS_SETTLE", "0.5"))


def kill_plan(rng: random.Random, kills: int, mails: int, sms: int) -> list[tuple[str, int]]:
    """When to kill: about half while mails arrive (by mails accepted), the rest during
    dispatch (by SMS received at the gateway); thresholds increase."""
    during_intake = (kills + 1) // 2
    intake = sorted(rng.randint(int(mails * 0.1), int(mails * 0.9)) for _ in range(during_intake))
    dispatch = sorted(rng.randint(int(sms * 0.55), int(sms * 0.95)) for _ in range(kills - during_intake))
    return [("accepted", n) for n in intake] + [("sms", n) for n in dispatch]


def run_kills(
    daemon: Daemon, gateway: FlakyGateway, senders: Senders, plan: list[tuple[str, int]],
    rng: random.Random, store: Path, wait_limit: float,
) -> list[Kill]:
    """Kill the daemon at each point of ``plan`` (or after ``wait_limit`` s of waiting, or
    once there is nothing left to do), record what was in flight, restart it."""
    kills: list[Kill] = []
    for what, threshold in plan:
        time.sleep(rng.uniform(0.3, 1.2))               # let the restarted daemon get going
        end = time.monotonic() + wait_limit
        while time.monotonic() < end:
            reached = (senders.accepted_count() if what == "accepted" else len(gateway.received()))
            if reached >= threshold or (senders.done() and quiescent(store, allow_unknown=True)):
                break
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 0.05))
        moment = time.monotonic()
        daemon.kill()
        open_now = gateway.in_flight(moment, 0.0)
        settled = gateway.in_flight(moment, SETTLE)
        kills.append(Kill(
            at=moment, accepted=senders.accepted_count(), sms=len(gateway.received()),
            in_flight=len(open_now), in_flight_settled=len(settled), calling=calling_jobs(store),
        ))
        time.sleep(rng.uniform(0.0, 0.5))
        daemon.start()
    return kills


# --- the store, read-only -------------------------------------------------------------------


def calling_jobs(path: Path) -> frozenset[int]:
    """The jobs the (dead) daemon had recorded as on the wire: state 'calling'."""
    if not path.exists():
        return frozenset()
    conn = read_store(path)
    try:
        return frozenset(r[0] for r in conn.execute("SELECT id FROM jobs WHERE state='calling'"))
    finally:
        conn.close()


def read_store(path: Path) -> sqlite3.Connection:
    """A read-only connection (the daemon owns the file)."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    conn.execute("PRAGMA busy_timeout=10000")
    return conn


def job_states(path: Path) -> Counter:
    if not path.exists():
        return Counter()
    with _closing(read_store(path)) as conn:
        return Counter(dict(conn.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state")))


def reply_states(path: Path) -> Counter:
    if not path.exists():
        return Counter()
    with _closing(read_store(path)) as conn:
        return Counter(dict(conn.execute("SELECT state, COUNT(*) FROM replies GROUP BY state")))


def quiescent(path: Path, *, allow_unknown: bool) -> bool:
    """No job or reply is waiting for the daemon (``unknown`` counts as waiting unless allowed)."""
    try:
        jobs, replies = job_states(path), reply_states(path)
    except sqlite3.Error:
        return False
    busy = BUSY_JOB_STATES + (() if allow_unknown else ("unknown",))
    return not any(jobs[s] for s in busy) and not any(replies[s] for s in BUSY_REPLY_STATES)


def wait_quiescent(path: Path, daemon: Daemon, *, allow_unknown: bool, timeout: float) -> tuple[float, str | None]:
    """Poll the store until quiescent twice in a row: (seconds waited, None), or on timeout
    (seconds, what was still pending). A daemon that died on its own fails at once."""
    start = time.monotonic()
    calm = 0
    while time.monotonic() - start < timeout:
        if not daemon.alive():
            raise AssertionError(f"daemon died on its own:\n{daemon.tail()}")
        calm = calm + 1 if quiescent(path, allow_unknown=allow_unknown) else 0
        if calm >= 2:
            return time.monotonic() - start, None
        time.sleep(0.5)
    return time.monotonic() - start, (
        f"not quiescent after {timeout:.0f} s: jobs {dict(job_states(path))}, "
        f"replies {dict(reply_states(path))}")


@dataclass(frozen=True)
class Snapshot:
    """What the store says at the end, through the promised columns only."""

    jobs: list[tuple[int, str, str, str, str | None]]      # id, number, text, state, provider
    balances: dict[str, int]
    ledger: list[tuple[str, int, str, int | None]]         # login, amount, reason, job
    replies: list[tuple[str, int, str]]                    # to_addr, code, state
    unknown_errors: dict[int, str]                         # unknown job -> why the bridge says so


def snapshot(path: Path) -> Snapshot:
    with _closing(read_store(path)) as conn:
        return Snapshot(
            jobs=list(conn.execute("SELECT id, number, text, state, provider FROM jobs ORDER BY id")),
            balances=dict(conn.execute("SELECT login, balance FROM balances")),
            ledger=list(conn.execute("SELECT login, amount, reason, job FROM ledger")),
            replies=list(conn.execute("SELECT to_addr, code, state FROM replies")),
            unknown_errors=dict(conn.execute("SELECT id, COALESCE(last_error, '') FROM jobs WHERE state='unknown'")),
        )


class _closing:
    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def __enter__(self) -> sqlite3.Connection:
        return self.conn

    def __exit__(self, *exc_info: object) -> None:
        self.conn.close()
