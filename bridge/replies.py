"""Numbered statuses mailed back to senders.

``compose_status`` builds the mail (pure); ``may_reply`` says whether replying is safe;
``ReplySender`` mails queued replies through the configured relay with retries. Replies
are stored like jobs, so a relay outage delays them and loses nothing.

A reply is never sent to a null sender, to mail marked ``Auto-Submitted`` (other than
``no``), to mailing-list mail, or past ``replies.rate_per_hour`` replies to one address.
Nothing from the incoming mail is copied into a header except its Message-ID (checked to
hold no CR/LF), so a crafted subject cannot inject headers.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING
from email.message import EmailMessage
from email.utils import formatdate, make_msgid

import aiosmtplib
import structlog

from bridge.backoff import exponential_backoff
from bridge.config import RepliesConfig
from bridge.metrics import Metrics
from bridge.statuses import status_text
from bridge.model import NewReply

if TYPE_CHECKING:
    from bridge.store import Store

log = structlog.get_logger("bridge.replies")
_MSGID = re.compile(r"<?([^<>\s]+@[^<>\s]+)>?")
_MAX_AGE = 86400.0


def may_reply(
    to: str | None, *, null_sender: bool, auto_submitted: bool, list_mail: bool
) -> str | None:
    """Why no reply may be sent (a short reason), or None when replying is safe."""
    if null_sender or not to:
        return "null_sender"
    if auto_submitted:
        return "auto_submitted"
    if list_mail:
        return "list_mail"
    return None


def compose_status(
    *,
    code: int,
    to: str,
    sender: str,
    language: str = "fr",
    note: str = "",
    details: dict[str, object] | None = None,
    in_reply_to: str | None = None,
    references: Sequence[str] = (),
    received: Sequence[tuple[str, str]] = (),
    max_per_hour: int = 0,
) -> NewReply:
    """The status mail for ``code``: ``Status:``/``StatusText:`` lines, then what was received.

    ``received`` holds (label, value) lines such as the redacted subject, the numbers and
    the part count; values are printed in the body only. ``max_per_hour`` caps the
    replies to ``to`` (checked when the reply is committed).
    """
    text = status_text(code, language, **(details or {}))
    lines = [f"Status: {code}", f"StatusText: {text}"]
    if note:
        lines.append(("Details: " if language == "en" else "Détails : ") + _one_line(note))
    if received:
        lines += ["", "Received:" if language == "en" else "Reçu :"]
        lines += [f"  {label}: {_one_line(value)}" for label, value in received]
    message = EmailMessage()
    message["From"] = sender
    message["To"] = to
    message["Subject"] = f"mail2sms: Status {code}"
    message["Date"] = formatdate(localtime=False, usegmt=True)
    message["Message-ID"] = make_msgid(domain=sender.rpartition("@")[2] or None)
    message["Auto-Submitted"] = "auto-replied"
    message["X-Mail2SMS-Status"] = str(code)
    parent = _msgid(in_reply_to)
    if parent:
        message["In-Reply-To"] = parent
        chain = [m for m in (_msgid(r) for r in references) if m]
        message["References"] = " ".join(dict.fromkeys([*chain, parent]))
    message.set_content("\n".join(lines) + "\n", charset="utf-8")
    return NewReply(to=to, code=code, message=bytes(message), max_per_hour=max_per_hour)


def _msgid(value: str | None) -> str | None:
    """``<id@host>`` when ``value`` is a plausible Message-ID, else None (no CR/LF ever)."""
    if not value:
        return None
    match = _MSGID.fullmatch(value.strip())
    return f"<{match.group(1)}>" if match else None


def _one_line(value: str) -> str:
    return " ".join(str(value).split())[:500]


class ReplySender:
    """Mails queued replies through the relay, retrying with backoff for a day."""

    def __init__(
        self, config: RepliesConfig, store: "Store", clock: Callable[[], float] = time.time,
        metrics: Metrics | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.clock = clock
        self.metrics = metrics or Metrics()

    async def send_due(self, limit: int = 50) -> int:
        """Send the replies that are due; return how many went out."""
        sent = 0
        for reply in await self.store.claim_replies(self.clock(), limit):
            sent += await self._send(reply)
        return sent

    async def _send(self, reply) -> int:
        now = self.clock()
        try:
            await aiosmtplib.send(
                reply.message,
                sender=self.config.sender,
                recipients=[reply.to],
                hostname=self.config.relay.host,
                port=self.config.relay.port,
                timeout=self.config.timeout,
                start_tls=self.config.starttls,
                username=self.config.username,
                password=self.config.password,
            )
        except (aiosmtplib.SMTPException, OSError, asyncio.TimeoutError) as exc:
            error = f"{type(exc).__name__}: {exc}"[:300]
            permanent = isinstance(exc, aiosmtplib.SMTPResponseException) and 500 <= exc.code < 600
            if permanent or now - reply.created_at > _MAX_AGE:
                log.warning("reply_failed", reply_id=reply.id, code=reply.code, error=error)
                await self.store.finish_reply(reply.id, "failed", error, now, now)
                self.metrics.reply("failed")
            else:
                delay = exponential_backoff(reply.attempts + 1, 5.0, 600.0)
                log.info("reply_retry", reply_id=reply.id, error=error, delay=round(delay, 1))
                await self.store.finish_reply(reply.id, "queued", error, now + delay, now)
                self.metrics.reply("retried")
            return 0
        log.info("reply_sent", reply_id=reply.id, code=reply.code)
        await self.store.finish_reply(reply.id, "sent", None, now, now)
        self.metrics.reply("sent")
        return 1
