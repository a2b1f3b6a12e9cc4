"""Checks a parsed config against the machine it will run on (``check-config``, ``run``).

``config.py`` checks that each value is well formed; this module checks that the daemon
could really start with them, and says so before it starts rather than with an ``[Errno]``
line naming no setting:

- errors (the daemon cannot work; ``check-config`` exits 2, ``run`` refuses to start):
  TLS certificate or key missing, unreadable or not a matching pair; the store's folder
  or file not writable; a file provider's folder not writable; ``smtp.auth.required``
  without ``smtp.tls`` (AUTH is offered over TLS only, so every mail would get ``530``);
  no account at all (every mail would get status 102); the demo account (``demo-key``)
  on a listener reachable from the network; the listening address already in use;
- warnings (the daemon starts, something will fail later): the reply relay refuses
  connections (status mails wait in the queue until it answers).

Every finding names the key path, like ``ConfigError``.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import ssl
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from bridge.config import Config
from bridge.sections import Address

#: The key the embedded default config ships with; never acceptable in production.
DEMO_API_KEY = "demo-key"


@dataclass(frozen=True)
class Finding:
    """One problem found: the key path, what is wrong, and whether it stops the daemon."""

    key: str
    problem: str
    fatal: bool = True

    def __str__(self) -> str:
        return f"{self.key}: {self.problem}"


def check(config: Config, *, network: bool = False, ports: bool = True) -> list[Finding]:
    """Every finding for ``config``: errors first, then warnings.

    ``network`` adds the checks that talk to other hosts (the reply relay); ``ports``
    checks that the listening addresses are free (skip it when the daemon is running).
    """
    findings = [*_tls(config), *_auth(config), *_accounts(config), *_store(config), *_providers(config)]
    if ports:
        findings += _ports(config)
    if network:
        findings += _relay(config)
    return sorted(findings, key=lambda f: not f.fatal)


def errors(findings: list[Finding]) -> list[Finding]:
    """The findings that stop the daemon."""
    return [f for f in findings if f.fatal]


# --- TLS and AUTH --------------------------------------------------------------------------


def _tls(config: Config) -> Iterator[Finding]:
    smtp = config.smtp
    if smtp.tls_cert is None or smtp.tls_key is None:
        return
    cert, key = _resolve(config, smtp.tls_cert), _resolve(config, smtp.tls_key)
    bad = False
    for name, path in (("cert", cert), ("key", key)):
        problem = _unreadable(path)
        if problem:
            bad = True
            yield Finding(f"smtp.tls.{name}", f"{path}: {problem}")
    if bad:
        return
    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(cert, key)
    except ssl.SSLError as exc:
        yield Finding("smtp.tls", f"{cert} and {key} do not load as a certificate and its key ({exc.reason or exc})")
    except OSError as exc:
        yield Finding("smtp.tls", f"{cert} and {key}: {exc.strerror or exc}")


def _auth(config: Config) -> Iterator[Finding]:
    smtp = config.smtp
    if smtp.auth_required and smtp.tls_cert is None:
        yield Finding(
            "smtp.auth.required",
            "needs smtp.tls (AUTH is only offered over TLS): without it every mail gets "
            "'530 Authentication required'",
        )


def _accounts(config: Config) -> Iterator[Finding]:
    if not config.accounts:
        yield Finding("accounts", "no account configured: every request would get status 102")
        return
    exposed = [a for a in _listeners(config) if not _is_loopback(a.host)]
    for login, account in config.accounts.items():
        if account.api_key == DEMO_API_KEY and exposed:
            yield Finding(
                f"accounts.{login}.api_key",
                f"the demo key {DEMO_API_KEY!r} on a listener open to the network "
                f"({', '.join(map(str, exposed))}): anyone could send SMS; remove the account "
                "or give it a secret key",
            )


def _listeners(config: Config) -> list[Address]:
    return [a for a in (config.smtp.listen, config.smtp.tls_listen) if a is not None]


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: it may well resolve to a public address


# --- files ---------------------------------------------------------------------------------


def _store(config: Config) -> Iterator[Finding]:
    try:
        path = config.sqlite_path()
    except Exception:  # a store config.py already refused
        return
    problem = _unwritable(path)
    if problem:
        yield Finding("store", f"{path}: {problem}")


def _providers(config: Config) -> Iterator[Finding]:
    for name, settings in config.providers.items():
        if settings.get("type") != "file" or not isinstance(settings.get("path"), str):
            continue
        path = _resolve(config, Path(settings["path"]))
        problem = _unwritable(path)
        if problem:
            yield Finding(f"providers.{name}.path", f"{path}: {problem}")


def _resolve(config: Config, path: Path) -> Path:
    """``path`` as the daemon opens it: relative paths are from the config file's folder."""
    if not path.is_absolute() and config.path is not None:
        return config.path.parent / path
    return path


def _unreadable(path: Path) -> str | None:
    if not path.exists():
        return "no such file"
    if not path.is_file():
        return "not a file"
    if not os.access(path, os.R_OK):
        return f"not readable by this user (uid {os.geteuid()})"
    return None


def _unwritable(path: Path) -> str | None:
    """Why the daemon could not create or write ``path`` (SQLite also writes beside it).

    The folder is probed by creating a file in it: permission bits alone say nothing
    for root, nor about a read-only file system (systemd's ``ProtectSystem=strict``).
    """
    if path.is_dir():
        return "is a folder, not a file"
    if path.exists() and not os.access(path, os.W_OK):
        return f"not writable by this user (uid {os.geteuid()})"
    existing = path.parent
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent  # the daemon creates missing folders from here
    if not existing.is_dir():
        return f"{existing} is not a folder"
    try:
        with tempfile.NamedTemporaryFile(dir=existing, prefix=".mail2sms-check-"):
            pass
    except OSError as exc:
        where = "its folder" if existing == path.parent else f"{existing} (to create its folder)"
        return f"cannot write in {where}: {exc.strerror or exc} (uid {os.geteuid()})"
    return None


# --- sockets -------------------------------------------------------------------------------


def _ports(config: Config) -> Iterator[Finding]:
    keys = [("smtp.listen", config.smtp.listen)]
    if config.smtp.tls_listen is not None:
        keys.append(("smtp.tls_listen", config.smtp.tls_listen))
    for key, address in keys:
        problem = bind_problem(address)
        if problem:
            yield Finding(key, f"{address}: {problem}")


def bind_problem(address: Address) -> str | None:
    """Why a listener could not bind ``address`` now, or None when it could."""
    if address.port == 0:
        return None
    try:
        infos = socket.getaddrinfo(address.host, address.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        return f"unknown host ({exc.strerror})"
    family, kind, proto, _, sockaddr = infos[0]
    with socket.socket(family, kind, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as asyncio's servers do
        try:
            sock.bind(sockaddr)
        except OSError as exc:
            return describe_bind_error(exc)
    return None


def describe_bind_error(exc: OSError) -> str:
    """A bind failure in words an operator can act on."""
    if exc.errno == errno.EADDRINUSE:
        return "address already in use (is another bridge or mail server listening there?)"
    if exc.errno == errno.EACCES:
        return "permission denied (ports below 1024 need CAP_NET_BIND_SERVICE; or use 2525)"
    if exc.errno == errno.EADDRNOTAVAIL:
        return "no such local address on this machine"
    return exc.strerror or str(exc)


def _relay(config: Config, timeout: float = 3.0) -> Iterator[Finding]:
    relay = config.replies.relay
    if not config.replies.enabled:
        return
    try:
        with socket.create_connection((relay.host, relay.port), timeout=timeout):
            pass
    except OSError as exc:
        reason = "timed out" if isinstance(exc, TimeoutError) else (exc.strerror or str(exc))
        yield Finding(
            "replies.relay",
            f"{relay}: cannot connect ({reason}); status mails will wait in the queue until it answers",
            fatal=False,
        )
