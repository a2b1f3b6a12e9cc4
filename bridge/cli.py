"""The ``mail2sms`` command. The only place where errors become exit codes.

Exit codes: 0 ok, 2 bad config or usage, 1 runtime failure.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from bridge import __version__
from bridge.errors import BridgeError, ConfigError, ConfigErrors
from bridge.model import JobState, ReplyState

EXIT_OK, EXIT_RUNTIME, EXIT_USAGE = 0, 1, 2

#: The states ``queue list --state`` takes (the store's job states).
JOB_STATES = tuple(state.value for state in JobState)
#: The states ``replies list --state`` takes.
REPLY_STATES = tuple(state.value for state in ReplyState)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mail2sms", description="E-mail to SMS bridge.")
    parser.add_argument("--version", action="version", version=f"mail2sms {__version__}")
    parser.add_argument(
        "--config",
        default=os.environ.get("MAIL2SMS_CONFIG", "config.yaml"),
        help="config file (default: $MAIL2SMS_CONFIG or config.yaml)",
    )
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="COMMAND")
    run = verbs.add_parser("run", help="run the daemon")
    run.add_argument("--config", dest="sub_config", help=argparse.SUPPRESS)
    front = verbs.add_parser("smtp-front", help="(started by `run` for smtp.processes above 1)")
    front.add_argument("--config", dest="sub_config", help=argparse.SUPPRESS)
    front.add_argument("--fd", type=int, required=True, help="the socket to the daemon (inherited)")
    check = verbs.add_parser("check-config", help="check the config file and exit")
    check.add_argument("--config", dest="sub_config", help=argparse.SUPPRESS)
    count = verbs.add_parser("count", help="count SMS parts for TEXT (or stdin)")
    count.add_argument("text", nargs="?", help="the text; read from stdin when left out")
    count.add_argument("--language", choices=("en", "fr"), default="en")
    _add_config_verbs(verbs)
    _add_admin_verbs(verbs)
    from bridge.store.copy import add_store_verbs

    add_store_verbs(verbs)  # store migrate | store copy
    return parser


def _add_config_verbs(verbs: argparse._SubParsersAction) -> None:
    """``config reference``: every setting with its type, default and doc (no config needed)."""
    config = verbs.add_parser("config", help="about the configuration file")
    config_verbs = config.add_subparsers(dest="action", required=True, metavar="ACTION")
    reference = config_verbs.add_parser("reference", help="every setting: key, type, default, doc")
    reference.add_argument("--format", choices=("text", "markdown"), default="text")


def _add_admin_verbs(verbs: argparse._SubParsersAction) -> None:
    """Verbs that work on the store (added by the daemon issue)."""
    accounts = verbs.add_parser("accounts", help="accounts and credit")
    accounts_verbs = accounts.add_subparsers(dest="action", required=True, metavar="ACTION")
    accounts_verbs.add_parser("list", help="accounts with their balance")
    credit = accounts_verbs.add_parser("credit", help="add (or remove, if negative) credits")
    credit.add_argument("login")
    credit.add_argument("amount", type=int)
    credit.add_argument(
        "--allow-negative", action="store_true", help="allow the balance to go below zero"
    )
    queue = verbs.add_parser("queue", help="the SMS jobs")
    queue_verbs = queue.add_subparsers(dest="action", required=True, metavar="ACTION")
    listing = queue_verbs.add_parser("list", help="jobs, newest first")
    listing.add_argument("--state", choices=JOB_STATES, help="only jobs in this state")
    listing.add_argument("--limit", type=int, default=50)
    show = queue_verbs.add_parser("show", help="everything about one job")
    show.add_argument("job", type=int)
    retry = queue_verbs.add_parser(
        "retry", help="put a failed or unknown job back in the queue (an unknown one may be sent twice)")
    retry.add_argument("job", type=int)
    cancel = queue_verbs.add_parser("cancel", help="do not send a queued job; refund its credit")
    cancel.add_argument("job", type=int)
    replies = verbs.add_parser("replies", help="the status mails to senders")
    replies_verbs = replies.add_subparsers(dest="action", required=True, metavar="ACTION")
    replies_list = replies_verbs.add_parser("list", help="status mails, oldest first")
    replies_list.add_argument("--state", choices=REPLY_STATES, help="only those in this state")
    replies_retry = replies_verbs.add_parser("retry", help="send a failed status mail again")
    replies_retry.add_argument("reply", type=int)
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
    except Exception as exc:  # a bug: one line for the user, never a traceback
        print(f"error: unexpected {type(exc).__name__}: {exc} (please report this)", file=sys.stderr)
        return EXIT_RUNTIME


def _dispatch(args: argparse.Namespace) -> int:
    if args.verb == "count":
        return _count(args)
    if args.verb == "config":
        from bridge.config import reference_table

        print(reference_table(args.format))
        return EXIT_OK
    from bridge.config import load_config

    if args.verb == "store":  # `store copy` names its stores itself: no config needed
        import asyncio

        from bridge.store.copy import run_store_verb

        return asyncio.run(run_store_verb(args, lambda: load_config(_config_path(args.config))))
    config = load_config(_config_path(args.config))
    if args.verb == "check-config":
        return _check_config(config)
    # The store, its WAL and the outbox hold phone numbers and texts: 0600, 0700 folders.
    os.umask(0o077)
    if args.verb == "smtp-front":  # the daemon checked the config and listens already
        from bridge.admin import _run_loop
        from bridge.front import serve_front

        return _run_loop(serve_front(config.path, args.fd))
    if args.verb == "run":
        if not _preflight_ok(config):
            return EXIT_USAGE
    from bridge import admin

    return admin.run_verb(config, args)


def _config_path(name: str) -> Path:
    """The config file's absolute path; a missing one is a ``ConfigError`` with a hint."""
    path = Path(name).expanduser().absolute()
    if not path.exists():
        raise ConfigError(
            "",
            f"cannot read {path}: no such file (give another with --config PATH or "
            "$MAIL2SMS_CONFIG; the repository's config.yaml is a working example)",
        )
    return path


def _check_config(config) -> int:
    """Print OK or every problem that would stop ``run``, plus warnings; exit 0 or 2."""
    from bridge import preflight

    findings = []
    for finding in preflight.check(config, network=True):
        if finding.key in ("smtp.listen", "smtp.tls_listen"):  # fine while the bridge runs
            finding = preflight.Finding(finding.key, finding.problem, fatal=False)
        findings.append(finding)
    for finding in findings:
        label = "config error" if finding.fatal else "warning"
        print(f"{label}: {finding}", file=sys.stderr)
    if preflight.errors(findings):
        return EXIT_USAGE
    print(f"{config.path}: OK ({len(config.accounts)} accounts, {len(config.providers)} providers)")
    return EXIT_OK


def _preflight_ok(config) -> bool:
    """Before ``run``: print what would make the daemon fail at start; False if any.

    A busy port is not checked here: it is no config error (exit 1, not 2, so that
    systemd retries), and the listener itself reports it naming ``smtp.listen``.
    """
    from bridge import preflight

    problems = preflight.errors(preflight.check(config, ports=False))
    for finding in problems:
        print(f"config error: {finding}", file=sys.stderr)
    return not problems


def _count(args: argparse.Namespace) -> int:
    """Print the count report; exit 1 when the text needs more parts than allowed."""
    from bridge.encoding import MAX_PARTS, count_report, segment

    text = args.text if args.text is not None else sys.stdin.read()
    # Count what the bridge would send: build_request drops leading and trailing line
    # breaks, so the newline `echo` or a heredoc adds must not cost a character (or a part).
    text = text.strip("\n")
    print(count_report(text, args.language))
    return EXIT_OK if segment(text).count <= MAX_PARTS else EXIT_RUNTIME


if __name__ == "__main__":
    sys.exit(main())
