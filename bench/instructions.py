"""Instructions per mail, counted by valgrind's callgrind: bare aiosmtpd against the bridge.

Run from the repository root::

    python bench/instructions.py                        # 1,000 mails each (about 3 minutes)
    python bench/instructions.py --before ../old-checkout   # that checkout's bridge too (+2 minutes)
    python bench/instructions.py --bulk 30 --before ../old-checkout   # 100-number mails, per SMS

CPU time on a shared machine moves with its neighbours (here the same ten million Python
additions took 0.86 to 1.94 s in three runs a minute apart); the number of instructions a
process runs for the same work does not. Each server runs under ``valgrind --tool=callgrind`` with counting off;
the client (``smtp_throughput.py``'s, 16 persistent connections) sends 300 warm-up mails,
counting is switched on (``callgrind_control -i on``), N mails are sent and, for a bridge,
every one of them is waited for in the ``file`` provider's outbox (so the dispatcher's and
the store's work for them is in); then counting stops and the counts are dumped.

With ``--bulk N`` it counts N mails of 100 numbers each (``intake_backlog.py``'s, 8
connections, 10 more as warm-up) through each bridge instead, every SMS waited for in the
outbox, and prints instructions per SMS by thread; there is no bare server to compare with.

Printed per server: user-space instructions per mail over all its threads (the kernel's
work is not in: system calls, TCP, fsync), the bridge's split by thread (event loop, store
writer), and each bridge's ratio to bare aiosmtpd. Under valgrind the servers run about 50
times slower, so the groups the store commits and the claims the dispatcher makes are
smaller than at full speed: the figure is a little above what the bridge runs at full
load, never below. Results go to ``bench/results/instructions.json`` (git-ignored).

Needs valgrind (Debian package ``valgrind``); exits with a message when it is missing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import intake_backlog as ib
import run
import smtp_throughput as st

ROOT = st.ROOT
RESULTS = ROOT / "bench" / "results" / "instructions.json"
WARMUP = 300
BULK_WARMUP = 10
START_TIMEOUT = 300.0   # a Python daemon under callgrind takes 20-60 s to start


def counted(command: list[str], workdir: Path, root: Path, port: int, n: int, outbox: Path | None,
            bulk: bool = False) -> dict:
    """Run ``command`` under callgrind in ``workdir``; count N mails after the warm-up (with
    ``bulk``, N mails of 100 numbers, ``intake_backlog.py``'s, over 8 connections)."""
    out = workdir / "callgrind.out"
    log = workdir / "server.log"
    grind = ["valgrind", "--tool=callgrind", "--instr-atstart=no", "--separate-threads=yes",
             f"--callgrind-out-file={out}", *command]
    with open(log, "ab") as sink:
        proc = subprocess.Popen(grind, cwd=workdir, env=run.env_for(root), stdin=subprocess.DEVNULL,
                                stdout=sink, stderr=sink)
    try:
        st.wait_for_port(port, proc, "server under callgrind", log, timeout=START_TIMEOUT)
        st.load(port, range(10**6, 10**6 + WARMUP), 16, "w")
        expected = WARMUP
        if bulk:
            _bulk(port, range(10**4, 10**4 + BULK_WARMUP))
            expected += BULK_WARMUP * ib.NUMBERS_PER_MAIL
        _wait_outbox(outbox, expected)
        _control("-i", "on", proc.pid)
        began = time.monotonic()
        if bulk:
            _bulk(port, range(n))
            expected += n * ib.NUMBERS_PER_MAIL
        else:
            result = st.load(port, range(n), 16, "m")
            if result.errors:
                raise RuntimeError(f"{result.errors} mails were not accepted")
            expected += n
        _wait_outbox(outbox, expected)
        _control("-i", "off", proc.pid)
        _control("-d", None, proc.pid)
        elapsed = time.monotonic() - began
    finally:
        st.stop_process(proc, grace=120)
    threads = {}
    for part in sorted(workdir.glob("callgrind.out*")):
        thread = total = None
        for line in part.read_text(errors="replace").splitlines():
            if line.startswith("thread:"):
                thread = int(line.split()[1])
            elif line.startswith("totals:"):
                total = int(line.split()[1])
        if thread is not None and total:
            threads[thread] = threads.get(thread, 0) + total
    if not threads:
        raise RuntimeError(f"callgrind wrote no counts in {workdir}")
    per_thread = {t: count / n for t, count in sorted(threads.items())}
    return {"mails": n, "instructions_per_mail": sum(per_thread.values()), "per_thread": per_thread,
            "seconds_under_valgrind": round(elapsed, 1)}


def _bulk(port: int, serials: range) -> None:
    load = asyncio.run(ib.send_all(port, serials, 8, None))
    if load.errors:
        raise RuntimeError(f"{load.errors} mails were not accepted")


def _control(option: str, value: str | None, pid: int) -> None:
    args = ["callgrind_control", option] + ([value] if value else []) + [str(pid)]
    done = subprocess.run(args, capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed: {(done.stdout + done.stderr).strip()[-300:]}")


def _wait_outbox(outbox: Path | None, lines: int, timeout: float = 600.0) -> None:
    """Until the ``file`` provider has written ``lines`` SMS (nothing to wait for without one)."""
    if outbox is None:
        return
    deadline = time.monotonic() + timeout
    while st.count_lines(outbox) < lines:
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {st.count_lines(outbox)} of {lines} SMS reached {outbox}")
        time.sleep(0.2)


def bare(n: int) -> dict:
    workdir = Path(tempfile.mkdtemp(prefix="instr-bare-"))
    port = st.free_port()
    command = [sys.executable, str(ROOT / "bench" / "smtp_throughput.py"), "--serve-baseline", str(port)]
    return counted(command, workdir, ROOT, port, n, None)


def bridge(root: Path, n: int, bulk: bool = False) -> dict:
    """The bridge of checkout ``root``, as ``run.py``'s intake rows run it (``file`` provider)."""
    workdir = Path(tempfile.mkdtemp(prefix="instr-bridge-"))
    port = st.free_port()
    config = json.loads(json.dumps(run.BRIDGE_CONFIG).replace("{port}", str(port)).replace("{gateway}", "0"))
    config["providers"]["gateway"] = {"type": "file", "path": "outbox.jsonl"}
    (workdir / "bridge.yaml").write_text(json.dumps(config, indent=2))
    command = [sys.executable, "-m", "bridge", "run", "--config", str(workdir / "bridge.yaml")]
    result = counted(command, workdir, root, port, n, workdir / "outbox.jsonl", bulk)
    shutil.rmtree(workdir, ignore_errors=True)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mails", "-n", type=int, default=1000, help="counted mails per server (1000)")
    parser.add_argument("--before", type=Path, action="append", default=[], metavar="CHECKOUT",
                        help="also count the bridge of this checkout (repeatable)")
    parser.add_argument("--bulk", type=int, default=0, metavar="N",
                        help="count N mails of 100 numbers end to end instead, per SMS (no bare server)")
    args = parser.parse_args(argv)
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        print("valgrind is not installed (Debian package 'valgrind'): nothing to count", file=sys.stderr)
        return 2
    results: dict[str, dict] = {}
    if args.bulk:
        for name, root in [*((f"before ({c.resolve().name})", c.resolve()) for c in args.before),
                           (f"bridge ({ROOT.name})", ROOT)]:
            print(f"{name} ({args.bulk} mails of {ib.NUMBERS_PER_MAIL} numbers)...", flush=True)
            results[name] = bridge(root, args.bulk, bulk=True)
        print("\n| server | instructions per SMS | by thread |\n|---|---:|---|")
        for name, result in results.items():
            per_sms = {t: count / ib.NUMBERS_PER_MAIL for t, count in result["per_thread"].items()}
            threads = " + ".join(f"{count / 1000:,.0f}k" for count in per_sms.values() if count >= 1000)
            print(f"| {name} | {result['instructions_per_mail'] / ib.NUMBERS_PER_MAIL:,.0f} | {threads} |")
    else:
        print(f"bare aiosmtpd ({args.mails} mails)...", flush=True)
        results["bare aiosmtpd"] = bare(args.mails)
        for checkout in args.before:
            name = f"before ({checkout.resolve().name})"
            print(f"{name} ({args.mails} mails)...", flush=True)
            results[name] = bridge(checkout.resolve(), args.mails)
        print(f"bridge ({ROOT.name}) ({args.mails} mails)...", flush=True)
        results["bridge"] = bridge(ROOT, args.mails)
        base = results["bare aiosmtpd"]["instructions_per_mail"]
        print("\n| server | instructions per mail | by thread | ratio to bare |\n|---|---:|---|---:|")
        for name, result in results.items():
            threads = " + ".join(f"{count / 1000:,.0f}k" for count in result["per_thread"].values() if count >= 1000)
            print(f"| {name} | {result['instructions_per_mail']:,.0f} | {threads} | "
                  f"{result['instructions_per_mail'] / base:.2f}x |")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"mails": args.bulk or args.mails, "bulk": bool(args.bulk), "results": results},
                                  indent=2))
    print(f"\nresults written to {RESULTS.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
