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
from dataclasses import dataclass
from datetime import datetime, timezone

import structlog

from bridge.config import AccountConfig, Config
from bridge.errors import StatusError
from bridge.mail import ParsedMail, parse_mail
from bridge.replies import compose_status, may_reply
from bridge.request import RequestPolicy, SmsRequest, build_request
from bridge.routing import price_per_part
from bridge.statuses import status_text
from bridge.numbers import FRENCH_REGIONS, region_of
from bridge.store import Incoming, Limits, NewJob, NewReply, Refusal, Store
from bridge.subject import Subject, parse_subject

log = structlog.get_logger("bridge.intake")
_DUMMY_KEY = b"\x00" * 32


@dataclass(frozen=True)
class Envelope:
    """Where a mail came from, as the ingress adapter saw it."""

    mail_from: str | None                     # "": null sender <> (a bounce); None: not known
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
        category=account.category,
        stop=account.stop,
        stop_text=account.stop_text,
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
        refusal = self._refusal(mail, envelope, reply_to)
        may_mail = not inline and refusal is None
        replies: list[NewReply] = []
        jobs: list[NewJob] = []
        refused: list[Refusal] = []
        if verdict.error is not None:
            if may_mail:
                error = verdict.error
                replies.append(self._reply(verdict, reply_to, error.code, error.note, error.details))
        else:
            jobs, refused = _jobs(verdict.request, verdict.account, self.config, now)
        account = verdict.account
        incoming = Incoming(
            key=idempotency_key(mail, envelope),
            login=account.login if account and verdict.request else None,
            message_id=mail.message_id,
            reply_to=reply_to if refusal is None else None,
            summary=verdict.subject.redacted() if verdict.subject else mail.subject[:200],
            jobs=jobs,
            replies=replies,
            extra_keys=(envelope.key,) if envelope.key else (),
            refused=tuple(refused),
            sender=verdict.request.sender if verdict.request else None,
            limits=_limits(account),
            on_outcome=(lambda result: self._outcome_replies(verdict, reply_to, result, jobs))
            if may_mail and verdict.request else None,
        )
        result = await self.store.accept(incoming, now)
        if result.job_ids and self.on_commit is not None:
            self.on_commit()
        return self._report(verdict, envelope, result, jobs, refusal)

    def _report(self, verdict: Verdict, envelope: Envelope, result, jobs: list[NewJob], refusal) -> Outcome:
        """Log what happened and say it to the ingress adapter."""
        bound = log.bind(message_id=verdict.mail.message_id, source=envelope.source)
        if result.outcome == "duplicate":
            bound.info("duplicate_dropped")
            return Outcome(0, "duplicate: already received", duplicate=True)
        if verdict.error is not None:
            code, note = verdict.error.code, verdict.error.note
            bound.info("rejected", status=code, reply_suppressed=refusal)
            return Outcome(code, status_text(code, "en"), note=note)
        if result.outcome == "insufficient_credit":
            details = {"used": result.used, "available": result.available}
            bound.info("rejected", status=104, **details)
            return Outcome(104, status_text(104, "en", **details))
        code, note = _status_of(result, jobs)
        for item in result.refused:
            if item.code != 113:
                bound.info("number_refused", number=item.number, status=item.code, reason=item.reason)
        if result.job_ids:
            bound.info("accepted", login=verdict.account.login, jobs=list(result.job_ids), status=code)
        else:
            bound.info("rejected", status=code, note=note)
        return Outcome(code, status_text(code, "en"), result.job_ids, note=note)

    def _outcome_replies(
        self, verdict: Verdict, to: str | None, result, jobs: list[NewJob]
    ) -> list[NewReply]:
        """The one status mail an accepted request gets, if any (inside the commit)."""
        if result.outcome == "insufficient_credit":
            details = {"used": result.used, "available": result.available}
            return [self._reply(verdict, to, 104, "", details)]
        code, note = _status_of(result, jobs)
        if result.refused or (verdict.account.receipts and result.job_ids):
            return [self._reply(verdict, to, code, note, {})]
        return []

    def _refusal(self, mail: ParsedMail, envelope: Envelope, to: str | None) -> str | None:
        """Why this mail must not get a reply, or None (the hourly cap is the store's)."""
        reason = may_reply(
            to,
            # "" is an explicit null sender (<>) from any adapter; over SMTP a missing one is too.
            null_sender=envelope.mail_from == "" or (not envelope.mail_from and envelope.source == "smtp"),
            auto_submitted=mail.auto_submitted,
            list_mail=mail.list_mail,
        )
        if reason is None and not self.config.replies.enabled:
            reason = "replies_disabled"
        return reason

    def _reply(
        self, verdict: Verdict, to: str | None, code: int, note: str, details: dict[str, object]
    ) -> NewReply:
        mail = verdict.mail
        language = verdict.account.language if verdict.account else "fr"
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


#: When several kinds of refusal hit one mail, the status mailed is the first of these.
_REFUSAL_ORDER = (126, 125, 127, 113)


def _status_of(result, jobs: list[NewJob]) -> tuple[int, str]:
    """The status for an evaluated request: a refusal code with its numbers, or 100/101."""
    if result.refused:
        codes = {r.code for r in result.refused}
        code = next(c for c in _REFUSAL_ORDER if c in codes)
        note = ", ".join(f"{r.number} ({r.reason})" for r in result.refused[:20])
        return code, note
    now_or_later = [job for job in jobs if job.send_at is not None]
    return (101 if now_or_later else 100), ""


def _limits(account: AccountConfig | None) -> Limits:
    if account is None:
        return Limits()
    return Limits(account.max_per_number_per_hour, account.max_sms_per_day, account.max_spend_per_day)


def allowed_country(account: AccountConfig, number: str) -> bool:
    """True when the account may send to ``number``'s country (FR covers overseas France)."""
    country = region_of(number)
    if country in account.allowed_countries or "*" in account.allowed_countries:
        return True
    return country in FRENCH_REGIONS and "FR" in account.allowed_countries


def _jobs(
    request: SmsRequest, account: AccountConfig, config: Config, now: float
) -> tuple[list[NewJob], list[Refusal]]:
    """One job per allowed number; refusals for invalid numbers and forbidden countries.

    Marketing jobs due in quiet hours are held until the next allowed minute.
    """
    refused = [Refusal(i.raw, 113, i.reason) for i in request.invalid]
    due = request.send_at.timestamp() if request.send_at else None
    if request.category == "marketing":
        quiet = account.quiet_hours or config.quiet_hours
        wanted = request.send_at or datetime.fromtimestamp(now, timezone.utc)
        release = quiet.next_allowed(wanted)
        if release > wanted:
            due = release.timestamp()
    seg = request.segmentation
    jobs = []
    for number in request.numbers:
        if not allowed_country(account, number):
            refused.append(Refusal(number, 126, f"country {region_of(number)} not allowed"))
            continue
        jobs.append(
            NewJob(
                number=number,
                text=request.text,
                sender=request.sender_for(number),
                parts=seg.count,
                cost=seg.count * price_per_part(account, config.pricing, number),
                unicode=seg.unicode,
                low_cost=request.low_cost,
                send_at=due,
                category=request.category,
            )
        )
    return jobs, refused
