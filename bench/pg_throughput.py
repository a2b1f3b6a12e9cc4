"""SMTP throughput with the PostgreSQL store, one bridge and two, beside SQLite in the same run.

Run from the repository root (defaults: 2000 mails over 16 connections)::

    python bench/pg_throughput.py [--messages N] [--concurrency C] [--quick] [--pg URL]

Three targets, each ``python -m bridge run`` processes with the ``file`` provider and the
settings of ``smtp_throughput.py`` (whose client and helpers this reuses):

(a) one bridge on SQLite (WAL, ``synchronous=FULL``): the reference;
(b) one bridge on PostgreSQL (a fresh schema of ``--pg``, default the local test server);
(c) two bridges on one PostgreSQL schema, the mails split between them (C/2 connections each).

Throughput is N / (first connect -> last ``250`` to DATA); "drained" is when the last of
the N + warm-up SMS reached the provider. Each target's outboxes are checked: every mail
once. Nothing is written to ``bench/results``; the figures are printed.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import smtp_throughput as st  # noqa: E402

DEFAULT_PG = os.environ.get("MAIL2SMS_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")


async def _split_load(ports: list[int], n: int, concurrency: int, tag: str) -> st.LoadResult:
    """Send mails 0..n-1 round-robin to ``ports`` (index i to ports[i % len]), at once."""
    share = max(1, concurrency // len(ports))
    started = time.time()
    parts = await asyncio.gather(*(st.run_load(port, range(k, n, len(ports)), share, tag)
                                   for k, port in enumerate(ports)))
    total = st.LoadResult()
    for part in parts:
        total.done_at.update(part.done_at)
        total.errors += part.errors
        total.reconnects += part.reconnects
    total.sent = len(total.done_at)
    total.elapsed = max(total.done_at.values()) - started if total.done_at else 0.0
    return total


def bench_target(store: str, instances: int, n: int, concurrency: int, workdir: Path) -> dict:
    """Start ``instances`` bridges on ``store``, warm up, measure; the figures."""
    import subprocess

    procs, ports, outboxes = [], [], []
    try:
        for k in range(instances):
            folder = workdir / f"bridge{k}"
            folder.mkdir()
            port = st.free_port()
            config = folder / "bridge.yaml"
            config.write_text(st.BRIDGE_CONFIG.format(port=port, rcpt=st.RCPT).replace(
                "store: sqlite://bridge.db", f"store: {store}"))
            log = open(folder / "bridge.log", "wb")
            proc = subprocess.Popen([sys.executable, "-m", "bridge", "run", "--config", str(config)],
                                    stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=st.child_env(),
                                    cwd=folder)
            procs.append(proc)
            st.wait_for_port(port, proc, "bridge", folder / "bridge.log")
            ports.append(port)
            outboxes.append(folder / "outbox.jsonl")
        tag = f"p{uuid.uuid4().hex[:8]}"
        asyncio.run(_split_load(ports, st.WARMUP, concurrency, tag + "w"))
        result = asyncio.run(_split_load(ports, n, concurrency, tag))
        deadline = time.monotonic() + 120
        while sum(st.count_lines(o) for o in outboxes) < n + st.WARMUP and time.monotonic() < deadline:
            time.sleep(0.05)
        drained = time.time() - (min(result.done_at.values()) if result.done_at else time.time())
        lines = sum(st.count_lines(o) for o in outboxes)
    finally:
        for proc in procs:
            st.stop_process(proc)
    return {"rate": result.rate, "sent": result.sent, "errors": result.errors, "drained_s": drained,
            "sms": lines, "expected_sms": n + st.WARMUP}


async def _schema(url: str, name: str, create: bool) -> None:
    import asyncpg

    conn = await asyncpg.connect(url, timeout=5)
    try:
        await conn.execute(f'CREATE SCHEMA "{name}"' if create else f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
    finally:
        await conn.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", "-n", type=int, default=2000, help="mails per target (default 2000)")
    parser.add_argument("--concurrency", "-c", type=int, default=16, help="SMTP connections (default 16)")
    parser.add_argument("--quick", action="store_true", help="300 mails (overrides --messages)")
    parser.add_argument("--pg", default=DEFAULT_PG, help=f"PostgreSQL server (default {DEFAULT_PG})")
    args = parser.parse_args(argv)
    n = 300 if args.quick else args.messages
    workdir = Path(tempfile.mkdtemp(prefix="mail2sms-pgbench-"))
    rows = []
    try:
        for label, kind, instances in (("sqlite, 1 bridge", "sqlite", 1), ("postgresql, 1 bridge", "pg", 1),
                                       ("postgresql, 2 bridges", "pg", 2)):
            folder = workdir / f"{kind}{instances}"
            folder.mkdir()
            store, schema = "sqlite://bridge.db", None
            if kind == "pg":
                schema = f"m2s_bench_{uuid.uuid4().hex[:8]}"
                asyncio.run(_schema(args.pg, schema, True))
                store = f"{args.pg}{'&' if '?' in args.pg else '?'}search_path={schema}"
            try:
                rows.append((label, bench_target(store, instances, n, args.concurrency, folder)))
            finally:
                if schema:
                    asyncio.run(_schema(args.pg, schema, False))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    reference = rows[0][1]["rate"] or 1.0
    print(f"{n} mails over {args.concurrency} connections, load average {os.getloadavg()[0]:.2f} "
          f"(nproc {os.cpu_count()})")
    problems = 0
    for label, row in rows:
        print(f"{label:<24} {row['rate']:7.0f} msgs/s  ({row['rate'] / reference:4.2f} x sqlite)  "
              f"all SMS out after {row['drained_s']:.2f} s  ({row['sms']}/{row['expected_sms']} SMS, "
              f"{row['errors']} SMTP errors)")
        problems += row["sms"] != row["expected_sms"]
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
