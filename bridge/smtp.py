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
implicit-TLS port. SMTP AUTH (PLAIN, LOGIN) is offered only over TLS; an authenticated
user may only send for the account it maps to.
"""

from __future__ import annotations

import asyncio
import hmac
import re
import ssl
import uuid
from typing import Any

import structlog
from aiosmtpd.smtp import SMTP, AuthResult, Envelope as SmtpEnvelope, LoginPassword, Session

from bridge.config import SmtpConfig
from bridge.errors import StoreError
from bridge.intake import Envelope, Intake

log = structlog.get_logger("bridge.smtp")


_PLAIN_ADDRESS = re.compile(
    r"\s*<([A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
    r"@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*)>\s*(.*)", re.DOTALL)


class BridgeSMTP(SMTP):
    """aiosmtpd's server with a fast path for the plain ``<local@domain>`` of MAIL and RCPT.

    aiosmtpd parses every address with the stdlib's RFC 5322 header parser, a large share of
    an SMTP session's CPU; the dot-atom form nearly every client sends is read with one
    regular expression, with the same result. Anything else goes to aiosmtpd's parser.
    """

    def _getaddr(self, arg: str):
        match = _PLAIN_ADDRESS.fullmatch(arg) if arg else None
        if match is None:
            return super()._getaddr(arg)
        address = match.group(1)
        if self.local_part_limit and len(address.rpartition("@")[0]) > self.local_part_limit:
            return None, None
        return address, match.group(2)


class Handler:
    """aiosmtpd handler: RCPT and DATA hooks only."""

    def __init__(self, config: SmtpConfig, intake: Intake) -> None:
        self.config = config
        self.intake = intake
        self.recipients = frozenset(r.lower() for r in config.recipients)

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: SmtpEnvelope, address: str, rcpt_options: list[str]
    ) -> str:
        """Accept only the configured bridge addresses."""
        if address.lower() not in self.recipients:
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
        return f"250 2.0.0 OK: not sent, Status {outcome.status} mailed back"


def _clean(text: str) -> str:
    return " ".join(text.split())[:300]


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
        return AuthResult(success=False, handled=False)


def tls_context(config: SmtpConfig) -> ssl.SSLContext | None:
    """A server TLS context from ``smtp.tls``, or None."""
    if config.tls_cert is None or config.tls_key is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(config.tls_cert, config.tls_key)
    return context


async def start_smtp(config: SmtpConfig, intake: Intake) -> list[asyncio.AbstractServer]:
    """Start the listener(s) in the running loop; return the servers to close on shutdown."""
    handler = Handler(config, intake)
    context = tls_context(config)
    authenticator = Authenticator(config) if config.auth_users else None

    def factory(implicit_tls: bool = False) -> SMTP:
        return BridgeSMTP(
            handler,
            data_size_limit=config.max_size,
            enable_SMTPUTF8=True,
            hostname=config.hostname,
            ident="mail2sms bridge",
            tls_context=None if implicit_tls else context,
            authenticator=authenticator,
            auth_required=config.auth_required,
            auth_require_tls=True,
        )

    loop = asyncio.get_running_loop()
    servers = [await loop.create_server(factory, config.listen.host, config.listen.port)]
    if config.tls_listen is not None:
        servers.append(
            await loop.create_server(
                lambda: factory(implicit_tls=True),
                config.tls_listen.host,
                config.tls_listen.port,
                ssl=context,
            )
        )
    for server in servers:
        for sock in server.sockets:
            log.info("smtp_listening", address=sock.getsockname()[:2])
    return servers
