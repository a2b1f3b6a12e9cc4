"""The ``mail2sms`` command. The only place where errors become exit codes.

Exit codes: 0 ok, 2 bad config or usage, 1 runtime failure.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from bridge.errors import BridgeError, ConfigError, ConfigErrors
from bridge.model import JobState

EXIT_OK, EXIT_RUNTIME, EXIT_USAGE = 0, 1, 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mail2sms", description="E-mail to SMS bridge.")
    parser.add_argument(
        "--config",
        default=os.environ.get("MAIL2SMS_CONFIG", "config.yaml"),
        help="config file (default: $MAIL2SMS_CONFIG or config.yaml)",
    )
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="COMMAND")
    run = verbs.add_parser("run", help="run the daemon")
    run.add_argument("--config", dest="sub_config", help=argparse.SUPPRESS)
    check = verbs.add_parser("check-config", help="check the config file and exit")
    check.add_argument("--config", dest="sub_config", help=argparse.SUPPRESS)
    count = verbs.add_parser("count", help="count SMS parts for TEXT (or stdin)")
    count.add_argument("text", nargs="?", help="the text; read from stdin when left out")
    count.add_argument("--language", choices=("en", "fr"), default="en")
    _add_admin_verbs(verbs)
    from bridge.store.copy import add_store_verbs

    add_store_verbs(verbs)  # store migrate | store copy
    return parser


def _add_admin_verbs(verbs: argparse._SubParsersAction) -> None:
    """Verbs that work on the store (added by the daemon issue)."""
    accounts = verbs.add_parser("accounts", help="accounts and credit")
    accounts_verbs = accounts.add_subparsers(dest="action", required=True, metavar="ACTION")
    accounts_verbs.add_parser("list", help="accounts with their balance")
    credit = accounts_verbs.add_parser("credit", help="add (or remove, if negative) credits")
    credit.add_argument("login")
    credit.add_argument("amount", type=int)
    queue = verbs.add_parser("queue", help="the SMS jobs")
    queue_verbs = queue.add_subparsers(dest="action", required=True, metavar="ACTION")
    listing = queue_verbs.add_parser("list", help="jobs, newest first")
    listing.add_argument("--state", choices=[state.value for state in JobState],
                         help="only jobs in this state")
    listing.add_argument("--limit", type=int, default=50)
    retry = queue_verbs.add_parser(
        "retry", help="put a failed or unknown job back in the queue (an unknown one may be sent twice)")
    retry.add_argument("job", type=int)
    cancel = queue_verbs.add_parser("cancel", help="do not send a queued job; refund its credit")
    cancel.add_argument("job", type=int)
    optout = verbs.add_parser("optout", help="the opt-out (STOP) list")
    optout_verbs = optout.add_subparsers(dest="action", required=True, metavar="ACTION")
    for action, text in (("add", "suppress a number"), ("remove", "lift a suppression")):
        verb = optout_verbs.add_parser(action, help=text)
        verb.add_argument("number")
        verb.add_argument("--sender", help="only for this sender (default: every sender)")
    optout_verbs.add_parser("list", help="every suppression")
    importing = optout_verbs.add_parser("import", help="add numbers from a file: NUMBER[,SENDER] per line")
    importing.add_argument("file")
    providers = verbs.add_parser("providers", help="the configured providers")
    providers_verbs = providers.add_subparsers(dest="action", required=True, metavar="ACTION")
    providers_verbs.add_parser("check", help="a harmless call to each provider, one verdict per line")
    send = verbs.add_parser("send", help="send a test SMS through the normal path")
    send.add_argument("--account", required=True)
    send.add_argument("--to", required=True, action="append", help="a number (repeatable)")
    send.add_argument("--sender", dest="sms_sender")
    send.add_argument("text")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit code."""
    args = _parser().parse_args(argv)
    if getattr(args, "sub_config", None):
        args.config = args.sub_config
    try:
        return _dispatch(args)
    except ConfigErrors as exc:
        for error in exc.errors:
            print(f"config error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except BridgeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_RUNTIME
    except KeyboardInterrupt:
        return EXIT_RUNTIME


def _dispatch(args: argparse.Namespace) -> int:
    if args.verb == "count":
        return _count(args)
    from bridge.config import load_config

    if args.verb == "store":  # `store copy` names its stores itself: no config needed
        import asyncio

        from bridge.store.copy import run_store_verb

        return asyncio.run(run_store_verb(args, lambda: load_config(args.config)))
    config = load_config(args.config)
    if args.verb == "check-config":
        print(f"{args.config}: OK ({len(config.accounts)} accounts, {len(config.providers)} providers)")
        return EXIT_OK
    from bridge import admin

    return admin.run_verb(config, args)


def _count(args: argparse.Namespace) -> int:
    from bridge.encoding import count_report

    text = args.text if args.text is not None else sys.stdin.read()
    # Count what the bridge would send: build_request drops leading and trailing line
    # breaks, so the newline `echo` or a heredoc adds must not cost a character (or a part).
    print(count_report(text.strip("\n"), args.language))
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
