"""Intake's decision, pure: one parsed mail + config + clock -> a ``Plan`` for the store.

Order of checks: subject (105, 109), account and API key (102), sender address (121), then
the request itself (123, 115, 114, 120, 110, 111). What can only be known inside the
commit (credit 104, opt-outs 125, caps 127) the store decides with ``rules`` and the
``StatusRecipe`` the plan carries. Text is cleaned first (``bridge.text``), and the API
key never reaches the plan: the summary is the redacted subject.

Idempotency: a mail with a Message-ID gets the key sha256(Message-ID, subject, body); a
second delivery with the same key is recognised and dropped. A mail without a Message-ID
is never deduplicated over SMTP (two identical alerts a minute apart are two alerts); the
IMAP poller adds a second key from the mailbox's UIDVALIDITY/UID.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
from dataclasses import dataclass
from datetime import datetime, timezone

from bridge import rules, status_mail, text
from bridge.config import Config
from bridge.sections import AccountConfig
from bridge.errors import StatusError
from bridge.mail import ParsedMail
from bridge.model import Limits, NewJob, Plan, Refusal, StatusRecipe
from bridge.numbers import region_of
from bridge.status_mail import may_reply
from bridge.request import RequestPolicy, SmsRequest, build_request
from bridge.routing import price_per_part
from bridge.subject import Subject, parse_subject

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
    """What ``evaluate`` found, before any commit."""

    mail: ParsedMail
    account: AccountConfig | None = None
    subject: Subject | None = None
    request: SmsRequest | None = None
    error: StatusError | None = None


@dataclass(frozen=True)
class Decision:
    """The plan for the store, and what the ingress adapter needs to report."""

    plan: Plan
    verdict: Verdict
    no_reply: str | None                      # why no status mail may be sent, or None


def clean_mail(mail: ParsedMail) -> ParsedMail:
    """The mail with subject and body made safe to count, store and log."""
    subject, body = text.clean(mail.subject).replace("\n", " "), text.clean_body(mail.body)
    if subject == mail.subject and body == mail.body:
        return mail
    return dataclasses.replace(mail, subject=subject, body=body)


def find_account(config: Config, login: str, api_key: str) -> AccountConfig | None:
    """The account for ``login`` if ``api_key`` matches, in constant time either way."""
    account = config.accounts.get(login)
    expected = account.api_key.encode() if account else _DUMMY_KEY
    matches = hmac.compare_digest(expected, api_key.encode("utf-8", "replace"))
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


def idempotency_key(mail: ParsedMail) -> str | None:
    """The content key a re-delivery of this mail would have, or None without Message-ID."""
    if not mail.message_id:
        return None
    digest = hashlib.sha256()
    for part in (mail.message_id, mail.subject, mail.body):
        digest.update(part.encode("utf-8", "surrogatepass"))
        digest.update(b"\x00")
    return digest.hexdigest()


def decide(mail: ParsedMail, envelope: Envelope, config: Config, now: float, inline: bool = False) -> Decision:
    """The plan for one parsed mail. With ``inline`` the adapter reports refusals itself."""
    mail = clean_mail(mail)
    verdict = evaluate(mail, envelope, config, datetime.fromtimestamp(now, timezone.utc))
    reply_to = mail.sender or envelope.mail_from or None
    no_reply = _no_reply(mail, envelope, reply_to, config)
    recipe = None if inline or no_reply else _recipe(verdict, reply_to, config)
    account, request = verdict.account, verdict.request
    replies, jobs, refused = [], [], []
    if verdict.error is not None:
        if recipe is not None:
            error = verdict.error
            replies.append(status_mail.for_request(recipe, error.code, error.note, error.details))
    else:
        jobs, refused = plan_jobs(request, account, config, now)
    plan = Plan(
        key=idempotency_key(mail),
        login=account.login if account and request else None,
        message_id=mail.message_id,
        reply_to=reply_to if no_reply is None else None,
        summary=verdict.subject.redacted() if verdict.subject else text.redact_subject(mail.subject),
        jobs=tuple(jobs),
        replies=tuple(replies),
        extra_keys=(envelope.key,) if envelope.key else (),
        refused=tuple(refused),
        sender=request.sender if request else None,
        limits=_limits(account),
        status=recipe if request else None,
    )
    return Decision(plan, verdict, no_reply)


def _no_reply(mail: ParsedMail, envelope: Envelope, to: str | None, config: Config) -> str | None:
    """Why this mail must not get a reply, or None (the hourly cap is the store's)."""
    reason = may_reply(
        to,
        # "" is an explicit null sender (<>) from any adapter; over SMTP a missing one is too.
        null_sender=envelope.mail_from == "" or (not envelope.mail_from and envelope.source == "smtp"),
        auto_submitted=mail.auto_submitted,
        list_mail=mail.list_mail,
        bounce=mail.bounce,
    )
    if reason is None and not config.replies.enabled:
        reason = "replies_disabled"
    return reason


def _recipe(verdict: Verdict, to: str | None, config: Config) -> StatusRecipe:
    """How this mail's statuses are addressed and what they echo of it."""
    account = verdict.account
    language = account.language if account else "fr"
    en = language == "en"
    received: list[tuple[str, str]] = []
    if verdict.subject is not None:
        received.append(("Subject" if en else "Objet", verdict.subject.redacted()))
    if verdict.request is not None:
        request = verdict.request
        received.append(("Numbers" if en else "Numéros", ", ".join(request.numbers)))
        received.append(("Parts" if en else "SMS", str(request.segmentation.count)))
        if request.warnings:
            received.append(("Warning" if en else "Attention", "; ".join(request.warnings)))
    return StatusRecipe(
        to=to or "",
        sender=config.replies.sender,
        language=language,
        in_reply_to=verdict.mail.message_id,
        references=tuple(verdict.mail.references),
        received=tuple(received),
        max_per_hour=config.replies.rate_per_hour,
        max_per_domain_per_hour=config.replies.rate_per_domain_per_hour,
        max_total_per_hour=config.replies.rate_total_per_hour,
        receipts=bool(account and account.receipts),
    )


def _limits(account: AccountConfig | None) -> Limits:
    if account is None:
        return Limits()
    return Limits(account.max_per_number_per_hour, account.max_sms_per_day, account.max_spend_per_day)


def plan_jobs(
    request: SmsRequest, account: AccountConfig, config: Config, now: float
) -> tuple[list[NewJob], list[Refusal]]:
    """One job per allowed number; refusals for invalid numbers and forbidden countries.

    Marketing jobs due in quiet hours are held until the next allowed minute.
    """
    refused = [Refusal(i.raw, 113, i.reason) for i in request.invalid]
    due = request.send_at.timestamp() if request.send_at else None
    release = rules.quiet_release(account.quiet_hours or config.quiet_hours, request.category,
                                  due if due is not None else now)
    if release is not None:
        due = release
    seg = request.segmentation
    text, parts, unicode, low_cost, category = request.text, seg.count, seg.unicode, request.low_cost, request.category
    prices: dict[str | None, int | None] = {}  # by region: the price of a part, None if not allowed
    jobs = []
    for number in request.numbers:
        region = region_of(number)
        if region not in prices:  # the country rules and prices depend on the region only: once each
            prices[region] = (price_per_part(account, config.pricing, number)
                              if rules.allowed_country(account.allowed_countries, number) else None)
        price = prices[region]
        if price is None:
            refused.append(Refusal(number, 126, f"country {region} not allowed"))
            continue
        jobs.append(NewJob(number, text, request.sender_for(number), parts, parts * price, unicode, low_cost, due,
                           category))
    return jobs, refused
