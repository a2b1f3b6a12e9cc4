"""Intake: one raw mail -> SMS jobs committed in the store, or a numbered status.

Shared by the SMTP listener and the IMAP poller. ``evaluate`` is pure (config and clock
in, a ``Verdict`` out); ``Intake.submit`` adds the one commit. Order of checks: subject
(105, 109), account and API key (102), sender address (121), then the request itself
(123, 115, 114, 120, 110, 111); credit (104) is checked inside the commit so two mails
racing for the last credits cannot both pass.

Idempotency: a mail with a Message-ID gets the key sha256(Message-ID, subject, body); a
second delivery with the same key is recognised and dropped. A mail without a Message-ID
is never deduplicated over SMTP (two identical alerts a minute apart are two alerts); the
IMAP poller adds a second key from the mailbox's UIDVALIDITY/UID; either key seen
before makes the mail a duplicate.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone

import structlog

from bridge.config import AccountConfig, Config
from bridge.errors import StatusError
from bridge.mail import ParsedMail, parse_mail
from bridge.replies import compose_status, may_reply
from bridge.request import RequestPolicy, SmsRequest, build_request
from bridge.routing import price_per_part
from bridge.statuses import status_text
from bridge.store import Incoming, NewJob, NewReply, Store
from bridge.subject import Subject, parse_subject

log = structlog.get_logger("bridge.intake")
_DUMMY_KEY = b"\x00" * 32


@dataclass(frozen=True)
class Envelope:
    """Where a mail came from, as the ingress adapter saw it."""

    mail_from: str | None                     # "" or None: null sender (a bounce)
    rcpt_tos: tuple[str, ...] = ()
    source: str = "smtp"                      # smtp | imap | cli
    auth_account: str | None = None           # account bound by SMTP AUTH, if any
    key: str | None = None                    # adapter's own key, e.g. imap:box:UIDVALIDITY:UID


@dataclass(frozen=True)
class Verdict:
    """What ``evaluate`` decided, before any commit."""

    mail: ParsedMail
    account: AccountConfig | None = None
    subject: Subject | None = None
    request: SmsRequest | None = None
    error: StatusError | None = None


@dataclass(frozen=True)
class Outcome:
    """What happened to one mail; the ingress adapter turns it into its own answer."""

    status: int                               # 100/101 accepted, else the status told
    text: str                                 # the status text in English
    job_ids: tuple[int, ...] = ()
    duplicate: bool = False
    replied: bool = False
    note: str = ""

    @property
    def accepted(self) -> bool:
        """True when SMS jobs were committed (possibly with status 113 for some numbers)."""
        return bool(self.job_ids)


def find_account(config: Config, login: str, api_key: str) -> AccountConfig | None:
    """The account for ``login`` if ``api_key`` matches, in constant time either way."""
    account = config.accounts.get(login)
    expected = account.api_key.encode() if account else _DUMMY_KEY
    matches = hmac.compare_digest(expected, api_key.encode())
    return account if account is not None and matches else None


def evaluate(mail: ParsedMail, envelope: Envelope, config: Config, now: datetime) -> Verdict:
    """Check one parsed mail against the config; never raises (errors land in the verdict)."""
    try:
        subject = parse_subject(mail.subject)
    except StatusError as error:
        return Verdict(mail, error=error)
    account = find_account(config, subject.login, subject.api_key)
    if account is None or (envelope.auth_account and envelope.auth_account != account.login):
        return Verdict(mail, subject=subject, error=StatusError(102))
    if account.allowed_senders and not _allowed(account, mail, envelope):
        return Verdict(mail, account, subject, error=StatusError(121))
    policy = RequestPolicy(
        tz=config.timezone,
        region=config.region,
        max_recipients=config.max_recipients,
        transliterate=account.transliterate,
    )
    try:
        request = build_request(subject, mail.body, policy, now)
    except StatusError as error:
        return Verdict(mail, account, subject, error=error)
    return Verdict(mail, account, subject, request)


def _allowed(account: AccountConfig, mail: ParsedMail, envelope: Envelope) -> bool:
    candidates = {(envelope.mail_from or "").lower(), (mail.sender or "").lower()} - {""}
    return bool(candidates & set(account.allowed_senders))


def idempotency_key(mail: ParsedMail, envelope: Envelope) -> str | None:
    """The content key a re-delivery of this mail would have, or None without Message-ID."""
    if not mail.message_id:
        return None
    digest = hashlib.sha256()
    for part in (mail.message_id, mail.subject, mail.body):
        digest.update(part.encode("utf-8", "surrogatepass"))
        digest.update(b"\x00")
    return digest.hexdigest()


class Intake:
    """Turns raw mails into committed jobs and replies."""

    def __init__(
        self,
        config: Config,
        store: Store,
        clock: Callable[[], float] = time.time,
        on_commit: Callable[[], None] | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.clock = clock
        self.on_commit = on_commit  # wakes the dispatcher when jobs were committed

    async def submit(self, raw: bytes, envelope: Envelope, inline: bool = False) -> Outcome:
        """Evaluate and commit one mail; raises ``StoreError`` if the commit failed.

        With ``inline`` the caller reports failures itself (SMTP ``550``), so no status
        mail is queued for them.
        """
        now = self.clock()
        mail = parse_mail(raw, envelope.mail_from or None)
        verdict = evaluate(mail, envelope, self.config, datetime.fromtimestamp(now, timezone.utc))
        reply_to = mail.sender or envelope.mail_from or None
        language = verdict.account.language if verdict.account else "fr"
        refusal = self._refusal(mail, envelope, reply_to)
        replies: list[NewReply] = []
        jobs: list[NewJob] = []
        status, note = 100, ""
        if verdict.error is not None:
            status, note = verdict.error.code, verdict.error.note
            if not inline and refusal is None:
                replies.append(self._reply(verdict, reply_to, verdict.error.code, language, note, verdict.error.details))
        else:
            request = verdict.request
            jobs = _jobs(request, verdict.account, self.config)
            status = 101 if request.send_at else 100
            if request.invalid:
                status = 113
                note = ", ".join(f"{i.raw} ({i.reason})" for i in request.invalid[:20])
            wants_receipt = verdict.account.receipts or status == 113
            if wants_receipt and not inline and refusal is None:
                replies.append(self._reply(verdict, reply_to, status, language, note, {}))
        incoming = Incoming(
            key=idempotency_key(mail, envelope),
            login=verdict.account.login if verdict.account and verdict.request else None,
            message_id=mail.message_id,
            reply_to=reply_to if refusal is None else None,
            summary=verdict.subject.redacted() if verdict.subject else mail.subject[:200],
            jobs=jobs,
            replies=replies,
            extra_keys=(envelope.key,) if envelope.key else (),
            on_insufficient=None if inline or refusal else (
                lambda used, available: self._reply(
                    verdict, reply_to, 104, language, "", {"used": used, "available": available}
                )
            ),
        )
        result = await self.store.accept(incoming, now)
        if result.job_ids and self.on_commit is not None:
            self.on_commit()
        bound = log.bind(message_id=mail.message_id, source=envelope.source)
        if result.outcome == "duplicate":
            bound.info("duplicate_dropped")
            return Outcome(status, "duplicate: already received", duplicate=True)
        if result.outcome == "insufficient_credit":
            details = {"used": result.used, "available": result.available}
            bound.info("rejected", status=104, **details)
            return Outcome(104, status_text(104, "en", **details), replied=not inline and refusal is None)
        if verdict.error is not None:
            bound.info("rejected", status=status, reply_suppressed=refusal)
        else:
            bound.info("accepted", login=verdict.account.login, jobs=list(result.job_ids), status=status)
        return Outcome(
            status, status_text(status, "en"), result.job_ids, replied=bool(replies), note=note
        )

    def _refusal(self, mail: ParsedMail, envelope: Envelope, to: str | None) -> str | None:
        """Why this mail must not get a reply, or None (the hourly cap is the store's)."""
        reason = may_reply(
            to,
            null_sender=not envelope.mail_from and envelope.source == "smtp",
            auto_submitted=mail.auto_submitted,
            list_mail=mail.list_mail,
        )
        if reason is None and not self.config.replies.enabled:
            reason = "replies_disabled"
        return reason

    def _reply(
        self,
        verdict: Verdict,
        to: str | None,
        code: int,
        language: str,
        note: str,
        details: dict[str, object],
    ) -> NewReply:
        mail = verdict.mail
        received = []
        if verdict.subject is not None:
            received.append(("Subject" if language == "en" else "Objet", verdict.subject.redacted()))
        if verdict.request is not None:
            request = verdict.request
            received.append(("Numbers" if language == "en" else "Numéros", ", ".join(request.numbers)))
            received.append(("Parts" if language == "en" else "SMS", str(request.segmentation.count)))
            if request.warnings:
                received.append(("Warning" if language == "en" else "Attention", "; ".join(request.warnings)))
        return compose_status(
            code=code,
            to=to or "",
            sender=self.config.replies.sender,
            language=language,
            note=note,
            details=details,
            in_reply_to=mail.message_id,
            references=mail.references,
            received=received,
            max_per_hour=self.config.replies.rate_per_hour,
        )


def _jobs(request: SmsRequest, account: AccountConfig, config: Config) -> list[NewJob]:
    send_at = request.send_at.timestamp() if request.send_at else None
    seg = request.segmentation
    return [
        NewJob(
            number=number,
            text=request.text,
            sender=request.sender_for(number),
            parts=seg.count,
            cost=seg.count * price_per_part(account, config.pricing, number),
            unicode=seg.unicode,
            low_cost=request.low_cost,
            send_at=send_at,
        )
        for number in request.numbers
    ]
