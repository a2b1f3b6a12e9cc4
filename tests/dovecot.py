"""A private Dovecot IMAP server on loopback for the IMAP tests, and helpers to fill it.

Follows /work/shared/notes/dovecot-for-tests.md: own config, passwd-file and runtime dirs
under a temporary folder; login processes run as ``dovenull``, the mail user as ``nobody``
(65534) when we are root, since ``imap-login`` refuses to run as root. Started with
``dovecot -c CONF``, stopped with ``dovecot -c CONF stop``.

The helpers talk to the server with the stdlib ``imaplib`` (blocking; each call is short),
or write Maildir files directly for bulk loads (Dovecot picks up ``new/`` on its next sync).
"""

from __future__ import annotations

import imaplib
import itertools
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from email.parser import BytesHeaderParser
from pathlib import Path

import pytest

MISSING = "dovecot-imapd is required: apt-get install dovecot-imapd (make test installs it)"
PASSWORD = "s3cret-pass"
ACCOUNTS = 32          # mail accounts per server, one per test
_UIDS = re.compile(rb"APPENDUID (\d+) (\d+)")
LDA = "/usr/lib/dovecot/dovecot-lda"                       # Debian's dovecot-core
PUSH_ENTRY = "/private/vendor/vendor.dovecot/http-notify"  # read by the ox push driver
_counter = itertools.count()


def dovecot_binary() -> str:
    """The ``dovecot`` executable, or fail the test with how to install it."""
    found = shutil.which("dovecot") or ("/usr/sbin/dovecot" if os.access("/usr/sbin/dovecot", os.X_OK) else None)
    if found is None:
        pytest.fail(MISSING, pytrace=False)
    return found


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Dovecot:
    """One private Dovecot instance; ``add_user()`` gives each test its own mail account."""

    def __init__(self, root: Path, port: int | None = None, tls: bool = False, push_urls: Sequence[str] = ()) -> None:
        self.binary = dovecot_binary()
        self.root = root
        self.port = port or free_port()
        self.tls_port = free_port() if tls else 0
        self.tls = tls
        self.conf = root / "dovecot.conf"
        self.passwd = root / "passwd"
        self.log = root / "dovecot.log"
        if os.geteuid() == 0:
            self.uid, self.gid = 65534, 65534
            login_user, internal_user, internal_group = "dovenull", "dovecot", "dovecot"
        else:
            self.uid, self.gid = os.getuid(), os.getgid()
            login_user = internal_user = internal_group = _user_name()
        for folder in ("run", "state", "homes"):
            (root / folder).mkdir(parents=True, exist_ok=True)
        self._accounts = iter(self._provision(ACCOUNTS))
        ssl = "ssl = no"
        listeners = f"inet_listener imap {{\n    address = 127.0.0.1\n    port = {self.port}\n  }}\n"
        if tls:
            self._certificate()
            ssl = f"ssl = yes\nssl_cert = <{root / 'cert.pem'}\nssl_key = <{root / 'key.pem'}"
            listeners += f"  inet_listener imaps {{\n    address = 127.0.0.1\n    port = {self.tls_port}\n  }}\n"
        else:
            listeners += "  inet_listener imaps {\n    port = 0\n  }\n"
        # Push (push_notification, ox driver): on each mail delivered to an INBOX (LDA or
        # LMTP, not APPEND), an HTTP PUT to each of push_urls, for the users who enabled it
        # with the METADATA entry that enable_push() sets.
        drivers = "".join(f"  push_notification_driver{n or ''} = ox:url={url}\n"
                          for n, url in zip((0, *range(2, 10)), push_urls))
        push = "" if not push_urls else f"""
mail_plugins = $mail_plugins notify push_notification
mail_attribute_dict = file:%h/dovecot-attributes
protocol imap {{
  imap_metadata = yes
}}
plugin {{
{drivers}}}
"""
        # auth_failure_delay and the anvil penalty listener off: a test of a wrong password
        # must not slow down every later login from 127.0.0.1.
        self.conf.write_text(
            f"""
base_dir = {root / 'run'}
state_dir = {root / 'state'}
instance_name = mail2sms-test-{self.port}
log_path = {self.log}
protocols = imap
listen = 127.0.0.1
{ssl}
disable_plaintext_auth = no
auth_mechanisms = plain login
auth_failure_delay = 0
mail_location = maildir:~/Maildir
default_login_user = {login_user}
default_internal_user = {internal_user}
default_internal_group = {internal_group}
passdb {{
  driver = passwd-file
  args = {self.passwd}
}}
userdb {{
  driver = passwd-file
  args = {self.passwd}
}}
service imap-login {{
  {listeners}  chroot =
}}
service anvil {{
  chroot =
  unix_listener anvil-auth-penalty {{
    mode = 0
  }}
}}
service pop3-login {{
  chroot =
}}
{push}"""
        )

    def add_user(self) -> MailUser:
        """The next unused mail account (each with an empty INBOX)."""
        try:
            return next(self._accounts)
        except StopIteration:
            raise RuntimeError(f"all {ACCOUNTS} test accounts of this Dovecot are used") from None

    def _provision(self, count: int) -> list[MailUser]:
        """Write every account up front: Dovecot re-reads passwd-file at most once a second,
        so an account added while it runs may stay unknown for that long."""
        accounts, lines = [], []
        for n in range(count):
            user = f"bridge{n}@example.com"
            maildir = self.root / "homes" / user / "Maildir"
            for path in (maildir.parent, maildir, *(maildir / s for s in ("cur", "new", "tmp"))):
                path.mkdir(parents=True, exist_ok=True)
                os.chown(path, self.uid, self.gid)
            lines.append(f"{user}:{{PLAIN}}{PASSWORD}:{self.uid}:{self.gid}::{maildir.parent}\n")
            accounts.append(MailUser(self, user, PASSWORD, maildir))
        self.passwd.write_text("".join(lines))
        return accounts

    def _certificate(self) -> None:
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
             "-subj", "/CN=localhost", "-keyout", str(self.root / "key.pem"),
             "-out", str(self.root / "cert.pem")],
            check=True, capture_output=True,
        )

    # --- process ------------------------------------------------------------------------

    def start(self, timeout: float = 10.0) -> None:
        """Start the server and wait until it answers on its port."""
        # No pipes: the daemonised master would inherit them and run() would wait for EOF.
        with open(self.root / "start.err", "w+") as errors:
            code = subprocess.run(
                [self.binary, "-c", str(self.conf)], stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL, stderr=errors,
            ).returncode
            errors.seek(0)
            if code != 0:
                raise RuntimeError(f"dovecot did not start: {errors.read().strip()}\n{self._log_tail()}")
        deadline = time.monotonic() + timeout
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                    if sock.recv(100).startswith(b"* OK"):
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"dovecot is not answering on {self.port}\n{self._log_tail()}")
            time.sleep(0.05)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the server (``dovecot -c CONF stop``) and wait until the port is closed.

        On this machine the master exits but leaves the processes serving connected clients
        running (an IDLE session goes on as if nothing happened), so, as systemd stopping
        the unit would, the processes this instance had started are then sent SIGTERM, by pid.
        """
        children = self._children()
        subprocess.run(
            [self.binary, "-c", str(self.conf), "stop"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        for pid, name in children.items():
            if _cmdline(pid) == name:                  # still that process, not a reused pid
                try:
                    os.kill(pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
            except OSError:
                return
            time.sleep(0.05)

    def processes(self) -> list[int]:
        """The pids of the master and its children (the benches read their CPU time)."""
        try:
            master = int((self.root / "run" / "master.pid").read_text())
        except (OSError, ValueError):
            return []
        return [master, *self._children()]

    def _children(self) -> dict[int, str]:
        """The master's child processes (pid -> command line), read from /proc."""
        try:
            master = int((self.root / "run" / "master.pid").read_text())
        except (OSError, ValueError):
            return {}
        children = {}
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == master:
                children[int(entry)] = _cmdline(int(entry))
        return children

    def _log_tail(self) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-20:])
        except OSError:
            return ""

class MailUser:
    """One mail account on a ``Dovecot``, with helpers to fill and inspect its folders."""

    def __init__(self, server: Dovecot, user: str, password: str, maildir: Path) -> None:
        self.server = server
        self.user = user
        self.password = password
        self.maildir = maildir

    @property
    def port(self) -> int:
        """The plain (and STARTTLS) IMAP port."""
        return self.server.port

    @property
    def tls_port(self) -> int:
        """The implicit-TLS (IMAPS) port, when the server has TLS."""
        return self.server.tls_port

    def stop(self) -> None:
        """Stop the whole server (every account)."""
        self.server.stop()

    def start(self) -> None:
        """Start the server again on the same ports."""
        self.server.start()


    @contextmanager
    def client(self) -> Iterator[imaplib.IMAP4]:
        """A logged-in ``imaplib`` client."""
        imap = imaplib.IMAP4("127.0.0.1", self.server.port, timeout=10)
        try:
            imap.login(self.user, self.password)
            yield imap
        finally:
            try:
                imap.logout()
            except (imaplib.IMAP4.error, OSError):
                pass

    def append(self, raw: bytes, mailbox: str = "INBOX") -> tuple[int, int]:
        """APPEND one message; return its (UIDVALIDITY, UID)."""
        with self.client() as imap:
            return self._append(imap, raw, mailbox)

    def append_many(self, raws: Iterable[bytes], mailbox: str = "INBOX") -> list[int]:
        """APPEND several messages over one connection; return their UIDs."""
        with self.client() as imap:
            return [self._append(imap, raw, mailbox)[1] for raw in raws]

    @staticmethod
    def _append(imap: imaplib.IMAP4, raw: bytes, mailbox: str) -> tuple[int, int]:
        typ, data = imap.append(_quote(mailbox), None, None, raw)
        assert typ == "OK", data
        match = _UIDS.search(data[0] or b"")
        return (int(match.group(1)), int(match.group(2))) if match else (0, 0)

    def enable_push(self) -> None:
        """Ask the server to push this account's new mail: the ox driver's METADATA entry,
        set with the command the README gives."""
        done = subprocess.run(
            ["doveadm", "-c", str(self.server.conf), "mailbox", "metadata", "set", "-u", self.user, "-s", "",
             PUSH_ENTRY, "user=mail2sms"], capture_output=True, timeout=30,
        )
        assert done.returncode == 0, done.stderr.decode(errors="replace")

    def deliver_lda(self, raw: bytes) -> None:
        """Deliver one message as Postfix's mailbox_command would: ``dovecot-lda`` into INBOX
        (unlike APPEND, a delivery is what Dovecot's push reports)."""
        done = subprocess.run(
            [LDA, "-c", str(self.server.conf), "-d", self.user, "-f", "sender@example.org"],
            input=raw.replace(b"\r\n", b"\n"), capture_output=True, timeout=30,
        )
        assert done.returncode == 0, done.stderr.decode(errors="replace")

    def deliver(self, raws: Iterable[bytes], folder: str = "INBOX") -> int:
        """Write messages straight into the Maildir ``new/`` folder (fast bulk load)."""
        base = self.maildir if folder == "INBOX" else self.maildir / f".{folder.replace('/', '.')}"
        for sub in ("cur", "new", "tmp"):
            (base / sub).mkdir(parents=True, exist_ok=True)
            os.chown(base / sub, self.server.uid, self.server.gid)
        os.chown(base, self.server.uid, self.server.gid)
        count = 0
        for raw in raws:
            name = f"{time.time_ns()}.P{os.getpid()}Q{next(_counter)}.mail2sms-test"
            tmp = base / "tmp" / name
            tmp.write_bytes(raw.replace(b"\r\n", b"\n"))  # Maildir files use LF
            os.chown(tmp, self.server.uid, self.server.gid)
            os.rename(tmp, base / "new" / name)
            count += 1
        return count

    def create(self, mailbox: str) -> None:
        """CREATE a folder."""
        with self.client() as imap:
            typ, data = imap.create(_quote(mailbox))
            assert typ == "OK", data

    def delete(self, mailbox: str) -> None:
        """DELETE a folder (and every message in it)."""
        with self.client() as imap:
            typ, data = imap.delete(_quote(mailbox))
            assert typ == "OK", data

    def folders(self) -> list[str]:
        """Every folder's name."""
        with self.client() as imap:
            typ, data = imap.list()
            assert typ == "OK", data
        return [line.decode().rsplit(' "', 1)[-1].strip('"') if line.endswith(b'"') else
                line.decode().rsplit(" ", 1)[-1] for line in data if line]

    def uidvalidity(self, mailbox: str = "INBOX") -> int:
        """The folder's UIDVALIDITY."""
        with self.client() as imap:
            typ, data = imap.status(_quote(mailbox), "(UIDVALIDITY)")
            assert typ == "OK", data
        return int(re.search(rb"UIDVALIDITY (\d+)", data[0]).group(1))

    def count(self, mailbox: str = "INBOX") -> int:
        """How many messages the folder holds (0 if it does not exist)."""
        with self.client() as imap:
            typ, data = imap.status(_quote(mailbox), "(MESSAGES)")
        if typ != "OK":
            return 0
        return int(re.search(rb"MESSAGES (\d+)", data[0]).group(1))

    def messages(self, mailbox: str = "INBOX") -> list[bytes]:
        """Every message of the folder, raw, in UID order ([] if it does not exist)."""
        with self.client() as imap:
            typ, _ = imap.select(_quote(mailbox), readonly=True)
            if typ != "OK":
                return []
            typ, data = imap.uid("FETCH", "1:*", "(BODY.PEEK[])")
            assert typ == "OK", data
        return [part[1] for part in data if isinstance(part, tuple)]

    def message_ids(self, mailbox: str = "INBOX") -> list[str]:
        """The Message-ID header of every message of the folder, in UID order."""
        parser = BytesHeaderParser()
        return [str(parser.parsebytes(raw).get("Message-ID", "")) for raw in self.messages(mailbox)]



def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_text(errors="replace")
    except OSError:
        return ""


def _quote(mailbox: str) -> str:
    return '"' + mailbox.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _user_name() -> str:
    import pwd

    return pwd.getpwuid(os.getuid()).pw_name


@contextmanager
def running_dovecot(tls: bool = False, push_urls: Sequence[str] = ()) -> Iterator[Dovecot]:
    """Start a private Dovecot in a fresh temporary folder; stop it and clean up after."""
    dovecot_binary()
    # Not under pytest's tmp_path: its parents are mode 0700, which the mail user
    # (nobody) could not traverse to reach its home.
    root = Path(tempfile.mkdtemp(prefix="mail2sms-dovecot-"))
    root.chmod(0o755)
    server = Dovecot(root, tls=tls, push_urls=push_urls)
    server.start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def dovecot_server() -> Iterator[Dovecot]:
    """A private Dovecot (plain IMAP on a loopback port) shared by a test module."""
    with running_dovecot() as server:
        yield server


@pytest.fixture
def dovecot(dovecot_server: Dovecot) -> MailUser:
    """A fresh mail account on the module's Dovecot."""
    return dovecot_server.add_user()


@pytest.fixture(scope="module")
def dovecot_tls_server() -> Iterator[Dovecot]:
    """A private Dovecot with a self-signed certificate: STARTTLS on ``port``, IMAPS on ``tls_port``."""
    with running_dovecot(tls=True) as server:
        yield server


@pytest.fixture
def dovecot_tls(dovecot_tls_server: Dovecot) -> MailUser:
    """A fresh mail account on the module's TLS Dovecot."""
    return dovecot_tls_server.add_user()
