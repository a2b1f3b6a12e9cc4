"""CPU per provider call: the daemon's HTTP client against httpx's stock one, same run.

Run from the repository root::

    python bench/provider_call.py              # 3,000 calls per client and concurrency
    python bench/provider_call.py -n 10000

``bench/gateway.py`` runs in a process of its own on loopback; this process makes
``smspartner``-like calls (a JSON POST, a JSON answer read) one at a time, then 4 at a time,
through two ``httpx.AsyncClient``: one on httpx's own transport (httpcore, anyio, h11: the
baseline), one as the daemon makes it (``bridge.providers.pool.provider_client``: aiohttp on
the wire). Printed per client: CPU of this process per call (``time.process_time``, the
gateway's is not in) and calls/s, and the daemon's CPU as a ratio of the baseline's. Each
client makes 200 warm-up calls first; the clients take turns, ``--rounds`` times, and the
medians are printed.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

import smtp_throughput as st

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bridge.providers.pool import provider_client  # noqa: E402

BODY = {"apiKey": "bench-key", "phoneNumbers": "+33612345678", "message": "bench message 1", "sender": "bench"}


async def measure(client: httpx.AsyncClient, url: str, calls: int, concurrency: int) -> tuple[float, float]:
    """(CPU microseconds per call, calls/s) for ``calls`` calls, ``concurrency`` at a time."""

    async def call() -> None:
        answer = await client.post(url, json=BODY, timeout=10.0)
        answer.json()

    async def worker(count: int) -> None:
        for _ in range(count):
            await call()

    for _ in range(200):
        await call()
    cpu, began = time.process_time(), time.perf_counter()
    await asyncio.gather(*(worker(calls // concurrency) for _ in range(concurrency)))
    done = calls // concurrency * concurrency
    return (time.process_time() - cpu) / done * 1e6, done / (time.perf_counter() - began)


async def run(url: str, calls: int, rounds: int) -> dict[tuple[str, int], list[tuple[float, float]]]:
    clients = {"httpx stock transport": lambda: httpx.AsyncClient(),
               "daemon (aiohttp on the wire)": lambda: provider_client(per_origin=16)}
    results: dict[tuple[str, int], list[tuple[float, float]]] = {}
    for r in range(rounds):
        for name, make in (clients.items() if r % 2 == 0 else list(clients.items())[::-1]):
            async with make() as client:
                for concurrency in (1, 4):
                    results.setdefault((name, concurrency), []).append(await measure(client, url, calls, concurrency))
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", "--calls", type=int, default=3000, help="calls per client and concurrency (3000)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds, the clients taking turns (3)")
    args = parser.parse_args(argv)
    port = st.free_port()
    gateway = subprocess.Popen([sys.executable, str(ROOT / "bench" / "gateway.py"), str(port)])
    try:
        st.wait_for_port(port, gateway, "gateway", None)
        try:
            import uvloop
        except ImportError:
            uvloop = None
        results = (uvloop.run if uvloop else asyncio.run)(run(f"http://127.0.0.1:{port}/v1/send", args.calls,
                                                              args.rounds))
    finally:
        st.stop_process(gateway)
    print("| client | calls at once | CPU us/call | calls/s | ratio |\n|---|---:|---:|---:|---:|")
    for concurrency in (1, 4):
        base = statistics.median(c for c, _ in results[("httpx stock transport", concurrency)])
        for name in ("httpx stock transport", "daemon (aiohttp on the wire)"):
            cpu = statistics.median(c for c, _ in results[(name, concurrency)])
            rate = statistics.median(r for _, r in results[(name, concurrency)])
            print(f"| {name} | {concurrency} | {cpu:.0f} | {rate:.0f} | {cpu / base:.2f}x |")
    print(f"\nmedian of {args.rounds} round(s), {args.calls} calls each; Python {sys.version.split()[0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
