"""The operator's verbs: ``run``, ``accounts``, ``queue``, ``replies``, ``optout``,
``providers``, ``send`` (called by ``cli.py``).

Times are shown in the bridge's ``timezone`` with the zone's abbreviation (``CET``).
"""

from __future__ import annotations

import argparse
import asyncio
import time
from datetime import datetime, timezone
from email.message import EmailMessage

from bridge.config import Config
from bridge.model import JobState

EXIT_OK, EXIT_RUNTIME, EXIT_USAGE = 0, 1, 2


def run_verb(config: Config, args: argparse.Namespace) -> int:
    """Run one verb against ``config``; return the exit code."""
    if args.verb == "run":
        from bridge import log
        from bridge.daemon import serve

        log.configure(config.log_format, config.log_level, cache=True)
        return _run_loop(serve(config))
    if args.verb == "providers":
        return asyncio.run(_providers_check(config))
    verbs = {"accounts": _accounts, "queue": _queue, "send": _send, "optout": _optout, "replies": _replies}
    verb = verbs[args.verb]
    return asyncio.run(_with_store(config, verb, args))


def _run_loop(main):
    """Run the daemon on uvloop when it is installed (``pip install 'mail2sms-bridge[fast]'``)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)


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
        current = (await store.balances()).get(args.login, 0)
        if current + args.amount < 0 and not args.allow_negative:
            print(
                f"refused: {args.login} has {current} credits; {args.amount} would leave "
                f"{current + args.amount} (add --allow-negative to do it anyway)"
            )
            return EXIT_RUNTIME
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
    jobs = await store.jobs(args.state, args.limit)
    print(f"{'job':>7} {'created':<23} {'state':<8} {'account':<12} {'number':<16} {'parts':>5} {'provider':<10} error")
    for job in jobs:
        print(
            f"{job.id:>7} {_when(config, job.created_at):<23} {job.state.value:<8} {job.login:<12} "
            f"{job.number:<16} {job.parts:>5} {job.provider or '-':<10} {job.last_error or ''}"[:200]
        )
    if not jobs:
        print("(no jobs" + (f" in state {args.state})" if args.state else ")"))
    return EXIT_OK


def _when(config: Config, epoch: float | None) -> str:
    """``epoch`` in the bridge's time zone, with the zone's abbreviation."""
    if not epoch:
        return "-"
    return datetime.fromtimestamp(epoch, timezone.utc).astimezone(config.timezone).strftime("%Y-%m-%d %H:%M:%S %Z")


async def _replies(config: Config, store, args: argparse.Namespace) -> int:
    """The status mails, oldest first; queued ones wait for the relay. ``retry``: again."""
    if args.action == "retry":
        if await store.retry_reply(args.reply, time.time()):
            print(f"status mail {args.reply} queued again")
            return EXIT_OK
        print(f"status mail {args.reply} has not failed (or does not exist)")
        return EXIT_RUNTIME
    rows = await store.replies(args.state)
    print(f"{'reply':>7} {'state':<7} {'status':>6} {'attempts':>8}  {'to':<32} last error")
    for row in rows:
        print(
            f"{row['id']:>7} {row['state']:<7} {row['code']:>6} {row['attempts']:>8}  "
            f"{row['to_addr']:<32} {row['last_error'] or ''}"[:200]
        )
    if not rows:
        print("(no status mails" + (f" in state {args.state})" if args.state else ")"))
    return EXIT_OK


async def _optout(config: Config, store, args: argparse.Namespace) -> int:
    from bridge.numbers import normalise

    now = time.time()
    if args.action == "list":
        for row in await store.optouts():
            when = _when(config, row["created_at"])
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
    """One line per provider: ok and what it said, the error, or "not checkable"."""
    import httpx

    from bridge.errors import ProviderError
    from bridge.providers.base import can_check
    from bridge.providers.registry import build_provider

    failures = 0
    async with httpx.AsyncClient() as client:
        for name, settings in config.providers.items():
            provider = build_provider(name, settings, client)
            try:
                if not can_check(provider):
                    print(f"{name:<14} not checkable (its API has no harmless call)")
                    continue
                verdict = await provider.check()
                print(f"{name:<14} ok     {verdict}")
            except ProviderError as exc:
                failures += 1
                print(f"{name:<14} FAILED {type(exc).__name__}: {exc}")
            finally:
                await provider.aclose()
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
    for warning in _warnings(config, mail):
        print(f"warning: {warning}")
    outcome = await Intake(config, store).submit(bytes(mail), Envelope(None, source="cli"), inline=True)
    if not outcome.accepted:
        print(f"Status {outcome.status}: {outcome.text} {outcome.note}".strip())
        return EXIT_RUNTIME
    jobs = await _deliver(config, store, outcome.job_ids)
    for job in jobs:
        print(f"job {job.id} {job.number}: {job.state.value} via {job.provider or '-'} {job.last_error or ''}".rstrip())
    return EXIT_OK if all(j.state is JobState.SENT for j in jobs) else EXIT_RUNTIME


def _warnings(config: Config, mail: EmailMessage) -> tuple[str, ...]:
    """What the checks would change about this request (e.g. a custom sender dropped)."""
    from bridge.decide import Envelope, evaluate
    from bridge.mail import parse_mail

    verdict = evaluate(parse_mail(bytes(mail)), Envelope(None, source="cli"), config, datetime.now(timezone.utc))
    return verdict.request.warnings if verdict.request else ()


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
                await provider.aclose()
    return [await store.job(job_id) for job_id in job_ids]
