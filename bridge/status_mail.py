"""Every numbered status mail the bridge sends is built here (pure, no I/O).

``may_reply`` says whether replying is safe at all: never to a null sender, to
``MAILER-DAEMON@`` or ``postmaster@``, to mail marked ``Auto-Submitted`` (other than
``no``) or that looks like a bounce or delivery report (``bridge.mail.bounce_reason``), to
mailing-list mail; the store caps replies per mailbox and per domain per hour, counted
on ``reply_cap_keys`` so ``target+1@``, ``Target+2@`` ... are one mailbox. Nothing from
the incoming mail is copied into a header except its Message-ID (checked to hold no
CR/LF) and, in mails about what became of an SMS, its subject with the key removed and all
whitespace folded to single spaces, so a crafted subject cannot inject headers.
``compose_status`` writes the mail; these builders call it:

- ``for_request``: a status about a mail, from the ``StatusRecipe`` intake prepared (for
  errors known before the commit, and inside the commit for credit, opt-outs and caps).
- ``for_acceptance``: the one status an evaluated request gets once the commit knows the
  outcome (104, 113, 125-127, or 100/101 when the account wants receipts), or None;
  ``after_commit`` lists it after the plan's own mails, for both stores' commits.
- ``for_job``: a job the dispatcher gave up on (122, 125).
- ``for_report``: a delivery report the account wants mailed (``dlr_mail``: 128, 129).
- ``for_inbound``: an SMS reply (132) or a STOP/START by SMS (130, 131), forwarded to the
  sender of the mail it answers.

The last two go in the mail's thread: ``In-Reply-To`` and ``References`` its Message-ID
and ``Subject: Re: <its subject without the key>``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from email.message import EmailMessage
from email.utils import formatdate, make_msgid

from bridge.config import Config
from bridge.model import Acceptance, Job, JobState, NewReply, Plan, StatusRecipe
from bridge.statuses import label, localise, status_text
from bridge.text import subject_without_key

_MSGID = re.compile(r"<?([^<>\s]+@[^<>\s]+)>?")


#: Local parts that belong to mail systems, not people: a status mail there is backscatter.
SYSTEM_MAILBOXES = frozenset({"mailer-daemon", "postmaster"})


def may_reply(
    to: str | None, *, null_sender: bool, auto_submitted: bool, list_mail: bool, bounce: str | None = None
) -> str | None:
    """Why no reply may be sent (a short reason), or None when replying is safe.

    ``bounce`` is ``ParsedMail.bounce`` (a delivery report, ``Return-Path: <>``, ...).
    """
    if null_sender or not to:
        return "null_sender"
    if to.rpartition("@")[0].lower() in SYSTEM_MAILBOXES:
        return "mailer_daemon"
    if bounce:
        return "bounce"
    if auto_submitted:
        return "auto_submitted"
    if list_mail:
        return "list_mail"
    return None


def reply_cap_keys(address: str) -> tuple[str, ...]:
    """The counters one reply to ``address`` adds to: the mailbox, then its domain.

    The mailbox is lowercased and loses its ``+tag`` (``Target+7@Victim.ORG`` and
    ``target@victim.org`` are one inbox), the domain is lowercased without a trailing
    dot. The domain key starts with ``@`` so both kinds can share one table. An address
    without ``@`` gives only itself, lowercased.
    """
    local, at, domain = address.strip().rpartition("@")
    if not at or not local:
        return (address.strip().lower(),)
    domain = domain.lower().rstrip(".")
    local = local.lower().split("+", 1)[0] or local.lower()
    return (f"{local}@{domain}", f"@{domain}")


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
    max_per_domain_per_hour: int = 0,
    max_total_per_hour: int = 0,
    subject: str | None = None,
    preface: Sequence[str] = (),
) -> NewReply:
    """The status mail for ``code``: ``Status:``/``StatusText:`` lines, then what was received.

    ``received`` holds (label, value) lines such as the redacted subject, the numbers and
    the part count; values are printed in the body only. ``max_per_hour`` caps the
    replies to ``to`` (checked when the reply is committed). ``subject`` replaces
    ``mail2sms: Status N``; ``preface`` lines come first in the body (an SMS reply's text).
    """
    text = status_text(code, language, **(details or {}))
    lines = [*preface, f"Status: {code}", f"StatusText: {text}"]
    if note:
        lines.append(label("details", language) + _one_line(localise(note, language)))
    if received:
        lines += ["", label("received", language)]
        lines += [
            f"  {localise(name, language)}: {_one_line(localise(value, language))}"
            for name, value in received
        ]
    message = EmailMessage()
    message["From"] = sender
    message["To"] = to
    message["Subject"] = subject or f"mail2sms: Status {code}"
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
    return NewReply(to=to, code=code, message=bytes(message), max_per_hour=max_per_hour,
                    max_per_domain_per_hour=max_per_domain_per_hour, max_total_per_hour=max_total_per_hour)


def _msgid(value: str | None) -> str | None:
    """``<id@host>`` when ``value`` is a plausible Message-ID, else None (no CR/LF ever)."""
    if not value:
        return None
    match = _MSGID.fullmatch(value.strip())
    return f"<{match.group(1)}>" if match else None


def _one_line(value: str) -> str:
    return " ".join(str(value).split())[:500]



def for_request(
    recipe: StatusRecipe, code: int, note: str = "", details: dict[str, object] | None = None
) -> NewReply:
    """The status ``code`` about the mail ``recipe`` describes."""
    return compose_status(
        code=code,
        to=recipe.to,
        sender=recipe.sender,
        language=recipe.language,
        note=note,
        details=details or {},
        in_reply_to=recipe.in_reply_to,
        references=recipe.references,
        received=recipe.received,
        max_per_hour=recipe.max_per_hour,
        max_per_domain_per_hour=recipe.max_per_domain_per_hour,
        max_total_per_hour=recipe.max_total_per_hour,
    )


def for_acceptance(recipe: StatusRecipe | None, acceptance: Acceptance) -> NewReply | None:
    """The status mail an evaluated request gets after its commit, if any."""
    if recipe is None or acceptance.outcome == "duplicate":
        return None
    if acceptance.outcome == "insufficient_credit":
        return for_request(recipe, 104, "", {"used": acceptance.used, "available": acceptance.available})
    if acceptance.refused or (recipe.receipts and acceptance.job_ids):
        return for_request(recipe, acceptance.status, acceptance.note)
    return None


def after_commit(plan: Plan, acceptance: Acceptance, evaluated: bool) -> list[NewReply]:
    """Every mail a commit queues: the plan's own, then the evaluated request's status."""
    answer = for_acceptance(plan.status, acceptance) if evaluated else None
    return [*plan.replies, answer] if answer is not None else list(plan.replies)


def for_job(job: Job, code: int, note: str, config: Config) -> NewReply | None:
    """The status mail for a job given up on, or None when its mail may not be answered."""
    return _about_job(job, code, config, note=note)


def _about_job(job: Job, code: int, config: Config, *, note: str = "", details: dict[str, object] | None = None,
               preface: Sequence[str] = (), thread: bool = False) -> NewReply | None:
    """A mail about ``job`` to its mail's sender (None when that mail may not be answered).

    ``thread``: what became of the SMS after the send, so the subject is ``Re: <subject
    without the key>`` and the SMS text is recalled under what was received.
    """
    if not job.reply_to:
        return None
    account = config.accounts.get(job.login)
    language = account.language if account else "fr"
    received = [("Number" if language == "en" else "Numéro", job.number)]
    if thread:
        received.append(("SMS", _one_line(job.text)[:160]))
    return compose_status(
        code=code,
        to=job.reply_to,
        sender=config.replies.sender,
        language=language,
        note=note,
        details=details,
        in_reply_to=job.message_id,
        received=received,
        max_per_hour=config.replies.rate_per_hour,
        max_per_domain_per_hour=config.replies.rate_per_domain_per_hour,
        max_total_per_hour=config.replies.rate_total_per_hour,
        subject=f"Re: {subject_without_key(job.subject)}" if thread else None,
        preface=preface,
    )


def for_report(job: Job, state: JobState, reason: str | None, config: Config) -> NewReply | None:
    """The mail a delivery report gets under the account's ``dlr_mail``, or None.

    ``failures`` (the default): 128 for an SMS not delivered; ``all``: also 129 for one
    delivered; ``none``: nothing.
    """
    account = config.accounts.get(job.login)
    mode = account.dlr_mail if account else "failures"
    if mode == "none" or (state is JobState.DELIVERED and mode != "all"):
        return None
    if state is JobState.DELIVERED:
        return _about_job(job, 129, config, details={"number": job.number}, thread=True)
    return _about_job(job, 128, config, details={"number": job.number, "reason": _one_line(reason or "?")[:200]},
                      thread=True)


def for_inbound(job: Job, number: str, text: str, action: str | None, word: str, when: str,
                config: Config) -> NewReply | None:
    """The mail an SMS reply to ``job`` gets: 130 (STOP), 131 (START/REABO) or 132 (a reply).

    The SMS text (whitespace folded, at most 1,000 characters) and the number come first in
    the body (indented), then the status lines; ``when`` is the time received, as printed.
    """
    language = (config.accounts[job.login].language if job.login in config.accounts else "fr")
    heading = f"SMS from {number} ({when}):" if language == "en" else f"SMS du {number} ({when}) :"
    preface = [heading, "", *_wrapped(text), "", "--"]
    code = {"stop": 130, "start": 131}.get(action or "", 132)
    return _about_job(job, code, config, details={"number": number, "word": word}, preface=preface, thread=True)


def _wrapped(text: str) -> list[str]:
    """The SMS as lines indented by two spaces (so no line of it reads as ``Status:``): its own
    line breaks kept, each line's spaces folded, 1,000 characters at most."""
    kept = text.replace("\r\n", "\n").replace("\r", "\n")[:1000]
    return ["  " + " ".join(line.split()) for line in kept.split("\n")]
