"""The IMAP poller: picks mail up from a mailbox and hands it to intake, one message at a time.

One ``MailboxPoller`` per ``imap.<name>`` entry, each in its own task:

1. Connect (implicit TLS, STARTTLS or plain), LOGIN, create the ``processed`` and ``failed``
   folders if missing, SELECT the mailbox and read its UIDVALIDITY. The store remembers
   (UIDVALIDITY, last UID done) per mailbox; when UIDVALIDITY changed, every UID is new
   again and the poller starts from UID 1 (intake's Message-ID + content key keeps mails
   already sent from being sent twice).
2. Catch up: ``UID SEARCH UID last+1:*`` (a NOOP right behind it collects the news of mail
   that landed too late for the search, which is then run again), then for each UID in
   order (``batch`` per search):
   ``UID FETCH BODY.PEEK[]`` (one body in memory at a time), ``intake.submit``, and only
   after that commit ``UID MOVE`` to ``processed`` (``failed`` when the request was refused),
   then remember the UID. A crash between commit and move leaves the message in place; the
   next run submits it again, intake recognises it (IMAP key or content key) and it is moved
   to ``processed``. A store failure leaves the message where it is and retries later.
3. Wait: IDLE when the server has it (re-issued every ``idle_renew``), else sleep
   ``poll_interval`` and send NOOP, whose answer reports new mail; catch up when the
   server reported a change. A mailbox quiet for a whole IDLE (or, polling, for
   ``RESELECT_AFTER``) is SELECTed again, so one deleted and recreated under the session
   is noticed. A push is acted on at once; how soon it comes is the server's business.
   Dovecot holds each change it notices for 0.5 s before telling an IDLE client
   (``NOTIFY_DELAY_MSECS`` in its ``src/lib-storage/mailbox-watch.c``, not configurable),
   so there a new mail reaches the provider about 0.5 s after its APPEND, ~10 ms of which
   is the bridge. Where that is too slow, ``idle: false`` with a short ``poll_interval``
   (say 50ms) costs one NOOP per poll (``bench/imap_latency.py --poll``).

Every server answer is awaited at most ``timeout`` seconds and abandoned at once when the
connection drops or the bridge stops. Any failure closes the connection and reconnects
with exponential backoff; one mailbox's trouble never stops the daemon.

Folder names in the config use ``/`` between levels; the poller uses the server's own
hierarchy separator (Dovecot's Maildir++ default is ``.``) and modified UTF-7.
"""

from __future__ import annotations

import asyncio
import base64
import heapq
import re
import ssl
import time
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from aioimaplib import aioimaplib

from bridge.backoff import exponential_backoff
from bridge.sections import ImapConfig
from bridge.errors import StoreError
from bridge.intake import Envelope, Intake, Outcome
from bridge.store import Store

log = structlog.get_logger("bridge.imap")

_UIDVALIDITY = re.compile(rb"\[UIDVALIDITY (\d+)\]", re.I)
_UID = re.compile(rb"\bUID (\d+)", re.I)
_DELIMITER = re.compile(rb'\([^)]*\) (?:"((?:\\.|[^"\\])*)"|NIL)', re.I)
_RETURN_PATH = re.compile(rb"^Return-Path:[ \t]*<([^<>\r\n]*)>", re.I | re.M)
_SETTING = -1.0   # _call's timeout: use the mailbox's ``timeout`` setting
_RUNG = object()     # _report_or_ring: a push rang before the server reported anything
STANDBY_RETRY = 5.0  # seconds between tries for a mailbox another bridge polls
RESELECT_AFTER = 60.0  # polling (no IDLE): a quiet mailbox is SELECTed again this often


class ImapError(Exception):
    """The server refused a command, or answered in a way the poller cannot use."""


class _Stopped(Exception):
    """The bridge is stopping: leave the session without counting a failure."""


class MailboxPoller:
    """Polls one mailbox (``imap.<name>``) and feeds intake; ``run()`` until ``stop`` is set."""

    reconnect_base = 1.0    # seconds before the first reconnection attempt, doubled each time
    reconnect_max = 60.0

    def __init__(
        self,
        name: str,
        settings: ImapConfig,
        intake: Intake,
        store: Store,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.name = name
        self.settings = settings
        self.intake = intake
        self.store = store
        self.clock = clock
        self.state_name = f"{name}:{settings.mailbox}"   # the store's key for this mailbox
        # Test hooks: awaited after a message's commit and before its move (crash simulation);
        # before each UID SEARCH (a mail landing just then).
        self.after_commit: Callable[[int, Outcome], Awaitable[None]] | None = None
        self.before_search: Callable[[], Awaitable[None]] | None = None
        self.log = log.bind(imap=name)
        self._imap: aioimaplib.IMAP4 | None = None
        self._lost = asyncio.Event()
        self._watch: list[asyncio.Future[Any]] = []
        self._failures = 0
        self._uidvalidity = 0
        self._selected_at = 0.0               # time.monotonic() of the last SELECT
        self._last_uid = 0
        self._folders: dict[str, str] = {}
        self._lock_lost = asyncio.Event()     # set if the mailbox lock goes away mid-session
        self._doorbell = asyncio.Event()      # set by wake(): a push says mail came
        self.active = False                   # logged in, mailbox selected, lock held

    def wake(self) -> bool:
        """A push from the server (``/imap/<name>/<secret>``): look at the mailbox now, not
        when IDLE reports the mail (Dovecot: 0.5 s later) or at the next poll.

        Returns whether this bridge is polling the mailbox now; when it is not (another
        instance holds the mailbox, or it is reconnecting), the session that does poll it
        looks at everything when it starts or is told by its own IDLE.
        """
        self._doorbell.set()
        return self.active

    # --- the loop -----------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Poll until ``stop`` is set; reconnect with backoff after any failure."""
        while not stop.is_set():
            delay = 0.0
            try:
                # One bridge polls a mailbox at a time (PostgreSQL: an advisory lock; another
                # instance takes over within STANDBY_RETRY seconds of this one's death).
                async with self.store.mailbox_lock(self.state_name) as lock:
                    if not lock:
                        self.log.info("imap_standby", retry_in=STANDBY_RETRY)
                        delay = STANDBY_RETRY
                    else:
                        self._lock_lost = lock.lost
                        await self._session(stop)   # ends only by raising
            except _Stopped:
                break
            except StoreError as exc:           # the message stays in the mailbox
                delay = self._failed()
                self.log.error("imap_store_failed", error=str(exc), retry_in=delay)
            except Exception as exc:  # noqa: BLE001 - one mailbox's trouble never stops the daemon
                delay = self._failed()
                self.log.warning("imap_error", error=_describe(exc), host=self.settings.host, retry_in=delay)
            finally:
                self.active = False
                await self._close()
            await _sleep(stop, delay)
        self.log.info("imap_stopped")

    def _failed(self) -> float:
        """Count one more failure in a row; return how long to wait before reconnecting."""
        self._failures += 1
        return round(exponential_backoff(self._failures, self.reconnect_base, self.reconnect_max), 2)

    async def _session(self, stop: asyncio.Event) -> None:
        """One connection: log in, select, then catch up and wait, until stop or failure."""
        await self._connect(stop)
        await self._login()
        await self._prepare_folders()
        await self._select()
        self.log.info(
            "imap_connected", host=self.settings.host, mailbox=self.settings.mailbox,
            uidvalidity=self._uidvalidity, last_uid=self._last_uid, idle=self._use_idle(),
        )
        self.active = True
        news = True
        while not stop.is_set():
            if news:
                await self._catch_up(stop)
                self._failures = 0    # only now: a message that fails every time keeps backing off
            if self._use_idle():
                news = await self._idle(stop)
                quiet = not news
            else:
                news = await self._poll()
                quiet = not news and time.monotonic() - self._selected_at >= RESELECT_AFTER
            if quiet:
                # Quiet for a while: SELECT again, then look. A mailbox deleted and recreated
                # under the session is not always reported; its new UIDVALIDITY shows it.
                await self._select()
                news = True
        raise _Stopped

    # --- connection ---------------------------------------------------------------------

    async def _connect(self, stop: asyncio.Event) -> None:
        s = self.settings
        context = _tls_context(s.tls_verify) if s.tls != "none" else None
        lost = self._lost = asyncio.Event()      # this connection's own: a late callback of
        if s.tls == "implicit":                  # the previous one must not end this one
            imap: aioimaplib.IMAP4 = aioimaplib.IMAP4_SSL(s.host, s.port, timeout=s.timeout, ssl_context=context)
        else:
            imap = aioimaplib.IMAP4(s.host, s.port, timeout=s.timeout)
        imap.protocol.conn_lost_cb = lambda exc: lost.set()
        self._imap = imap
        self._watch = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(self._lost.wait()),
                       asyncio.ensure_future(_forward(self._lock_lost, lost))]  # lock gone: stop too
        await self._call(imap.wait_hello_from_server(), "greeting")
        if s.tls == "starttls":
            await self._starttls(imap, context)

    async def _starttls(self, imap: aioimaplib.IMAP4, context: ssl.SSLContext) -> None:
        """Upgrade the plain connection (aioimaplib has no STARTTLS of its own)."""
        protocol = imap.protocol
        if "STARTTLS" not in protocol.capabilities:
            raise ImapError("server does not offer STARTTLS (use tls: implicit, or none on a trusted network)")
        command = aioimaplib.Command("STARTTLS", protocol.new_tag(), loop=protocol.loop)
        _check(await self._call(protocol.execute(command), "STARTTLS"), "STARTTLS")
        loop = asyncio.get_running_loop()
        protocol.transport = await self._call(
            loop.start_tls(protocol.transport, protocol, context, server_hostname=self.settings.host),
            "TLS handshake",
        )
        await self._call(protocol.capability(), "CAPABILITY")  # forget what was said in clear

    async def _login(self) -> None:
        imap = self._imap
        if "LOGINDISABLED" in imap.protocol.capabilities:
            raise ImapError("server refuses LOGIN on this connection (use tls: implicit or starttls)")
        response = await self._call(
            imap.protocol.login(aioimaplib.quoted(self.settings.user), self.settings.password), "LOGIN"
        )
        if response.result != "OK":
            raise ImapError(f"login refused for {self.settings.user}: {_text(response)}")
        await self._call(imap.protocol.capability(), "CAPABILITY")

    async def _prepare_folders(self) -> None:
        """Learn the hierarchy separator; create ``processed`` and ``failed`` if missing."""
        response = await self._call(self._imap.protocol.simple_command("LIST", '""', '""'), "LIST")
        _check(response, "LIST")
        separator = "/"
        for line in response.lines[:-1]:
            match = _DELIMITER.search(line) if isinstance(line, bytes) else None
            if match and match.group(1):
                separator = match.group(1).replace(b"\\", b"").decode()
        s = self.settings
        self._folders = {
            key: _mailbox_arg(path if path.upper() == "INBOX" else path.replace("/", separator))
            for key, path in (("mailbox", s.mailbox), ("processed", s.processed), ("failed", s.failed))
        }
        for key in ("processed", "failed"):
            await self._ensure_folder(self._folders[key])

    async def _ensure_folder(self, folder: str) -> None:
        protocol = self._imap.protocol
        listed = await self._call(protocol.simple_command("LIST", '""', folder), "LIST")
        if listed.result == "OK" and len(listed.lines) > 1:
            return
        created = await self._call(protocol.simple_command("CREATE", folder), "CREATE")
        if created.result != "OK" and b"ALREADYEXISTS" not in _text(created).encode().upper():
            raise ImapError(f"cannot create folder {folder}: {_text(created)}")
        self.log.info("imap_folder_created", folder=folder)

    async def _select(self) -> None:
        response = await self._call(self._imap.protocol.select(self._folders["mailbox"]), "SELECT")
        _check(response, f"SELECT {self.settings.mailbox}")
        found = [_UIDVALIDITY.search(line) for line in response.lines if isinstance(line, bytes)]
        values = [int(m.group(1)) for m in found if m]
        if not values:
            raise ImapError("SELECT gave no UIDVALIDITY")
        self._uidvalidity = values[0]
        self._selected_at = time.monotonic()
        state = await self.store.mailbox_state(self.state_name)
        self._last_uid = 0
        if state is not None and state[0] == self._uidvalidity:
            self._last_uid = state[1]
        elif state is not None:
            self.log.warning(
                "imap_uidvalidity_changed", old=state[0], new=self._uidvalidity,
                note="every message is looked at again; mails already received are recognised",
            )

    async def _close(self) -> None:
        """Log out politely when the connection is healthy, then drop everything."""
        imap, self._imap = self._imap, None
        for waiter in self._watch:
            waiter.cancel()
        self._watch = []
        if imap is None:
            return
        protocol = imap.protocol
        try:
            healthy = not self._lost.is_set() and protocol.pending_sync_command is None
            if healthy and not protocol.pending_async_commands and protocol.state in ("AUTH", "SELECTED"):
                await asyncio.wait_for(protocol.logout(), 1.0)
        except Exception:  # noqa: BLE001 - closing anyway
            pass
        finally:
            if protocol.transport is not None:
                protocol.transport.close()
            if imap._idle_waiter is not None:
                imap._idle_waiter.cancel()
            for task in (*imap.tasks, *protocol.tasks, imap._client_task):
                task.cancel()

    # --- waiting on the server ----------------------------------------------------------

    async def _call(
        self,
        awaitable: Awaitable[Any],
        what: str,
        timeout: float | None = _SETTING,
        interruptible: bool = True,
    ) -> Any:
        """Await one server exchange: at most ``timeout`` (default: the ``timeout`` setting;
        None: no overall limit), abandoned at once if the link drops or the bridge stops.

        ``interruptible=False`` keeps waiting when the bridge stops (the move after a commit:
        finishing it spares a needless re-submission on the next start).
        """
        limit = self.settings.timeout if timeout == _SETTING else timeout
        task = asyncio.ensure_future(awaitable)
        stop_waiter, lost_waiter = self._watch[:2]
        waiters = {task, lost_waiter} | ({stop_waiter} if interruptible else set())
        try:
            done, _ = await asyncio.wait(waiters, timeout=limit, return_when=asyncio.FIRST_COMPLETED)
        except BaseException:
            task.cancel()
            raise
        if task in done:
            return task.result()
        task.cancel()
        if interruptible and stop_waiter in done:
            raise _Stopped
        if lost_waiter in done:
            raise ConnectionError(f"connection lost during {what}")
        raise TimeoutError(f"no answer to {what} within {limit:g}s")

    async def _poll(self) -> bool:
        """Without IDLE: wait ``poll_interval``, then NOOP; True if the server reports a change.

        One command per quiet poll (the server reports new mail in its answer to NOOP), so a
        short ``poll_interval`` is affordable where IDLE is slow to report (Dovecot: 0.5 s).
        """
        await self._pause(self.settings.poll_interval)
        if self._doorbell.is_set():
            return True
        response = await self._call(self._imap.protocol.simple_command("NOOP"), "NOOP")
        _check(response, "NOOP")
        return _idle_news(response.lines)

    async def _pause(self, seconds: float) -> bool:
        """Wait between polls (no IDLE); end early if the link drops, the bridge stops or a
        push rings."""
        stop_waiter, lost_waiter = self._watch[:2]
        ring = asyncio.ensure_future(self._doorbell.wait())
        try:
            await asyncio.wait({stop_waiter, lost_waiter, ring}, timeout=seconds,
                               return_when=asyncio.FIRST_COMPLETED)
        finally:
            ring.cancel()
        if stop_waiter.done():
            raise _Stopped
        if lost_waiter.done():
            raise ConnectionError("connection closed by the server")
        return False

    def _use_idle(self) -> bool:
        return self.settings.idle and self._imap is not None and "IDLE" in self._imap.protocol.capabilities

    async def _idle(self, stop: asyncio.Event) -> bool:
        """IDLE until the server reports a change or a push rings (True), ``idle_renew``
        passes (False), or we stop."""
        if self._doorbell.is_set():          # rung since the last search began
            return True
        imap = self._imap
        queue = imap.protocol.idle_queue
        while not queue.empty():     # leftovers from the last IDLE: the catch-up saw them
            queue.get_nowait()
        renew = self.settings.idle_renew
        idle = await self._call(imap.idle_start(timeout=renew), "IDLE")
        deadline = time.monotonic() + renew + self.settings.timeout
        try:
            while True:
                push = await self._call(self._report_or_ring(queue), "IDLE push",
                                        timeout=max(0.0, deadline - time.monotonic()))
                if push is _RUNG:
                    return True
                if push is aioimaplib.STOP_WAIT_SERVER_PUSH:
                    return False
                if _idle_news(push):
                    return True
        finally:
            if not self._lost.is_set():
                imap.idle_done()
                await self._call(idle, "IDLE DONE", interruptible=False)

    async def _report_or_ring(self, queue: asyncio.Queue[Any]) -> Any:
        """The server's next IDLE report, or ``_RUNG`` if a push rings first."""
        report = asyncio.ensure_future(queue.get())
        ring = asyncio.ensure_future(self._doorbell.wait())
        try:
            await asyncio.wait({report, ring}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            report.cancel()   # a report not yet taken stays in the queue
            ring.cancel()
        return report.result() if report.done() and not report.cancelled() else _RUNG

    # --- messages -----------------------------------------------------------------------

    async def _catch_up(self, stop: asyncio.Event) -> None:
        """Process every message above the last UID done, ``batch`` UIDs per search."""
        started, count = self.clock(), 0
        while not stop.is_set():
            uids, arrived = await self._search_new()
            if not uids and not arrived:
                break
            for uid in uids:
                if stop.is_set():
                    raise _Stopped
                await self._process(uid)
                count += 1
        if count:
            self.log.info("imap_caught_up", messages=count, seconds=round(self.clock() - started, 3))

    async def _search_new(self) -> tuple[list[int], bool]:
        """The lowest ``batch`` UIDs above the last one done, in order; and whether mail came
        that the search did not see.

        A server searches the mailbox as it last reported it, and tells of newer mail after
        the result (Dovecot: ``* SEARCH``, then ``* 1 EXISTS``); no later IDLE or NOOP tells
        of it again. aioimaplib drops such a line unless a NOOP is waiting for its answer, so
        a NOOP is sent right behind the SEARCH (no extra round trip) to collect it.
        """
        if self.before_search is not None:
            await self.before_search()
        self._doorbell.clear()               # this search sees what a push announced
        first = self._last_uid + 1
        protocol = self._imap.protocol
        search = protocol.search("UID", f"{first}:*", charset=None, by_uid=True)
        response, noop = await self._call(asyncio.gather(search, protocol.simple_command("NOOP")), "SEARCH")
        _check(response, "UID SEARCH")
        _check(noop, "NOOP")
        found = (
            int(token)
            for line in response.lines[:-1]         # the last line is the completion text
            if isinstance(line, bytes)
            for token in line.split()
            if token.isdigit()
        )
        # "N:*" always matches the highest UID, even when it is below N; and only ``batch``
        # numbers are kept, however long the backlog.
        uids = sorted(set(heapq.nsmallest(self.settings.batch, (uid for uid in found if uid >= first))))
        return uids, _new_mail(noop.lines)

    async def _process(self, uid: int) -> None:
        """Fetch, submit, then move one message and remember its UID."""
        raw = await self._fetch(uid)
        folder = "processed"
        if raw is not None:
            key = f"imap:{self.name}:{self.settings.mailbox}:{self._uidvalidity}:{uid}"
            envelope = Envelope(_return_path(raw), source="imap", key=key)
            try:
                outcome = await self.intake.submit(raw, envelope)
            except StoreError:
                raise                                  # not committed: leave it, retry later
            except Exception as exc:  # noqa: BLE001 - a mail intake cannot read must not block the box
                self.log.exception("imap_intake_failed", uid=uid, error=str(exc))
                outcome = None
            del raw
            if outcome is not None and self.after_commit is not None:
                await self.after_commit(uid, outcome)
            if outcome is None or (not outcome.accepted and not outcome.duplicate):
                folder = "failed"
            self.log.info(
                "imap_message", uid=uid, folder=folder,
                status=outcome.status if outcome else None, duplicate=bool(outcome and outcome.duplicate),
            )
            await self._move(uid, self._folders[folder])
        await self.store.set_mailbox_state(self.state_name, self._uidvalidity, uid)
        self._last_uid = uid

    async def _fetch(self, uid: int) -> bytes | None:
        """The raw message, or None when it is gone (expunged by another client)."""
        protocol = self._imap.protocol
        # aioimaplib's own timer restarts on every chunk: a big message on a slow link is fine,
        # a silent server is not.
        response = await self._call(
            protocol.fetch(str(uid), "BODY.PEEK[]", by_uid=True, timeout=self.settings.timeout),
            "FETCH", timeout=None,
        )
        _check(response, "UID FETCH")
        raw = _literal_for(response.lines, uid)
        if raw is None and any(_uid_in(line) == uid for line in response.lines):
            raise ImapError(f"UID FETCH {uid} answered without the message body")
        return raw

    async def _move(self, uid: int, folder: str) -> None:
        """MOVE, or COPY + \\Deleted + (UID) EXPUNGE on servers without MOVE."""
        protocol = self._imap.protocol
        capabilities = protocol.capabilities
        if "MOVE" in capabilities:
            moved = await self._call(protocol.move(str(uid), folder, by_uid=True), "MOVE", interruptible=False)
            _check(moved, f"UID MOVE to {folder}")
            return
        copied = await self._call(protocol.copy(str(uid), folder, by_uid=True), "COPY", interruptible=False)
        _check(copied, f"UID COPY to {folder}")
        flagged = await self._call(
            protocol.store(str(uid), "+FLAGS.SILENT", r"(\Seen \Deleted)", by_uid=True), "STORE",
            interruptible=False,
        )
        _check(flagged, "UID STORE")
        if "UIDPLUS" in capabilities:
            expunged = await self._call(protocol.expunge(str(uid), by_uid=True), "EXPUNGE", interruptible=False)
        else:  # also removes other messages flagged \Deleted: the only way without UIDPLUS
            expunged = await self._call(protocol.expunge(), "EXPUNGE", interruptible=False)
        _check(expunged, "EXPUNGE")


# --- helpers ------------------------------------------------------------------------------


async def _forward(source: asyncio.Event, target: asyncio.Event) -> None:
    """Set ``target`` once ``source`` is set."""
    await source.wait()
    target.set()


async def _sleep(stop: asyncio.Event, seconds: float) -> None:
    """Sleep ``seconds`` or until ``stop`` is set, whichever comes first."""
    try:
        await asyncio.wait_for(stop.wait(), seconds)
    except asyncio.TimeoutError:
        pass


def _tls_context(verify: bool) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    if not verify:  # self-signed test servers only: anyone on the path could read the password
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def _check(response: Any, what: str) -> None:
    if response.result != "OK":
        raise ImapError(f"{what} refused: {_text(response)}")


def _text(response: Any) -> str:
    """The completion text of a response (never a message body), for logs."""
    last = response.lines[-1] if response.lines else b""
    text = last.decode("utf-8", "replace") if isinstance(last, (bytes, bytearray)) else str(last)
    return text[:200]


def _first(lines: list[Any]) -> str:
    return next((line.decode("utf-8", "replace")[:200] for line in lines if isinstance(line, bytes)), "")


def _idle_news(lines: list[Any]) -> bool:
    """True for a change in the mailbox; False for chatter (``* OK Still here``).

    ``* BYE`` and ``* NO``/``* BAD`` (Dovecot says ``NO Internal error`` about a mailbox
    deleted under it) raise: the session is over, reconnect rather than spin.
    """
    news = False
    for line in lines:
        if not isinstance(line, bytes):
            continue
        words = line.upper().split()
        if words[:1] == [b"BYE"]:
            raise ConnectionError(f"server said {_first([line])}")
        if words[:1] in ([b"NO"], [b"BAD"]):
            raise ImapError(f"server said {_first([line])}")
        news = news or (len(words) > 1 and words[1] in (b"EXISTS", b"EXPUNGE", b"FETCH", b"RECENT"))
    return news


def _new_mail(lines: list[Any]) -> bool:
    """True when the server reported more messages (``* N EXISTS``)."""
    return any(isinstance(line, bytes) and line.rstrip().upper().endswith(b" EXISTS") for line in lines)


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _uid_in(line: Any) -> int | None:
    match = _UID.search(line) if isinstance(line, bytes) else None
    return int(match.group(1)) if match else None


def _literal_for(lines: list[Any], uid: int) -> bytes | None:
    """The body literal of ``uid`` in a FETCH response (the UID item may come before or after it)."""
    literals = [i for i, line in enumerate(lines) if isinstance(line, bytearray)]
    for i in literals:
        if uid in (_uid_in(lines[i - 1]) if i else None, _uid_in(lines[i + 1]) if i + 1 < len(lines) else None):
            return bytes(lines[i])
    return bytes(lines[literals[0]]) if len(literals) == 1 else None


def _return_path(raw: bytes) -> str | None:
    """The envelope sender the delivering server recorded (``Return-Path``).

    None when there is no Return-Path; ``""`` for ``<>``, a bounce, which gets no reply.
    """
    end = raw.find(b"\n\n")
    crlf = raw.find(b"\r\n\r\n")
    head = raw[: min(x for x in (end, crlf, len(raw)) if x >= 0)]
    match = _RETURN_PATH.search(head)
    return match.group(1).decode("ascii", "replace").strip() if match else None


def _mailbox_arg(name: str) -> str:
    """A folder name as an IMAP quoted string, in modified UTF-7 (RFC 3501 5.1.3)."""
    out: list[str] = []
    pending: list[str] = []

    def flush() -> None:
        if pending:
            encoded = base64.b64encode("".join(pending).encode("utf-16-be")).rstrip(b"=")
            out.append("&" + encoded.replace(b"/", b",").decode() + "-")
            pending.clear()

    for char in name:
        if 0x20 <= ord(char) <= 0x7E:
            flush()
            out.append("&-" if char == "&" else char)
        else:
            pending.append(char)
    flush()
    return aioimaplib.quoted("".join(out))
