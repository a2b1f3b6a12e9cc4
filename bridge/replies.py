"""The reply sender: mails the queued numbered statuses through the configured relay.

Replies are stored like jobs, so a relay outage delays them and loses nothing; a reply is
retried with backoff for a day, and a 5xx from the relay fails it for good. What a status
mail says, and whether one may be sent at all, is ``bridge.status_mail``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import aiosmtplib
import structlog

from bridge.backoff import exponential_backoff
from bridge.sections import RepliesConfig
from bridge.metrics import Metrics
from bridge.model import ReplyState

if TYPE_CHECKING:
    from bridge.store import Store

log = structlog.get_logger("bridge.replies")
_MAX_AGE = 86400.0


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
                await self.store.finish_reply(reply.id, ReplyState.FAILED, error, now, now)
                self.metrics.reply("failed")
            else:
                delay = exponential_backoff(reply.attempts + 1, 5.0, 600.0)
                log.info("reply_retry", reply_id=reply.id, error=error, delay=round(delay, 1))
                await self.store.finish_reply(reply.id, ReplyState.QUEUED, error, now + delay, now)
                self.metrics.reply("retried")
            return 0
        log.info("reply_sent", reply_id=reply.id, code=reply.code)
        await self.store.finish_reply(reply.id, ReplyState.SENT, None, now, now)
        self.metrics.reply("sent")
        return 1
