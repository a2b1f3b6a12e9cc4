"""The operator's verbs: ``run``, ``accounts``, ``queue``, ``send`` (called by ``cli.py``)."""

from __future__ import annotations

import argparse
import asyncio
import time
from datetime import datetime, timezone
from email.message import EmailMessage

from bridge.config import Config
from bridge.errors import BridgeError, StatusError

EXIT_OK, EXIT_RUNTIME, EXIT_USAGE = 0, 1, 2


def run_verb(config: Config, args: argparse.Namespace) -> int:
    """Run one verb against ``config``; return the exit code."""
    if args.verb == "run":
        from bridge import log
        from bridge.daemon import serve

        log.configure(config.log_format, config.log_level)
        return asyncio.run(serve(config))
    verb = {"accounts": _accounts, "queue": _queue, "send": _send}[args.verb]
    return asyncio.run(_with_store(config, verb, args))


async def _with_store(config: Config, verb, args: argparse.Namespace) -> int:
    from bridge.store import Store

    store = await Store.open(config.sqlite_path())
    try:
        await store.open_accounts({a.login: a.credits for a in config.accounts.values()}, time.time())
        return await verb(config, store, args)
    finally:
        await store.close()


async def _accounts(config: Config, store, args: argparse.Namespace) -> int:
    if args.action == "credit":
        if args.login not in config.accounts:
            print(f"unknown account {args.login!r}")
            return EXIT_USAGE
        balance = await store.credit(args.login, args.amount, "manual", time.time())
        print(f"{args.login}: {balance} credits")
        return EXIT_OK
    balances = await store.balances()
    print(f"{'account':<20} {'credits':>10}  route")
    for login, account in sorted(config.accounts.items()):
        print(f"{login:<20} {balances.get(login, 0):>10}  {' > '.join(account.route)}")
    return EXIT_OK


async def _queue(config: Config, store, args: argparse.Namespace) -> int:
    if args.action == "retry":
        if await store.requeue(args.job, time.time()):
            print(f"job {args.job} queued again")
            return EXIT_OK
        print(f"job {args.job} is not failed or unknown (or does not exist)")
        return EXIT_RUNTIME
    for job in await store.jobs(args.state, args.limit):
        when = datetime.fromtimestamp(job.created_at, timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
        print(
            f"{job.id:>7} {when} {job.state.value:<8} {job.login:<12} {job.number:<16} "
            f"{job.parts}p {job.provider or '-':<10} {job.last_error or ''}"[:200]
        )
    return EXIT_OK


async def _send(config: Config, store, args: argparse.Namespace) -> int:
    from bridge.daemon import Bridge
    from bridge.intake import Envelope, Intake

    account = config.accounts.get(args.account)
    if account is None:
        print(f"unknown account {args.account!r}")
        return EXIT_USAGE
    mail = EmailMessage()
    subject = f"{account.login}@{account.api_key}|{';'.join(args.to)}"
    mail["Subject"] = subject + (f"|from={args.sms_sender}" if args.sms_sender else "")
    mail["From"] = "mail2sms-cli@localhost"
    mail.set_content(args.text)
    outcome = await Intake(config, store).submit(bytes(mail), Envelope(None, source="cli"), inline=True)
    if not outcome.accepted:
        print(f"Status {outcome.status}: {outcome.text} {outcome.note}".strip())
        return EXIT_RUNTIME
    bridge = Bridge(config)
    jobs = await _deliver(bridge, store, outcome.job_ids)
    for job in jobs:
        print(f"job {job.id} {job.number}: {job.state.value} via {job.provider or '-'} {job.last_error or ''}".rstrip())
    return EXIT_OK if all(j.state.value == "sent" for j in jobs) else EXIT_RUNTIME


async def _deliver(bridge, store, job_ids):
    """Send the given jobs now with the configured providers, in this process."""
    import httpx

    from bridge.dispatcher import Dispatcher
    from bridge.providers.registry import build_provider

    async with httpx.AsyncClient() as client:
        providers = {n: build_provider(n, s, client) for n, s in bridge.config.providers.items()}
        dispatcher = Dispatcher(bridge.config, store, providers)
        try:
            for job_id in job_ids:
                job = await store.job(job_id)
                if job.state.value == "queued":
                    claimed = await store.claim_jobs(time.time(), 1000)
                    await asyncio.gather(*(dispatcher.process(j) for j in claimed))
        finally:
            for provider in providers.values():
                await provider.close()
    return [await store.job(job_id) for job_id in job_ids]
