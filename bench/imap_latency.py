"""IMAP IDLE latency: APPEND -> provider call, against a private Dovecot on loopback.

Run from the repository root (defaults: 20 mails)::

    python bench/imap_latency.py [--mails N] [--pause SECONDS] [--poll SECONDS | --push]

What runs:

- a private Dovecot (tests/dovecot.py) with one mail account;
- the bridge, ``python -m bridge run`` in its own process, polling that account's INBOX
  with IDLE (``poll_interval: 1h``, so a mail can only arrive by an IDLE push), or with
  ``--poll S`` without IDLE (``idle: false``, ``poll_interval: S``: a NOOP every S), and
  sending through the ``http`` provider to
- a fake SMS gateway on loopback (in this process) that notes when each call arrives;
- the baseline, in this process: a bare IDLE client (raw socket, no library) on a second
  account of the same Dovecot, which notes when the server pushes ``* N EXISTS``.

Each round APPENDs one mail to the bare client's INBOX and waits for its push, then one
to the bridge's INBOX and waits for the provider call, then pauses ``--pause`` (1 s) so
the bridge has moved the mail and is back in IDLE (the next mail is then delivered by a
push, not found by the catch-up that follows a move). The bare client has a mailbox of
its own because the bridge's moves are changes too: Dovecot would report them to an IDLE
client on the same INBOX and mix them into its timings.

Per mail, from the tagged ``OK`` to the APPEND (the mail is in the mailbox):

- ``APPEND -> EXISTS push``: what any IDLE client waits for (the server's share);
- ``APPEND -> provider call``: the bridge (the figure the issue measures);
- ``bridge share``: the difference of their p50s (wake-up, FETCH, intake commit,
  dispatcher, HTTP call).

With ``--push`` the mails are delivered, not APPENDed: ``dovecot-lda`` puts each in the
bridge's INBOX, as Postfix would, and Dovecot's ``push_notification`` (ox driver) calls
the bridge's ``/imap/work/<push_secret>`` (the bridge keeps IDLE on as well) and, as the
baseline, a bare HTTP listener in this process, for the same mail. Per mail, from just
before ``dovecot-lda`` starts:

- ``delivery -> push``: when Dovecot's call reached the bare listener (the server's share,
  the LDA process's start included);
- ``delivery -> provider call``: the bridge;
- ``delivery -> LDA exit``: when the delivery program was done.

Then, with nothing arriving for ``QUIET`` (10) seconds, what waiting costs: the CPU time of
the bridge process and of Dovecot (its master and every child, the bare client's session
included), in % of one core.

Results are printed and written to ``bench/results/imap_latency.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import imaplib
import json
import os
import platform
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "imap_latency.json"
sys.path.insert(0, str(ROOT / "tests"))

from dovecot import Dovecot, MailUser, free_port, running_dovecot  # noqa: E402 - tests/ is put on the path above
from smtp_throughput import process_cpu  # noqa: E402 - bench/ is the script's own folder

WARMUP = 2
QUIET = 10.0
TEXT = re.compile(rb"imap bench (\d+)")

BRIDGE_CONFIG = """\
store: sqlite://bridge.db
smtp:
  listen: 127.0.0.1:0
  recipients: [mail2sms@bench.local]
replies:
  relay: 127.0.0.1:1
  from: mail2sms@bench.local
  enabled: false
providers:
  gateway:
    type: http
    url: http://127.0.0.1:{gateway_port}/sms
    body: {{"to": "{{to}}", "text": "{{text}}"}}
    success_status: [200]
accounts:
  bench:
    api_key: benchkey
    credits: 100000
    route: [gateway]
imap:
  work:
    host: 127.0.0.1
    port: {imap_port}
    tls: none
    user: {user}
    password: {password}
    idle: {idle}
    poll_interval: {poll}
    timeout: 10s
{push}logging:
  level: warning
"""
PUSH_SECRET = "bench-push-0123456789"
PUSH_CONFIG = """\
    push_secret: {secret}
http:
  listen: 127.0.0.1:{port}
"""


def mail(i: int) -> bytes:
    """One request for one SMS; the text carries ``i`` so the provider call can be matched."""
    return (
        f"From: bench@bench.local\r\nTo: mail2sms@bench.local\r\nSubject: bench@benchkey|+3361200{i:04d}\r\n"
        f"Message-ID: <imap-bench-{i}-{time.time_ns()}@bench.local>\r\n"
        f"Content-Type: text/plain; charset=utf-8\r\n\r\nimap bench {i}\r\n"
    ).encode()


# --- the fake SMS gateway ------------------------------------------------------------------


class Gateway:
    """A tiny HTTP/1.1 server that answers 200 to every POST and notes when each mail's call arrived."""

    def __init__(self) -> None:
        self.called: dict[int, float] = {}
        self._arrived: dict[int, asyncio.Event] = {}
        self.port = 0
        self._server: asyncio.AbstractServer | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in self._writers:          # the handlers then end on EOF, not by cancellation
            writer.close()
        await asyncio.sleep(0.05)

    def arrived(self, i: int) -> asyncio.Event:
        return self._arrived.setdefault(i, asyncio.Event())

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(re.search(rb"(?im)^content-length:\s*(\d+)", head).group(1))
                body = await reader.readexactly(length)
                now = time.monotonic()                 # the call is complete: the SMS is "sent"
                found = TEXT.search(body)
                if found:
                    i = int(found.group(1))
                    self.called.setdefault(i, now)
                    self.arrived(i).set()
                answer = b'{"id": "bench"}'
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                    b"Content-Length: %d\r\n\r\n%s" % (len(answer), answer)
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()


# --- the baseline: a bare IDLE client ------------------------------------------------------


class IdleWatcher(threading.Thread):
    """IDLEs on the mailbox over a raw socket and notes the time of every ``* N EXISTS``."""

    def __init__(self, account: MailUser) -> None:
        super().__init__(daemon=True, name="idle-watcher")
        self.pushes: list[float] = []
        self.idling = threading.Event()
        self._sock = socket.create_connection(("127.0.0.1", account.port), timeout=10)
        self._lines = self._sock.makefile("rb")
        self._lines.readline()                                    # greeting
        self._command(f'w1 LOGIN "{account.user}" "{account.password}"', "w1")
        self._command("w2 SELECT INBOX", "w2")

    def _command(self, line: str, tag: str) -> None:
        self._sock.sendall(line.encode() + b"\r\n")
        while True:
            answer = self._lines.readline()
            if answer.startswith(tag.encode() + b" "):
                if not answer.startswith(tag.encode() + b" OK"):
                    raise RuntimeError(f"watcher: {answer!r}")
                return

    def run(self) -> None:
        self._sock.settimeout(None)
        self._sock.sendall(b"w3 IDLE\r\n")
        try:
            for line in self._lines:
                if line.startswith(b"+"):
                    self.idling.set()
                elif line.startswith(b"* ") and line.rstrip().endswith(b" EXISTS"):
                    self.pushes.append(time.monotonic())
        except OSError:
            pass

    def close(self) -> None:
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._sock.close()


# --- the bridge ----------------------------------------------------------------------------


def start_bridge(workdir: Path, account: MailUser, gateway_port: int, poll: float | None,
                 push_port: int | None = None) -> subprocess.Popen:
    config = workdir / "bridge.yaml"
    config.write_text(BRIDGE_CONFIG.format(
        gateway_port=gateway_port, imap_port=account.port, user=account.user, password=account.password,
        idle="true" if poll is None else "false", poll="1h" if poll is None else poll,
        push="" if push_port is None else PUSH_CONFIG.format(secret=PUSH_SECRET, port=push_port),
    ))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    log = open(workdir / "bridge.log", "wb")
    try:
        return subprocess.Popen(
            [sys.executable, "-m", "bridge", "run", "--config", str(config)],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env, cwd=workdir,
        )
    finally:
        log.close()


def stop_bridge(proc: subprocess.Popen | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# --- the measurement -----------------------------------------------------------------------


def login(account: MailUser) -> imaplib.IMAP4:
    client = imaplib.IMAP4("127.0.0.1", account.port, timeout=10)
    client.login(account.user, account.password)
    return client


def append(client: imaplib.IMAP4, raw: bytes) -> float:
    """APPEND ``raw`` to INBOX; the time its tagged ``OK`` arrived."""
    typ, data = client.append("INBOX", None, None, raw)
    if typ != "OK":
        raise RuntimeError(f"APPEND refused: {data!r}")
    return time.monotonic()


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds used so far by ``pids`` (those still running)."""
    return sum(process_cpu(pid) or 0.0 for pid in pids)


async def quiet_cost(bridge_pid: int, server: Dovecot) -> dict:
    """% of one core the bridge and Dovecot use over ``QUIET`` seconds with no mail."""
    pids = server.processes()
    before = cpu_seconds([bridge_pid]), cpu_seconds(pids)
    await asyncio.sleep(QUIET)
    after = cpu_seconds([bridge_pid]), cpu_seconds(pids)
    return {"bridge_cpu_pct": round((after[0] - before[0]) / QUIET * 100, 2),
            "dovecot_cpu_pct": round((after[1] - before[1]) / QUIET * 100, 2)}


async def measure(server: Dovecot, workdir: Path, mails: int, pause: float,
                  poll: float | None) -> tuple[list[dict], dict]:
    """For ``WARMUP + mails`` rounds: one mail to the bare client's mailbox, then one to the
    bridge's; one row per measured round. Then the quiet cost."""
    bridged, bare = server.add_user(), server.add_user()
    gateway = Gateway()
    await gateway.start()
    watcher = IdleWatcher(bare)
    watcher.start()
    proc = start_bridge(workdir, bridged, gateway.port, poll)
    clients: list[imaplib.IMAP4] = []
    rows = []
    try:
        clients = [login(bare), login(bridged)]
        await asyncio.to_thread(watcher.idling.wait, 10)
        for i in range(WARMUP + mails):
            raw = mail(i)
            pushed_before = len(watcher.pushes)
            to_bare = await asyncio.to_thread(append, clients[0], raw)
            deadline = time.monotonic() + 15
            while len(watcher.pushes) == pushed_before:       # the thread notes the time itself
                if time.monotonic() > deadline:
                    raise RuntimeError(f"mail {i}: no EXISTS pushed to the bare client within 15 s")
                await asyncio.sleep(0.01)
            push = watcher.pushes[pushed_before]
            to_bridge = await asyncio.to_thread(append, clients[1], raw)
            try:
                await asyncio.wait_for(gateway.arrived(i).wait(), 15)
            except asyncio.TimeoutError:
                tail = (workdir / "bridge.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"mail {i}: no provider call within 15 s\n{tail}") from None
            # see --pause; polling, plus a random part of a period, so mails arrive at every
            # point of the bridge's poll cycle (as they would), not always at the same one
            await asyncio.sleep(pause + (random.uniform(0, poll) if poll else 0.0))
            if i >= WARMUP:
                rows.append({
                    "mail": i - WARMUP,
                    "push_ms": (push - to_bare) * 1000,
                    "call_ms": (gateway.called[i] - to_bridge) * 1000,
                })
        quiet = await quiet_cost(proc.pid, server)
    finally:
        for client in clients:
            try:
                client.logout()
            except (imaplib.IMAP4.error, OSError):
                pass
        stop_bridge(proc)
        watcher.close()
        await gateway.close()
    return rows, quiet


class PushWatcher:
    """A bare HTTP listener that answers every request 200 and notes when each arrived."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.pushes: list[float] = []
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = re.search(rb"(?im)^content-length:\s*(\d+)", head)
                await reader.readexactly(int(length.group(1)) if length else 0)
                self.pushes.append(time.monotonic())
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


async def measure_push(server: Dovecot, workdir: Path, mails: int, pause: float, bridge_port: int,
                       watcher_port: int) -> tuple[list[dict], dict]:
    """``--push``: for ``WARMUP + mails`` rounds, one mail delivered by ``dovecot-lda`` to the
    bridge's INBOX; Dovecot pushes it to the bridge and to the bare listener."""
    bridged = server.add_user()
    bridged.enable_push()
    gateway, watcher = Gateway(), PushWatcher(watcher_port)
    await gateway.start()
    await watcher.start()
    proc = start_bridge(workdir, bridged, gateway.port, None, push_port=bridge_port)
    rows = []
    try:
        await asyncio.sleep(2.0)                      # connected, caught up, in IDLE
        for i in range(WARMUP + mails):
            pushed_before = len(watcher.pushes)
            started = time.monotonic()
            await asyncio.to_thread(bridged.deliver_lda, mail(i))
            delivered = time.monotonic()
            try:
                await asyncio.wait_for(gateway.arrived(i).wait(), 15)
            except asyncio.TimeoutError:
                tail = (workdir / "bridge.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"mail {i}: no provider call within 15 s\n{tail}") from None
            deadline = time.monotonic() + 15
            while len(watcher.pushes) == pushed_before:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"mail {i}: Dovecot pushed nothing to the bare listener within 15 s")
                await asyncio.sleep(0.01)
            await asyncio.sleep(pause)
            if i >= WARMUP:
                rows.append({
                    "mail": i - WARMUP,
                    "push_ms": (watcher.pushes[pushed_before] - started) * 1000,
                    "call_ms": (gateway.called[i] - started) * 1000,
                    "lda_ms": (delivered - started) * 1000,
                })
        quiet = await quiet_cost(proc.pid, server)
    finally:
        stop_bridge(proc)
        await watcher.close()
        await gateway.close()
    return rows, quiet


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = (len(ordered) - 1) * q / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def summary(values: list[float]) -> dict:
    return {
        "p50_ms": round(percentile(values, 50), 1),
        "max_ms": round(max(values), 1) if values else None,
        "min_ms": round(min(values), 1) if values else None,
    }


def machine() -> dict:
    model = ""
    try:
        model = next(
            (line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
             if line.startswith("model name")), "",
        )
    except OSError:
        pass
    dovecot = subprocess.run(["dovecot", "--version"], capture_output=True, text=True).stdout.strip()
    return {
        "nproc": os.cpu_count(), "cpu": model, "python": platform.python_version(),
        "kernel": platform.release(), "dovecot": dovecot, "loadavg_before": [round(x, 2) for x in os.getloadavg()],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mails", "-n", type=int, default=20, help="mails measured (default 20)")
    parser.add_argument("--pause", type=float, default=1.0,
                        help="seconds after each provider call before the next mail (default 1)")
    how = parser.add_mutually_exclusive_group()
    how.add_argument("--poll", type=float, metavar="SECONDS",
                     help="the bridge polls without IDLE, a NOOP every SECONDS (default: IDLE)")
    how.add_argument("--push", action="store_true",
                     help="deliver with dovecot-lda; Dovecot pushes each mail to the bridge (IDLE kept on)")
    args = parser.parse_args(argv)
    if args.mails < 1 or args.pause < 0 or (args.poll is not None and args.poll <= 0):
        parser.error("--mails must be positive, --pause not negative and --poll above 0")

    about = machine()
    workdir = Path(tempfile.mkdtemp(prefix="mail2sms-imap-bench-"))
    try:
        if args.push:
            bridge_port, watcher_port = free_port(), free_port()
            urls = [f"http://127.0.0.1:{bridge_port}/imap/work/{PUSH_SECRET}", f"http://127.0.0.1:{watcher_port}/"]
            with running_dovecot(push_urls=urls) as server:
                rows, quiet = asyncio.run(measure_push(server, workdir, args.mails, args.pause, bridge_port,
                                                       watcher_port))
        else:
            with running_dovecot() as server:
                rows, quiet = asyncio.run(measure(server, workdir, args.mails, args.pause, args.poll))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    calls = [r["call_ms"] for r in rows]
    pushes = [r["push_ms"] for r in rows]
    came = "delivery" if args.push else "append"
    result = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": about,
        "mails": args.mails,
        "pause_s": args.pause,
        "waiting": ("IDLE + Dovecot push" if args.push else "IDLE") if args.poll is None
        else f"NOOP every {args.poll:g} s",
        "quiet_cost": quiet,
        f"{came}_to_provider_call": summary(calls),
        f"{came}_to_server_push": summary(pushes),
        "bridge_share_p50_ms": round(percentile(calls, 50) - percentile(pushes, 50), 1) if args.poll is None else None,
        "rows": [{k: round(v, 2) if isinstance(v, float) else v for k, v in r.items()} for r in rows],
    }
    lines = [(f"APPEND -> provider call (bridge, {result['waiting']})", "append_to_provider_call"),
             ("APPEND -> EXISTS push (bare IDLE client)", "append_to_server_push")]
    if args.push:
        result["delivery_to_lda_exit"] = summary([r["lda_ms"] for r in rows])
        lines = [(f"delivery -> provider call (bridge, {result['waiting']})", "delivery_to_provider_call"),
                 ("delivery -> push (bare HTTP listener)", "delivery_to_server_push"),
                 ("delivery -> dovecot-lda exit", "delivery_to_lda_exit")]
    print(f"{about['dovecot'] and 'Dovecot ' + about['dovecot']}, {about['nproc']} CPU ({about['cpu']}), "
          f"load before {about['loadavg_before']}; {args.mails} mails, one at a time")
    for label, key in lines:
        figures = result[key]
        print(f"  {label:50s} p50 {figures['p50_ms']:7.1f} ms   max {figures['max_ms']:7.1f} ms   "
              f"min {figures['min_ms']:7.1f} ms")
    if args.poll is None:
        print(f"  {'bridge share (difference of the p50s)':50s} p50 {result['bridge_share_p50_ms']:7.1f} ms")
    print(f"  quiet for {QUIET:g} s: bridge {quiet['bridge_cpu_pct']} % of a core, "
          f"Dovecot {quiet['dovecot_cpu_pct']} %")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written to {RESULTS.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
