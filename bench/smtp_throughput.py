"""SMTP throughput of the bridge against a bare aiosmtpd server, and intake->provider latency.

Run from the repository root (defaults: 2000 mails over 16 connections)::

    python bench/smtp_throughput.py [--messages N] [--concurrency C] [--quick]

(a) baseline: a bare aiosmtpd server in a separate process whose DATA handler answers
    ``250 OK`` and discards the mail;
(b) the bridge: ``python -m bridge run`` in a separate process with a SQLite store
    (WAL, synchronous=FULL) and the ``file`` provider.

The client (this process, aiosmtplib) keeps C connections open and sends the N mails over
them, MAIL/RCPT/DATA one after the other on each connection. Throughput is N / (first
connect -> last ``250`` to DATA). For the bridge it also matches every line of the
provider's ``outbox.jsonl`` to its mail (by the text ``bench message I``) and reports the
delay from the ``250`` to DATA to the provider call (the line's ``time``, which the file
provider writes with millisecond precision, truncated).

Results are printed and written to ``bench/results/latest.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "latest.json"
RCPT = "mail2sms@bench.local"
SENDER = "bench@bench.local"
LOGIN_KEY = "bench@benchkey"  # account "bench", api_key "benchkey" (see BRIDGE_CONFIG)
WARMUP = 50
GOAL = 0.70
TEXT_RE = re.compile(r"bench message (\d+)")


# --- the baseline server (runs in its own process) ----------------------------------------


def serve_baseline(port: int) -> None:
    """A bare aiosmtpd server on 127.0.0.1:PORT that accepts and discards every mail."""
    from aiosmtpd.smtp import SMTP

    class Discard:
        async def handle_DATA(self, server, session, envelope) -> str:  # noqa: ANN001
            return "250 OK"

    async def main() -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        server = await loop.create_server(
            lambda: SMTP(Discard(), data_size_limit=262144, enable_SMTPUTF8=True, ident="baseline"),
            "127.0.0.1",
            port,
        )
        await stop.wait()
        server.close()
        await server.wait_closed()

    asyncio.run(main())


# --- helpers --------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, proc: subprocess.Popen, what: str, log: Path | None, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log.read_text(errors="replace")[-2000:] if log and log.exists() else ""
            raise RuntimeError(f"{what} exited with code {proc.returncode} before listening\n{tail}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on 127.0.0.1:{port} within {timeout:.0f} s")


def stop_process(proc: subprocess.Popen | None, grace: float = 15.0) -> None:
    """Terminate (SIGTERM: the bridge shuts down gracefully), then kill if it lingers."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.pop("MAIL2SMS_CONFIG", None)
    return env


def number_for(i: int) -> str:
    return f"+33612{i % 1_000_000:06d}"  # a valid French mobile number


def build_message(i: int, tag: str) -> bytes:
    return (
        f"From: {SENDER}\r\n"
        f"To: {RCPT}\r\n"
        f"Subject: {LOGIN_KEY}|{number_for(i)}\r\n"
        f"Message-ID: <bench-{tag}-{i}@bench.local>\r\n"
        f"Date: Sun, 22 Nov 2026 12:00:00 +0000\r\n"
        "MIME-Version: 1.0\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n"
        "Content-Transfer-Encoding: 7bit\r\n"
        "\r\n"
        f"bench message {i}\r\n"
    ).encode("ascii")


def percentile(sorted_values: list[float], p: float) -> float:
    """Nearest-rank percentile of an already sorted list."""
    if not sorted_values:
        return float("nan")
    rank = max(1, min(len(sorted_values), -(-len(sorted_values) * p // 100)))
    return sorted_values[int(rank) - 1]


# --- the client -----------------------------------------------------------------------------


@dataclass
class LoadResult:
    sent: int = 0
    elapsed: float = 0.0
    errors: int = 0
    reconnects: int = 0
    done_at: dict[int, float] = field(default_factory=dict)  # mail index -> wall time of 250
    data_at: dict[int, float] = field(default_factory=dict)  # mail index -> wall time DATA was sent
    server_cpu: float | None = None  # CPU s of the server process during the measured run
    client_cpu: float = 0.0          # CPU s of this process during the measured run

    @property
    def rate(self) -> float:
        return self.sent / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def server_cpu_per_mail_ms(self) -> float | None:
        return self.server_cpu / self.sent * 1000 if self.server_cpu is not None and self.sent else None

    def as_dict(self) -> dict:
        per_mail = self.server_cpu_per_mail_ms
        return {
            "sent": self.sent,
            "elapsed_s": round(self.elapsed, 3),
            "msgs_per_s": round(self.rate, 1),
            "server_cpu_s": None if self.server_cpu is None else round(self.server_cpu, 2),
            "server_cpu_per_mail_ms": None if per_mail is None else round(per_mail, 3),
            "client_cpu_s": round(self.client_cpu, 2),
            "errors": self.errors,
            "reconnects": self.reconnects,
        }


async def run_load(port: int, indices: range, concurrency: int, tag: str,
                   rate: float | None = None) -> LoadResult:
    """Send one mail per index over ``concurrency`` persistent connections.

    With ``rate`` (mails/s) the k-th mail taken is not sent before start + k / rate (an
    open-loop pace, as long as the connections keep up), else as fast as answers come.
    """
    import aiosmtplib

    messages = {i: build_message(i, tag) for i in indices}  # built before timing
    todo = enumerate(indices)
    result = LoadResult()

    async def connect() -> aiosmtplib.SMTP:
        client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, timeout=60, start_tls=False)
        await client.connect()
        return client

    async def worker() -> None:
        client = await connect()
        try:
            for k, i in todo:  # shared iterator: each worker takes the next mail when free
                if rate:
                    await asyncio.sleep(start + k / rate - time.time())
                for attempt in range(5):
                    try:
                        if not client.is_connected:
                            client = await connect()
                            result.reconnects += 1
                        # sendmail()'s steps, to note when DATA goes out: the body and its
                        # final dot follow the 354 at once (a refused step raises)
                        await client.mail(SENDER)
                        await client.rcpt(RCPT)
                        result.data_at[i] = time.time()
                        await client.data(messages[i])
                        result.done_at[i] = time.time()  # DATA answered 250
                        break
                    except (aiosmtplib.SMTPException, OSError) as exc:
                        result.errors += 1
                        if attempt == 4:
                            raise RuntimeError(f"mail {i} failed 5 times: {exc}") from exc
                        try:
                            client.close()
                        except Exception:  # noqa: BLE001 - best effort
                            pass
                        await asyncio.sleep(0.05 * (attempt + 1))
        finally:
            try:
                await client.quit()
            except Exception:  # noqa: BLE001 - best effort
                client.close()

    start = time.time()
    await asyncio.gather(*(worker() for _ in range(min(concurrency, len(indices)))))
    result.sent = len(result.done_at)
    result.elapsed = max(result.done_at.values()) - start if result.done_at else 0.0
    return result


def load(port: int, indices: range, concurrency: int, tag: str, rate: float | None = None) -> LoadResult:
    return asyncio.run(run_load(port, indices, concurrency, tag, rate))


def process_cpu(pid: int) -> float | None:
    """CPU seconds (user + system, all threads) used so far by process ``pid``; None off Linux."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def warm_then_measure(port: int, n: int, concurrency: int, tag: str, pid: int) -> LoadResult:
    """``WARMUP`` mails not counted (indices n..n+WARMUP-1), then the N measured ones.

    Also records the CPU time the server process (``pid``) and this client used during
    the measured run: less sensitive to a busy machine than msgs/s.
    """
    load(port, range(n, n + WARMUP), concurrency, tag)
    server_before = process_cpu(pid)
    client_before = time.process_time()
    result = load(port, range(n), concurrency, tag)
    result.client_cpu = time.process_time() - client_before
    server_after = process_cpu(pid)
    if server_before is not None and server_after is not None:
        result.server_cpu = server_after - server_before
    return result


# --- the two targets ------------------------------------------------------------------------


def bench_baseline(n: int, concurrency: int, workdir: Path) -> LoadResult:
    port = free_port()
    log = workdir / "baseline.log"
    proc = None
    with open(log, "wb") as err:
        try:
            proc = subprocess.Popen(
                [sys.executable, str(Path(__file__).resolve()), "--serve-baseline", str(port)],
                stdin=subprocess.DEVNULL, stdout=err, stderr=err, env=child_env(), cwd=workdir,
            )
            wait_for_port(port, proc, "baseline server", log)
            return warm_then_measure(port, n, concurrency, f"a{uuid.uuid4().hex[:8]}", proc.pid)
        finally:
            stop_process(proc)


BRIDGE_CONFIG = """\
store: sqlite://bridge.db
smtp:
  listen: 127.0.0.1:{port}
  recipients: [{rcpt}]
  max_size: 262144
replies:
  relay: 127.0.0.1:1
  from: {rcpt}
  enabled: false
dispatcher:
  concurrency: 32
  poll_interval: 0.05
providers:
  outbox:
    type: file
    path: outbox.jsonl
accounts:
  bench:
    api_key: benchkey
    credits: 100000000
    route: [outbox]
logging:
  level: warning
"""


def count_lines(path: Path) -> int:
    try:
        with open(path, "rb") as f:
            return sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 16), b""))
    except FileNotFoundError:
        return 0


def bench_bridge(n: int, concurrency: int, workdir: Path, profile: Path | None) -> tuple[LoadResult, dict]:
    port = free_port()
    config = workdir / "bridge.yaml"
    config.write_text(BRIDGE_CONFIG.format(port=port, rcpt=RCPT))
    outbox = workdir / "outbox.jsonl"
    log = workdir / "bridge.log"
    command = [sys.executable]
    if profile is not None:
        command += ["-m", "cProfile", "-o", str(profile)]
    command += ["-m", "bridge", "run", "--config", str(config)]
    proc = None
    with open(log, "wb") as err:
        try:
            proc = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=err, stderr=err, env=child_env(), cwd=workdir
            )
            wait_for_port(port, proc, "bridge", log)
            result = warm_then_measure(port, n, concurrency, f"b{uuid.uuid4().hex[:8]}", proc.pid)
            expected = n + WARMUP
            deadline = time.monotonic() + 60
            while count_lines(outbox) < expected and time.monotonic() < deadline:
                if proc.poll() is not None:
                    break
                time.sleep(0.05)
            drained_at = time.time()
        finally:
            stop_process(proc)
    if proc is not None and proc.returncode not in (0, -signal.SIGTERM):
        print(f"warning: bridge exited with code {proc.returncode}; see log below", file=sys.stderr)
    tail = log.read_text(errors="replace").strip()
    if tail:
        print("bridge log (warnings and errors):\n" + tail[-3000:], file=sys.stderr)
    return result, latencies(outbox, result, n, drained_at)


def latencies(outbox: Path, result: LoadResult, n: int, drained_at: float) -> dict:
    """Delay from the 250 to DATA to the provider call, per measured mail, in ms."""
    delays: list[float] = []
    lines = 0
    unmatched = 0
    if outbox.exists():
        with open(outbox, encoding="utf-8") as f:
            for line in f:
                lines += 1
                record = json.loads(line)
                found = TEXT_RE.search(record.get("text", ""))
                i = int(found.group(1)) if found else -1
                if i >= n:
                    continue  # warm-up mail
                if i < 0 or i not in result.done_at:
                    unmatched += 1
                    continue
                called = datetime.fromisoformat(record["time"]).timestamp()
                delays.append((called - result.done_at[i]) * 1000.0)
    delays.sort()
    last_250 = max(result.done_at.values()) if result.done_at else drained_at
    return {
        "matched": len(delays),
        "outbox_lines": lines,
        "unmatched": unmatched,
        "p50_ms": round(percentile(delays, 50), 1),
        "p99_ms": round(percentile(delays, 99), 1),
        "max_ms": round(delays[-1], 1) if delays else None,
        "min_ms": round(delays[0], 1) if delays else None,
        "drain_after_last_250_s": round(drained_at - last_250, 3),
        "precision": "provider time has millisecond precision (truncated); client 250 time is time.time()",
    }


# --- main -----------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", "-n", type=int, default=2000, help="mails per target (default 2000)")
    parser.add_argument("--concurrency", "-c", type=int, default=16, help="SMTP connections (default 16)")
    parser.add_argument("--quick", action="store_true", help="300 mails (overrides --messages)")
    parser.add_argument("--profile", type=Path, metavar="FILE",
                        help="run the bridge under cProfile, write its stats to FILE (results not saved)")
    parser.add_argument("--serve-baseline", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_baseline is not None:
        serve_baseline(args.serve_baseline)
        return 0
    n = 300 if args.quick else args.messages
    c = args.concurrency
    if n < 1 or c < 1:
        parser.error("--messages and --concurrency must be positive")

    profile = args.profile.resolve() if args.profile else None
    load_before = [round(x, 2) for x in os.getloadavg()]
    workdir = Path(tempfile.mkdtemp(prefix="mail2sms-bench-"))
    try:
        (workdir / "a").mkdir()
        (workdir / "b").mkdir()
        base = bench_baseline(n, c, workdir / "a")
        bridge, latency = bench_bridge(n, c, workdir / "b", profile)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    ratio = bridge.rate / base.rate if base.rate else 0.0
    summary = [
        f"baseline aiosmtpd (accept+discard): {base.sent} msgs in {base.elapsed:.2f} s = {base.rate:.0f} msgs/s",
        f"bridge (sqlite FULL, file provider): {bridge.sent} msgs in {bridge.elapsed:.2f} s = {bridge.rate:.0f} msgs/s",
        f"ratio bridge/baseline: {ratio:.2f} (goal >= {GOAL:.2f})",
        f"end of DATA -> provider call: p50 {latency['p50_ms']:.1f} ms, p99 {latency['p99_ms']:.1f} ms, "
        f"max {latency['max_ms'] if latency['max_ms'] is not None else float('nan'):.1f} ms "
        f"({latency['matched']}/{n} matched; provider time has ms precision)",
    ]
    if base.server_cpu_per_mail_ms is not None and bridge.server_cpu_per_mail_ms is not None:
        summary.append(
            f"server CPU per mail: baseline {base.server_cpu_per_mail_ms:.3f} ms, "
            f"bridge {bridge.server_cpu_per_mail_ms:.3f} ms (all threads); "
            f"client CPU {base.client_cpu:.2f} s / {bridge.client_cpu:.2f} s"
        )
    summary.append(f"load average before the run: {load_before[0]:.2f} (nproc {os.cpu_count()})")
    problems = []
    if base.errors or bridge.errors:
        problems.append(f"SMTP errors: baseline {base.errors}, bridge {bridge.errors} (retried)")
    if latency["matched"] < n:
        problems.append(f"only {latency['matched']} of {n} mails reached the provider within 60 s")
    print("\n".join(summary + [f"warning: {p}" for p in problems]))

    results = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z"),
        "machine": {"nproc": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "messages": n,
        "concurrency": c,
        "warmup": WARMUP,
        "load_average_before": load_before,
        "baseline": base.as_dict(),
        "bridge": dict(bridge.as_dict(), profiled=profile is not None),
        "ratio": round(ratio, 3),
        "goal": GOAL,
        "latency": latency,
        "summary": summary,
    }
    if profile is None:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(results, indent=2) + "\n")
        print(f"results written to {RESULTS}")
    else:
        print(f"bridge profile written to {profile} (results not saved: cProfile slows the bridge)")
    return 0 if not problems else 1


if __name__ == "__main__":
    sys.exit(main())
