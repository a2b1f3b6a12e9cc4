"""The SMTP listener (aiosmtpd), started in the daemon's own event loop.

The handler only checks and commits:

- RCPT TO an address not in ``smtp.recipients``: ``550 5.7.1`` (no open relay).
- A message over ``smtp.max_size``: ``552`` (aiosmtpd enforces it while reading DATA).
- DATA: ``250`` only once intake has committed the jobs (or the status reply) to disk;
  ``451 4.3.0`` if the store failed, the bridge is refusing mail, or anything unexpected
  happened (logged with an error id; the exception text never reaches the client), so
  the sending MTA keeps the mail and retries.
- ``smtp.reject_inline: true``: a refused request is answered
  ``550 5.6.0 Status NNN: text`` instead of a status mail.

STARTTLS is offered when ``smtp.tls`` has a certificate; ``smtp.tls_listen`` adds an
implicit-TLS port. SMTP AUTH (PLAIN, LOGIN) is offered only over TLS (after STARTTLS, or
at once on the implicit-TLS port); an authenticated user may only send for the account
it maps to.

At the edge (``BridgeSMTP``, ``bridge.guard``):

- ``smtp.max_connections`` open connections in all, ``smtp.max_connections_per_client``
  from one address; beyond them ``421 4.7.0`` and the connection is closed.
- ``smtp.max_recipients`` RCPT commands per transaction; beyond them ``452 4.5.3``.
- ``postmaster@`` any of the bridge's domains (and bare ``postmaster``) is accepted, as
  RFC 5321 requires; such mail is logged (``postmaster_mail``) and never read as an SMS
  request.
- A wrong AUTH password or a wrong API key (status 102) slows its client address down
  (``smtp.auth.failure_delay`` more per recent failure); after ``smtp.auth.max_failures``
  of them on one connection the bridge answers ``421 4.7.0`` and disconnects.
"""

from __future__ import annotations

import asyncio
import socket
import contextvars
import hmac
import re
import ssl
import uuid
from typing import Any

import structlog
from aiosmtpd.smtp import SMTP, AuthResult, Envelope as SmtpEnvelope, LoginPassword, Session

from bridge.sections import Address, SmtpConfig
from bridge.errors import BridgeError, StoreError
from bridge.guard import ClientGuard
from bridge.intake import Envelope, Intake, Outcome

log = structlog.get_logger("bridge.smtp")

#: The connection whose DATA is being handled (read by ``GuardedIntake``).
_CONNECTION: contextvars.ContextVar["BridgeSMTP | None"] = contextvars.ContextVar("connection", default=None)


class ListenError(BridgeError, OSError):
    """A listening address could not be bound; the message names the setting (``smtp.listen``)."""


_PLAIN_ADDRESS = re.compile(
    r"\s*<([A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
    r"@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*)>\s*(.*)", re.DOTALL)


class Handler:
    """aiosmtpd handler: RCPT and DATA hooks only."""

    def __init__(self, config: SmtpConfig, intake: Intake) -> None:
        self.config = config
        self.intake = intake
        self.recipients = frozenset(r.lower() for r in config.recipients)
        self.postmasters = postmaster_addresses(config.recipients)

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: SmtpEnvelope, address: str, rcpt_options: list[str]
    ) -> str:
        """Accept only the configured bridge addresses and postmaster, a few per transaction."""
        attempts = getattr(envelope, "rcpt_attempts", 0) + 1
        envelope.rcpt_attempts = attempts  # refused ones count too: no free address probing
        if attempts > self.config.max_recipients:
            log.info("too_many_recipients", peer=str(session.peer), limit=self.config.max_recipients)
            return f"452 4.5.3 Too many recipients (at most {self.config.max_recipients} per message)"
        if address.lower() not in self.recipients | self.postmasters:
            log.info("relay_denied", rcpt=address[:100], peer=str(session.peer))
            return "550 5.7.1 Relaying denied: this server only accepts mail for its own address"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: SmtpEnvelope) -> str:
        """Commit the mail through intake; answer 250 only after the commit."""
        account = session.auth_data if isinstance(session.auth_data, str) else None
        mail_from = (envelope.mail_from or "").strip("<> ")  # "<>" is the null sender
        incoming = Envelope(
            mail_from=mail_from or None,
            rcpt_tos=tuple(envelope.rcpt_tos),
            source="smtp",
            auth_account=account,
        )
        raw = envelope.original_content or envelope.content or b""
        try:
            outcome = await self.intake.submit(raw, incoming, inline=self.config.reject_inline)
        except StoreError as exc:
            log.error("store_failed", error=str(exc))
            return "451 4.3.0 Temporary storage failure, please try again later"
        except Exception as exc:  # a bug: never leak it, never refuse for good
            error_id = uuid.uuid4().hex[:12]
            log.error("data_handler_failed", error_id=error_id, exc_info=exc)
            return f"451 4.3.0 Temporary local problem (error id {error_id}), please try again later"
        if outcome.duplicate:
            return "250 2.0.0 OK: already received (duplicate dropped)"
        if outcome.accepted:
            text = f"250 2.0.0 OK: {len(outcome.job_ids)} SMS queued"
            if outcome.status not in (100, 101):  # some numbers refused (113, 125-127)
                text += f"; Status {outcome.status}: {_clean(outcome.note)}"
            return text
        if self.config.reject_inline:
            return f"550 5.6.0 Status {outcome.status}: {_clean(outcome.text)}"
        if outcome.no_reply:  # a bounce, an auto-reply, a list: nothing is mailed back
            return f"250 2.0.0 OK: not sent, Status {outcome.status} (no status mail: {outcome.no_reply})"
        return f"250 2.0.0 OK: not sent, Status {outcome.status} mailed back"


def _clean(text: str) -> str:
    return " ".join(text.split())[:300]


def postmaster_addresses(recipients: tuple[str, ...]) -> frozenset[str]:
    """``postmaster@`` each domain of ``recipients``, and bare ``postmaster`` (RFC 5321 4.5.1)."""
    domains = {r.rpartition("@")[2].lower() for r in recipients}
    return frozenset({"postmaster"} | {f"postmaster@{d}" for d in domains if d})


class _FewNames:
    """``dir()`` lists only the methods aiosmtpd finds by prefix (``smtp_``, ``auth_``,
    ``handle_``). aiosmtpd builds its command tables with ``inspect.getmembers`` and
    ``dir`` on the protocol and the handler for every connection; over every attribute that
    was a fifth of the daemon's CPU with a connection per mail."""

    _names: dict[type, list[str]] = {}

    def __dir__(self) -> list[str]:
        names = _FewNames._names.get(type(self))
        if names is None:
            names = _FewNames._names[type(self)] = [
                n for n in object.__dir__(self) if n.startswith(("smtp_", "auth_", "handle_"))]
        return names


class Gate(_FewNames):
    """The hooks aiosmtpd calls: RCPT as ``Handler``; DATA for postmaster kept apart.

    Mail to postmaster is for a human: it is logged and never read as an SMS request.
    A transaction to both postmaster and the bridge goes on to ``Handler`` for the bridge.
    """

    def __init__(self, handler: Handler) -> None:
        self.handler = handler

    async def handle_RCPT(self, *args: Any) -> str:
        """See ``Handler.handle_RCPT``."""
        return await self.handler.handle_RCPT(*args)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: SmtpEnvelope) -> str:
        """Log postmaster mail; hand the rest to ``Handler.handle_DATA``."""
        postmaster = [r for r in envelope.rcpt_tos if r.lower() in self.handler.postmasters]
        if postmaster:
            _log_postmaster(session, envelope)
            envelope.rcpt_tos = [r for r in envelope.rcpt_tos if r not in postmaster]
            if not envelope.rcpt_tos:
                return "250 2.0.0 OK: delivered to the postmaster log"
        return await self.handler.handle_DATA(server, session, envelope)


def _log_postmaster(session: Session, envelope: SmtpEnvelope) -> None:
    from bridge.mail import parse_mail

    raw = envelope.original_content or envelope.content or b""
    mail = parse_mail(raw if isinstance(raw, bytes) else raw.encode(), envelope.mail_from)
    log.warning(
        "postmaster_mail", peer=str(session.peer), mail_from=(envelope.mail_from or "")[:200],
        subject=mail.subject[:200], message_id=mail.message_id, size=len(raw),
    )


class GuardedIntake:
    """``Intake`` as the SMTP handler sees it, slowing down clients that guess API keys.

    A request refused with status 102 (no account for that login and key) counts as a
    failure of the client address (``BridgeSMTP.note_failure``): the answer waits, and the
    connection counts it towards ``smtp.auth.max_failures``.
    """

    def __init__(self, intake: Intake) -> None:
        self.intake = intake

    async def submit(self, raw: bytes, envelope: Envelope, inline: bool = False) -> Outcome:
        """``Intake.submit``, then the delay for a wrong key."""
        outcome = await self.intake.submit(raw, envelope, inline=inline)
        connection = _CONNECTION.get()
        if outcome.status == 102 and connection is not None:
            await connection.note_failure("wrong_api_key")
        return outcome


class Authenticator:
    """Maps SMTP AUTH users to accounts; passwords compared in constant time."""

    def __init__(self, config: SmtpConfig) -> None:
        self.users = config.auth_users

    def __call__(
        self, server: SMTP, session: Session, envelope: SmtpEnvelope, mechanism: str, auth_data: Any
    ) -> AuthResult:
        if not isinstance(auth_data, LoginPassword):
            return AuthResult(success=False, handled=False)
        login = auth_data.login.decode("utf-8", "replace")
        user = self.users.get(login)
        expected = user.password.encode() if user else b"\x00" * 16
        if hmac.compare_digest(expected, auth_data.password) and user is not None:
            log.info("smtp_auth_ok", user=login, account=user.account)
            return AuthResult(success=True, auth_data=user.account)
        log.info("smtp_auth_failed", user=login[:64])
        if isinstance(server, BridgeSMTP):
            server.last_auth_failed = True  # BridgeSMTP.smtp_AUTH slows the client down
        return AuthResult(success=False, handled=False)


class BridgeSMTP(_FewNames, SMTP):
    """aiosmtpd's protocol with the bridge's limits (see the module docstring)."""

    def __init__(
        self, handler: Any, *, config: SmtpConfig, guard: ClientGuard, implicit_tls: bool = False, **kwargs: Any
    ) -> None:
        super().__init__(handler, auth_require_tls=True, **kwargs)
        if implicit_tls:
            # The whole connection is already encrypted: offer AUTH at once. (Passing
            # auth_require_tls=False instead makes aiosmtpd warn on every connection.)
            self._auth_require_tls = False
        self.config = config
        self.guard = guard
        self.client: str | None = None      # set once admitted; released when the connection ends
        self.failures = 0
        self.last_auth_failed = False

    def _getaddr(self, arg: str):
        """MAIL/RCPT address: the plain ``<local@domain>`` nearly every client sends is read
        with one regular expression (aiosmtpd's RFC 5322 parser is a large share of a
        session's CPU), with the same result; anything else goes to aiosmtpd's parser."""
        match = _PLAIN_ADDRESS.fullmatch(arg) if arg else None
        if match is None:
            return super()._getaddr(arg)
        address = match.group(1)
        if self.local_part_limit and len(address.rpartition("@")[0]) > self.local_part_limit:
            return None, None
        return address, match.group(2)

    _idle_until = 0.0     # loop time after which the connection counts as idle
    _armed_for = 0.0      # loop time the one timeout timer fires at

    def _reset_timeout(self, duration: float | None = None) -> None:
        """``smtp.idle_timeout`` from now. aiosmtpd cancels and re-arms a timer for every
        command; here one timer per connection fires at most once per timeout period and,
        if the client spoke since, waits for the rest."""
        self._idle_until = self.loop.time() + (duration or self._timeout_duration)
        if self._timeout_handle is None or self._idle_until < self._armed_for:
            if self._timeout_handle is not None:
                self._timeout_handle.cancel()
            self._arm(self._idle_until)

    def _arm(self, when: float) -> None:
        self._armed_for = when
        self._timeout_handle = self.loop.call_at(when, self._timeout_due)

    def _timeout_due(self) -> None:
        if self.loop.time() < self._idle_until:
            self._arm(self._idle_until)  # the client spoke since: the rest of the wait
        else:
            self._timeout_cb()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Admit the connection, or answer 421 and close it (STARTTLS re-enters: not counted)."""
        if self.client is None and self.transport is None:
            peer = transport.get_extra_info("peername")
            client = str(peer[0]) if peer else "?"
            refused = self.guard.admit(client)
            if refused:
                log.warning("connection_refused", peer=client, reason=refused, open=self.guard.open_total)
                transport.write(f"421 4.7.0 {self.hostname} {refused}, try again later\r\n".encode())
                transport.close()
                return
            self.client = client
        super().connection_made(transport)

    def connection_lost(self, error: Exception | None) -> None:
        """Release the connection's slot; a refused connection has nothing more to undo."""
        if self.client is None:
            return
        self.guard.release(self.client)
        self.client = None
        super().connection_lost(error)

    def eof_received(self) -> bool | None:
        """A refused connection never started its session."""
        if self.session is None:
            return False
        return super().eof_received()

    async def smtp_AUTH(self, arg: str) -> None:
        """AUTH, answered later the more this address failed; 421 after too many failures."""
        delay = self.guard.delay(self.client or "?")
        if delay:
            await asyncio.sleep(delay)
        self.last_auth_failed = False
        await super().smtp_AUTH(arg)
        if self.last_auth_failed:
            await self.note_failure("auth_failed")

    async def smtp_DATA(self, arg: str) -> None:
        """DATA, with this connection known to ``GuardedIntake``."""
        token = _CONNECTION.set(self)
        try:
            await super().smtp_DATA(arg)
        finally:
            _CONNECTION.reset(token)
        if self.failures >= self.config.auth_max_failures and self.transport is not None:
            await self._hang_up()

    async def note_failure(self, kind: str) -> None:
        """A wrong password or API key: slow this address down; hang up after too many.

        A wrong API key is answered only after the delay; a wrong password answers at
        once, as the delay is taken before every AUTH from that address.
        """
        client = self.client or "?"
        delay = self.guard.delay(client)
        recent = self.guard.failed(client)
        self.failures += 1
        log.info("client_failure", kind=kind, peer=client, recent=recent, on_connection=self.failures)
        if kind == "auth_failed":
            if self.failures >= self.config.auth_max_failures:
                await self._hang_up()
        elif delay:
            await asyncio.sleep(delay)

    async def _hang_up(self) -> None:
        log.warning("client_disconnected", peer=self.client, failures=self.failures)
        await self.push("421 4.7.0 Too many failures, closing connection")
        if self.transport is not None:
            self.transport.close()


def tls_context(config: SmtpConfig) -> ssl.SSLContext | None:
    """A server TLS context from ``smtp.tls``, or None."""
    if config.tls_cert is None or config.tls_key is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(config.tls_cert, config.tls_key)
    return context


async def start_smtp(config: SmtpConfig, intake: Intake, shared: bool = False,
                     serving: bool = True) -> list[asyncio.AbstractServer]:
    """Start the listener(s) in the running loop; return the servers to close on shutdown.

    ``shared``: one of ``smtp.processes`` processes on the same addresses (``SO_REUSEPORT``,
    see ``bridge.front``), each with its share of the connection limits. Without
    ``serving`` the addresses are bound but take no connection before ``start_serving()``."""
    share = config.processes if shared else 1
    guard = ClientGuard(-(-config.max_connections // share), -(-config.max_connections_per_client // share),
                        config.auth_failure_delay)
    gate = Gate(Handler(config, GuardedIntake(intake)))  # type: ignore[arg-type]
    context = tls_context(config)
    authenticator = Authenticator(config) if config.auth_users else None
    # aiosmtpd would call socket.getfqdn() (a reverse lookup) for every connection
    hostname = config.hostname or socket.getfqdn()
    loop = asyncio.get_running_loop()  # else aiosmtpd looks it up for every connection

    def factory(implicit_tls: bool = False) -> SMTP:
        return BridgeSMTP(
            gate,
            config=config,
            guard=guard,
            data_size_limit=config.max_size,
            enable_SMTPUTF8=True,
            hostname=hostname,
            ident="mail2sms bridge",
            tls_context=None if implicit_tls else context,
            authenticator=authenticator,
            auth_required=config.auth_required,
            implicit_tls=implicit_tls,
            loop=loop,
            timeout=config.idle_timeout,
        )

    servers = [await _listen("smtp.listen", config.listen, factory, None, shared, serving)]
    if config.tls_listen is not None:
        servers.append(await _listen("smtp.tls_listen", config.tls_listen, lambda: factory(True), context, shared,
                                     serving))
    for server in servers:
        for sock in server.sockets:
            log.info("smtp_listening", address=sock.getsockname()[:2])
    return servers


async def _listen(key: str, address: Address, factory: Any, context: ssl.SSLContext | None = None,
                  shared: bool = False, serving: bool = True) -> asyncio.AbstractServer:
    """Bind ``address``; a failure names the setting (``smtp.listen 127.0.0.1:25: ...``)."""
    from bridge.preflight import describe_bind_error

    try:
        return await asyncio.get_running_loop().create_server(factory, address.host, address.port, ssl=context,
                                                              reuse_port=shared or None, start_serving=serving)
    except OSError as exc:
        raise ListenError(f"{key} {address}: {describe_bind_error(exc)}") from None
