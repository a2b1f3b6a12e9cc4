"""The operator's verbs: ``run``, ``accounts``, ``queue``, ``send`` (called by ``cli.py``)."""

from __future__ import annotations

import argparse
import asyncio
import time
from datetime import datetime, timezone
from email.message import EmailMessage

from bridge.config import Config

EXIT_OK, EXIT_RUNTIME, EXIT_USAGE = 0, 1, 2


def run_verb(config: Config, args: argparse.Namespace) -> int:
    """Run one verb against ``config``; return the exit code."""
    if args.verb == "run":
        from bridge import log
        from bridge.daemon import serve

        log.configure(config.log_format, config.log_level)
        return asyncio.run(serve(config))
    if args.verb == "providers":
        return asyncio.run(_providers_check(config))
    verb = {"accounts": _accounts, "queue": _queue, "send": _send, "optout": _optout}[args.verb]
    return asyncio.run(_with_store(config, verb, args))


async def _with_store(config: Config, verb, args: argparse.Namespace) -> int:
    from bridge.store import open_store

    store = await open_store(config)
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
    if args.action == "show":
        from bridge.queue_show import show

        return await show(store, args.job)
    if args.action == "retry":
        if await store.requeue(args.job, time.time()):
            print(f"job {args.job} queued again")
            return EXIT_OK
        print(f"job {args.job} is not failed or unknown (or does not exist)")
        return EXIT_RUNTIME
    if args.action == "cancel":
        if await store.cancel(args.job, time.time()):
            print(f"job {args.job} cancelled, its credit refunded")
            return EXIT_OK
        print(f"job {args.job} is not queued (or does not exist): only a queued job can be cancelled")
        return EXIT_RUNTIME
    for job in await store.jobs(args.state, args.limit):
        when = datetime.fromtimestamp(job.created_at, timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
        print(
            f"{job.id:>7} {when} {job.state.value:<8} {job.login:<12} {job.number:<16} "
            f"{job.parts}p {job.provider or '-':<10} {job.last_error or ''}"[:200]
        )
    return EXIT_OK


async def _optout(config: Config, store, args: argparse.Namespace) -> int:
    from bridge.numbers import normalise

    now = time.time()
    if args.action == "list":
        for row in await store.optouts():
            when = datetime.fromtimestamp(row["created_at"], timezone.utc).strftime("%Y-%m-%d %H:%M")
            print(f"{row['number']:<16} {row['sender'] or '(all senders)':<14} {row['source']:<8} {when}")
        return EXIT_OK
    if args.action == "import":
        return await _optout_import(config, store, args.file, now)
    try:
        number = normalise(args.number, config.region)
    except ValueError as exc:
        print(f"{args.number}: {exc}")
        return EXIT_USAGE
    if args.action == "add":
        added = await store.optout_add(number, args.sender, "cli", now)
        print(f"{number}: {'opted out' if added else 'already opted out'}")
    else:
        removed = await store.optout_remove(number, args.sender)
        print(f"{number}: {'removed' if removed else 'was not opted out'}")
    return EXIT_OK


async def _optout_import(config: Config, store, path: str, now: float) -> int:
    """NUMBER[,SENDER] per line; blank lines and # comments skipped; bad lines reported."""
    from bridge.numbers import normalise

    try:
        lines = open(path, encoding="utf-8-sig").read().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        print(f"cannot read {path}: {exc}")
        return EXIT_USAGE
    added = bad = 0
    for lineno, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        raw, _, sender = (part.strip() for part in line.partition(","))
        try:
            number = normalise(raw, config.region)
        except ValueError as exc:
            print(f"{path}:{lineno}: {raw!r}: {exc}")
            bad += 1
            continue
        added += await store.optout_add(number, sender or None, "import", now)
    print(f"{added} added, {bad} refused")
    return EXIT_OK if not bad else EXIT_RUNTIME


async def _providers_check(config: Config) -> int:
    """One line per provider: ok and what it said, or the error."""
    import httpx

    from bridge.errors import ProviderError
    from bridge.providers.registry import build_provider

    failures = 0
    async with httpx.AsyncClient() as client:
        for name, settings in config.providers.items():
            provider = build_provider(name, settings, client)
            try:
                verdict = await provider.check()
                print(f"{name:<14} ok     {verdict}")
            except ProviderError as exc:
                failures += 1
                print(f"{name:<14} FAILED {type(exc).__name__}: {exc}")
            finally:
                await provider.close()
    return EXIT_OK if not failures else EXIT_RUNTIME


async def _send(config: Config, store, args: argparse.Namespace) -> int:
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
    jobs = await _deliver(config, store, outcome.job_ids)
    for job in jobs:
        print(f"job {job.id} {job.number}: {job.state.value} via {job.provider or '-'} {job.last_error or ''}".rstrip())
    return EXIT_OK if all(j.state.value == "sent" for j in jobs) else EXIT_RUNTIME


async def _deliver(config: Config, store, job_ids):
    """Send just these jobs now, in this process, with the configured providers."""
    import httpx

    from bridge.dispatcher import Dispatcher
    from bridge.providers.registry import build_provider

    async with httpx.AsyncClient() as client:
        providers = {n: build_provider(n, s, client) for n, s in config.providers.items()}
        try:
            await Dispatcher(config, store, providers).run_once(only=job_ids)
        finally:
            for provider in providers.values():
                await provider.close()
    return [await store.job(job_id) for job_id in job_ids]
