"""SMTP front processes (``smtp.processes`` above 1): more cores for the SMTP sessions.

The daemon's event loop runs every SMTP session under one GIL. With a connection per mail
(``sendmail``-style scripts, most monitoring systems) the session is most of a mail's work,
so the daemon starts ``smtp.processes - 1`` front processes (``mail2sms smtp-front``) that
listen on the same address (``SO_REUSEPORT``: the kernel spreads new connections over the
processes). A front runs the same SMTP session (``bridge.smtp``: TLS, AUTH, limits) and, at
``DATA``, hands the mail to the daemon over a private socket pair; the daemon decides and
commits it as one of its own (``Intake.submit``) and sends the outcome back, which the
front answers. So the ``250`` still comes only after the daemon's commit, and a front
keeps nothing: if it dies, its clients get no ``250`` and send again; if the daemon goes
away, a front stops listening and answers ``451`` to what it was waiting for.

The daemon restarts a front that exits and stops them when it stops. Each process counts
its own connections against ``smtp.max_connections`` and ``smtp.max_connections_per_client``
divided by the number of processes. Mails taken by a front count in the daemon's metrics
like the others; its connections do not.

Frames on the socket: a 4-byte length, then a pickle (only these two processes of one
installation ever read it): ``(id, raw, mail_from, rcpt_tos, auth_account, inline)``, and
back ``(id, ok, Outcome or exception)``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import pickle
import signal
import socket
import struct
import sys
from pathlib import Path
from typing import Any

import structlog

from bridge.errors import StoreError
from bridge.intake import Envelope, Intake, Outcome

log = structlog.get_logger("bridge.front")

_HEAD = struct.Struct("!I")
RESTART_DELAY = 1.0  # seconds before a front that exited is started again
START_TIMEOUT = 30.0  # seconds the daemon waits for its fronts to listen


async def _read_frame(reader: asyncio.StreamReader) -> Any:
    (size,) = _HEAD.unpack(await reader.readexactly(_HEAD.size))
    return pickle.loads(await reader.readexactly(size))


def _write_frame(writer: asyncio.StreamWriter, value: Any) -> None:
    body = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    writer.write(_HEAD.pack(len(body)) + body)


# --- in the daemon ------------------------------------------------------------------------


class Fronts:
    """The daemon's front processes: started, served, restarted, stopped."""

    def __init__(self, count: int, config_path: Path, intake: Intake) -> None:
        self.count = count
        self.config_path = config_path
        self.intake = intake
        self.stopping = False
        self.processes: dict[int, asyncio.subprocess.Process] = {}  # by slot
        self._tasks: list[asyncio.Task] = []

    async def start(self) -> None:
        """Start every front and wait until each listens (or say why one could not)."""
        ready = [asyncio.get_running_loop().create_future() for _ in range(self.count)]
        self._tasks = [asyncio.create_task(self._keep(slot, ready[slot]), name=f"smtp-front-{slot}")
                       for slot in range(self.count)]
        try:
            await asyncio.wait_for(asyncio.gather(*ready), START_TIMEOUT)
        except asyncio.TimeoutError:
            raise OSError(f"the SMTP front processes did not start within {START_TIMEOUT:.0f} s") from None

    async def _keep(self, slot: int, ready: asyncio.Future) -> None:
        """Run front ``slot``; start it again when it exits, until the daemon stops."""
        while not self.stopping:
            ours, theirs = socket.socketpair()
            try:
                process = await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "bridge", "smtp-front", "--config", str(self.config_path),
                    "--fd", str(theirs.fileno()), pass_fds=(theirs.fileno(),), stdin=asyncio.subprocess.DEVNULL)
            except OSError as exc:
                ours.close()
                if not ready.done():
                    ready.set_exception(exc)
                    return
                log.error("smtp_front_start_failed", slot=slot, error=str(exc))
                await asyncio.sleep(RESTART_DELAY)
                continue
            finally:
                theirs.close()
            self.processes[slot] = process
            reader, writer = await asyncio.open_connection(sock=ours)
            serving = asyncio.create_task(self._serve(reader, writer, ready))
            code = await process.wait()
            serving.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await serving
            writer.close()
            if not ready.done():
                ready.set_exception(OSError(f"the SMTP front process exited at start (code {code})"))
                return
            if not self.stopping:
                log.warning("smtp_front_exited", slot=slot, code=code, restart_in=RESTART_DELAY)
                await asyncio.sleep(RESTART_DELAY)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                     ready: asyncio.Future) -> None:
        """Answer one front's mails, each as it comes (its sessions wait in parallel)."""
        pending: set[asyncio.Task] = set()
        try:
            while True:
                try:
                    frame = await _read_frame(reader)
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                if frame == "ready":
                    if not ready.done():
                        ready.set_result(None)
                    continue
                task = asyncio.create_task(self._submit(writer, *frame))
                pending.add(task)
                task.add_done_callback(pending.discard)
        finally:
            for task in list(pending):  # the front is gone: nobody waits for these answers, but
                await asyncio.shield(task)  # a commit under way finishes (and its calls go out)

    async def _submit(self, writer: asyncio.StreamWriter, request_id: int, raw: bytes, mail_from: str | None,
                      rcpt_tos: tuple[str, ...], auth_account: str | None, inline: bool) -> None:
        envelope = Envelope(mail_from=mail_from, rcpt_tos=rcpt_tos, source="smtp", auth_account=auth_account)
        try:
            answer = (request_id, True, await self.intake.submit(raw, envelope, inline=inline))
        except StoreError as exc:  # Unavailable included: the front answers 451
            answer = (request_id, False, StoreError(str(exc)))
        except Exception as exc:  # a bug: the front answers 451 with an error id
            log.error("smtp_front_submit_failed", exc_info=exc)
            answer = (request_id, False, RuntimeError(f"{type(exc).__name__}: {exc}"))
        if not writer.is_closing():
            _write_frame(writer, answer)

    async def stop(self, grace: float = 10.0) -> None:
        """Stop every front (they finish their sessions' answers first) and stop restarting."""
        self.stopping = True
        for process in self.processes.values():
            if process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(signal.SIGTERM)
        for process in self.processes.values():
            try:
                await asyncio.wait_for(process.wait(), grace)
            except asyncio.TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await process.wait()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, OSError):
                await task


# --- in a front process -------------------------------------------------------------------


class RemoteIntake:
    """``Intake`` as a front sees it: each mail goes to the daemon and its outcome comes back."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.ids = itertools.count()
        self.waiting: dict[int, asyncio.Future] = {}
        self.gone = asyncio.Event()

    async def pump(self) -> None:
        """Hand each answer to its session; when the daemon goes, fail what waits."""
        try:
            while True:
                request_id, ok, value = await _read_frame(self.reader)
                future = self.waiting.pop(request_id, None)
                if future is not None and not future.done():
                    future.set_result(value) if ok else future.set_exception(value)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self.gone.set()
            for future in self.waiting.values():
                if not future.done():
                    future.set_exception(StoreError("the bridge process is gone"))
            self.waiting.clear()

    async def submit(self, raw: bytes, envelope: Envelope, inline: bool = False) -> Outcome:
        if self.gone.is_set():
            raise StoreError("the bridge process is gone")
        request_id = next(self.ids)
        future = self.waiting[request_id] = asyncio.get_running_loop().create_future()
        _write_frame(self.writer, (request_id, raw, envelope.mail_from, envelope.rcpt_tos,
                                   envelope.auth_account, inline))
        return await future


async def serve_front(config_path: Path, fd: int) -> int:
    """A front process: listen with the daemon until it goes away or SIGTERM (exit 0)."""
    from bridge import log as logs
    from bridge.config import load_config
    from bridge.smtp import start_smtp

    config = load_config(config_path)
    logs.configure(config.log_format, config.log_level, cache=True)
    reader, writer = await asyncio.open_connection(sock=socket.socket(fileno=fd))
    remote = RemoteIntake(reader, writer)
    pump = asyncio.create_task(remote.pump())
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        servers = await start_smtp(config.smtp, remote, shared=True)  # type: ignore[arg-type]
    except OSError as exc:  # ListenError included: it names the setting
        log.error("smtp_front_listen_failed", error=str(exc))
        return 1
    _write_frame(writer, "ready")
    log.info("smtp_front_started", pid=os.getpid())
    gone = asyncio.ensure_future(remote.gone.wait())
    stopped = asyncio.ensure_future(stop.wait())
    await asyncio.wait({gone, stopped}, return_when=asyncio.FIRST_COMPLETED)
    for server in servers:
        server.close()
    for server in servers:
        await server.wait_closed()
    while remote.waiting and not remote.gone.is_set():  # answers the sessions still wait for
        await asyncio.sleep(0.01)
    pump.cancel()
    gone.cancel()
    stopped.cancel()
    writer.close()
    return 0
