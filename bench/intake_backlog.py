"""Intake rate with and without a backlog, and the cost of sitting on that backlog.

Run from the repository root::

    python bench/intake_backlog.py                 # 100,000 queued jobs, 30 s idle window
    python bench/intake_backlog.py --quick         # 10,000 jobs, 10 s idle window
    python bench/intake_backlog.py --jobs 40000 --idle 20

The daemon (``python -m bridge run`` of this checkout, a subprocess) gets a SQLite store
(the shipped settings: WAL, synchronous=FULL), one account, the default dispatcher
settings and an ``http`` provider pointed at a loopback port where nothing listens, so
every call is refused (connection refused: a definite non-delivery, retried later) and
every job stays queued. Logs are JSON lines at level info, to a file.

1. Intake rate with 0 queued jobs: ``--measure`` mails (default 200) of 100 numbers each
   over ``--connections`` (default 8) SMTP connections; mails/s and SMS/s from the first
   connect to the last ``250``. (50 mails, the earlier default, took 0.4 s: a window that
   one stall of a shared machine's disk could halve.)
2. Pre-fill: ``--jobs`` / 100 mails of 100 numbers (default 1,000 mails = 100,000 jobs), the
   same way; prints how long it took. Bounded by ``--max-prefill`` seconds: past it the
   pre-fill stops and the backlog actually reached is reported.
3. The same intake measurement again; the ratio of the two rates (goal >= 0.9).
4. ``--idle`` seconds (default 30) without traffic: the daemon's CPU (utime+stime from
   /proc/PID/stat, as % of one core; goal < 2 %) and the log lines it wrote meanwhile.
5. Its peak RSS (VmHWM from /proc/PID/status; goal < 150 MB).

Results are printed as a table and written to ``bench/results/intake_backlog.json``.
Exit code 1 when an SMTP error occurred, else 0 (goals missed are reported, not fatal).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timezone
from email.message import EmailMessage
from email.policy import SMTP as SMTP_POLICY
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "intake_backlog.json"
RCPT = "mail2sms@bench.local"
LOGIN, KEY = "backlog", "backlog-key-0123"
NUMBERS_PER_MAIL = 100
GOALS = {"ratio": 0.9, "idle_cpu_pct": 2.0, "peak_rss_mb": 150.0}


# --- the daemon ------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def write_config(folder: Path, smtp_port: int, dead_port: int) -> Path:
    """The daemon's config; JSON so no YAML writer is needed (YAML reads JSON)."""
    settings = {
        "store": "sqlite://bridge.db",
        "smtp": {"listen": f"127.0.0.1:{smtp_port}", "recipients": [RCPT]},
        "replies": {"relay": "127.0.0.1:1", "from": RCPT, "enabled": False},
        "providers": {"down": {
            "type": "http", "url": f"http://127.0.0.1:{dead_port}/send",
            "body": {"to": "{to}", "text": "{text}", "ref": "{reference}"}, "timeout": 5,
        }},
        "accounts": {LOGIN: {"api_key": KEY, "credits": 100_000_000, "route": ["down"],
                             "max_per_number_per_hour": 1000}},
        "logging": {"format": "json", "level": "info"},
    }
    path = folder / "config.yaml"
    path.write_text(json.dumps(settings, indent=2))
    return path


def start_daemon(config: Path, port: int, log: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("MAIL2SMS_CONFIG", None)
    with open(log, "ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "bridge", "run", "--config", str(config)],
                                cwd=ROOT, env=env, stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=out)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"daemon exited with {proc.returncode}:\n{log.read_text()[-2000:]}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return proc
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("daemon did not listen within 30 s")


def stop_daemon(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def cpu_seconds(pid: int) -> float:
    """utime + stime of the process (all threads), in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peak_rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def job_counts(db: Path) -> dict[str, int]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        return dict(conn.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state"))
    finally:
        conn.close()


# --- the mails -------------------------------------------------------------------------------


def build_mail(serial: int) -> bytes:
    """A mail to 100 distinct valid French mobile numbers (serial picks which)."""
    first = serial * NUMBERS_PER_MAIL
    numbers = ";".join(f"061{first + k:07d}" for k in range(NUMBERS_PER_MAIL))
    message = EmailMessage()
    message["From"] = f"sender{serial}@bench.local"
    message["To"] = RCPT
    message["Subject"] = f"{LOGIN}@{KEY}|{numbers}"
    message["Message-ID"] = f"<backlog-{serial}-{time.time_ns()}@bench.local>"
    message.set_content(f"Backlog bench {serial}")
    return message.as_bytes(policy=SMTP_POLICY)


@dataclass
class Load:
    mails: int = 0
    errors: int = 0
    seconds: float = 0.0
    stopped_early: bool = False

    @property
    def mails_per_s(self) -> float:
        return self.mails / self.seconds if self.seconds else 0.0


async def send_all(port: int, serials: range, connections: int, deadline: float | None,
                   progress: int = 0) -> Load:
    """Send the mails over ``connections`` connections; stop taking new ones past ``deadline``."""
    try:
        import aiosmtplib
    except ImportError:
        raise SystemExit("bench/intake_backlog.py needs aiosmtplib (a dependency of the package): "
                         "python3 -m pip install -e .") from None

    load, queue = Load(), list(reversed(serials))
    began = time.monotonic()

    async def worker() -> None:
        client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, timeout=300, start_tls=False)
        await client.connect()
        try:
            while queue:
                if deadline is not None and time.monotonic() > deadline:
                    load.stopped_early = True
                    return
                serial = queue.pop()
                try:
                    await client.sendmail(f"sender{serial}@bench.local", [RCPT], build_mail(serial))
                    load.mails += 1
                except (aiosmtplib.SMTPException, OSError) as exc:
                    load.errors += 1
                    print(f"  SMTP error on mail {serial}: {exc}", file=sys.stderr)
                if progress and load.mails % progress == 0:
                    elapsed = time.monotonic() - began
                    print(f"  {load.mails} mails ({load.mails * NUMBERS_PER_MAIL} jobs) in {elapsed:.0f} s",
                          flush=True)
        finally:
            try:
                await client.quit()
            except (aiosmtplib.SMTPException, OSError):
                client.close()

    await asyncio.gather(*(worker() for _ in range(connections)))
    load.seconds = time.monotonic() - began
    return load


def count_lines(path: Path) -> int:
    with open(path, "rb") as f:
        return sum(1 for _ in f)


def events(path: Path, skip: int, count: int) -> Counter:
    """The ``event`` names of ``count`` log lines after the first ``skip`` lines."""
    found: Counter = Counter()
    with open(path, "rb") as f:
        for n, line in enumerate(f):
            if skip <= n < skip + count:
                try:
                    found[json.loads(line).get("event", "?")] += 1
                except ValueError:
                    found["(not JSON)"] += 1
    return found


# --- the run ---------------------------------------------------------------------------------


def run(args: argparse.Namespace, folder: Path) -> dict:
    load_before = os.getloadavg()
    port, dead = free_port(), free_port()
    config, log = write_config(folder, port, dead), folder / "daemon.log"
    proc = start_daemon(config, port, log)
    try:
        serial = 0

        def measure(label: str) -> Load:
            nonlocal serial
            load = asyncio.run(send_all(port, range(serial, serial + args.measure), args.connections, None))
            serial += args.measure
            print(f"{label}: {load.mails} mails in {load.seconds:.2f} s = {load.mails_per_s:.1f} mails/s",
                  flush=True)
            return load

        time.sleep(1.0)
        empty = measure("intake with 0 queued jobs")
        prefill_mails = args.jobs // NUMBERS_PER_MAIL
        print(f"pre-filling {prefill_mails * NUMBERS_PER_MAIL} jobs ({prefill_mails} mails)...", flush=True)
        prefill = asyncio.run(send_all(port, range(serial, serial + prefill_mails), args.connections,
                                       time.monotonic() + args.max_prefill, progress=max(1, prefill_mails // 10)))
        serial += prefill_mails
        backlog = job_counts(folder / "bridge.db")
        print(f"pre-fill: {prefill.mails} mails in {prefill.seconds:.1f} s; jobs now {backlog}", flush=True)
        full = measure(f"intake with {backlog.get('queued', 0)} queued jobs")
        lines_before, cpu_before, t0 = count_lines(log), cpu_seconds(proc.pid), time.monotonic()
        print(f"idle for {args.idle:.0f} s...", flush=True)
        time.sleep(args.idle)
        cpu = cpu_seconds(proc.pid) - cpu_before
        window = time.monotonic() - t0
        lines = count_lines(log) - lines_before
        rss = peak_rss_mb(proc.pid)
        idle_events = events(log, lines_before, lines)
        final = job_counts(folder / "bridge.db")
    finally:
        stop_daemon(proc)
    ratio = full.mails_per_s / empty.mails_per_s if empty.mails_per_s else 0.0
    return {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {"nproc": os.cpu_count(), "cpu": cpu_model(), "python": platform.python_version(),
                    "load_before": load_before},
        "settings": {"jobs": args.jobs, "measure": args.measure, "connections": args.connections,
                     "idle": args.idle},
        "intake_empty": {"mails_per_s": empty.mails_per_s, "sms_per_s": empty.mails_per_s * NUMBERS_PER_MAIL,
                         "errors": empty.errors},
        "prefill": {"mails": prefill.mails, "seconds": prefill.seconds, "stopped_early": prefill.stopped_early,
                    "errors": prefill.errors},
        "queued_at_second_measure": backlog.get("queued", 0),
        "intake_backlog": {"mails_per_s": full.mails_per_s, "sms_per_s": full.mails_per_s * NUMBERS_PER_MAIL,
                           "errors": full.errors},
        "ratio": ratio,
        "idle": {"seconds": window, "cpu_pct": 100 * cpu / window, "log_lines": lines,
                 "events": dict(idle_events.most_common(8))},
        "peak_rss_mb": rss,
        "jobs_at_end": final,
    }


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def table(r: dict) -> str:
    def goal(ok: bool) -> str:
        return "met" if ok else "NOT met"

    rows = [
        ("intake, 0 queued", f"{r['intake_empty']['mails_per_s']:.1f} mails/s = "
                             f"{r['intake_empty']['sms_per_s']:.0f} SMS/s", ""),
        ("pre-fill", f"{r['prefill']['mails'] * NUMBERS_PER_MAIL} jobs in {r['prefill']['seconds']:.1f} s"
                     + (" (stopped at --max-prefill)" if r["prefill"]["stopped_early"] else ""), ""),
        (f"intake, {r['queued_at_second_measure']} queued", f"{r['intake_backlog']['mails_per_s']:.1f} mails/s = "
                                                          f"{r['intake_backlog']['sms_per_s']:.0f} SMS/s", ""),
        ("ratio", f"{r['ratio']:.2f}", f">= {GOALS['ratio']}: {goal(r['ratio'] >= GOALS['ratio'])}"),
        (f"idle CPU ({r['idle']['seconds']:.0f} s)", f"{r['idle']['cpu_pct']:.1f} % of one core",
         f"< {GOALS['idle_cpu_pct']} %: {goal(r['idle']['cpu_pct'] < GOALS['idle_cpu_pct'])}"),
        ("log lines while idle", f"{r['idle']['log_lines']}", ""),
        ("peak RSS", f"{r['peak_rss_mb']:.0f} MB",
         f"< {GOALS['peak_rss_mb']:.0f} MB: {goal(r['peak_rss_mb'] < GOALS['peak_rss_mb'])}"),
    ]
    width = max(len(a) for a, _, _ in rows)
    value = max(len(b) for _, b, _ in rows)
    return "\n".join(f"{a:<{width}}  {b:<{value}}  {c}" for a, b, c in rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=100_000, help="queued jobs to pre-fill (default 100000)")
    parser.add_argument("--measure", type=int, default=200, help="100-number mails per intake measurement (200)")
    parser.add_argument("--connections", type=int, default=8, help="SMTP connections")
    parser.add_argument("--idle", type=float, default=30.0, help="idle window in seconds")
    parser.add_argument("--max-prefill", type=float, default=1200.0, help="stop pre-filling after this many s")
    parser.add_argument("--quick", action="store_true", help="10,000 jobs, 20 mails per measure, 10 s idle")
    args = parser.parse_args(argv)
    if args.quick:
        args.jobs, args.measure, args.idle = min(args.jobs, 10_000), min(args.measure, 20), min(args.idle, 10.0)
    if args.jobs < NUMBERS_PER_MAIL or args.measure < 1:
        parser.error("--jobs must be >= 100 and --measure >= 1")
    with tempfile.TemporaryDirectory(prefix="intake-backlog-") as tmp:
        result = run(args, Path(tmp))
    print()
    print(table(result))
    print(f"idle log events: {result['idle']['events']}")
    print(f"jobs at the end: {result['jobs_at_end']}")
    print(f"machine: nproc {result['machine']['nproc']}, {result['machine']['cpu']}, "
          f"Python {result['machine']['python']}, load before {result['machine']['load_before'][0]:.2f}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2))
    errors = result["intake_empty"]["errors"] + result["prefill"]["errors"] + result["intake_backlog"]["errors"]
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
