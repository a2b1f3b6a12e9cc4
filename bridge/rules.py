"""Business rules as pure functions: opt-outs, anti-pumping caps, countries, quiet hours.

The store reads the counts these need inside its transaction (``Counts``) and calls
``screen``; the dispatcher calls ``optout_reason`` and ``quiet_release`` before a call.
Nothing here does I/O, so each rule is tested with plain tables.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable, Sequence
from datetime import datetime, timezone
from typing import Literal

from bridge.model import Counts, Limits, NewJob, Refusal
from bridge.numbers import FRENCH_REGIONS, region_of

#: When several kinds of refusal hit one mail, the status mailed is the first of these.
REFUSAL_ORDER = (126, 125, 127, 113)


def optout_reason(optouts: frozenset[tuple[str, str]], number: str, sender: str | None) -> str | None:
    """Why ``number`` may not get SMS from ``sender`` (a global STOP wins), or None."""
    if (number, "") in optouts:
        return "opted out (STOP)"
    if sender and (number, sender.lower()) in optouts:
        return f"opted out of sender {sender}"
    return None


#: What a phone may answer to unsubscribe or subscribe again (after ``keyword``'s folding).
STOP_WORDS = frozenset({"stop", "stop sms"})
START_WORDS = frozenset({"start", "reabo"})


def keyword(text: str | None) -> Literal["stop", "start"] | None:
    """``stop`` or ``start`` when an SMS reply is only one of the opt-out words, else None.

    Any case, accents, surrounding spaces and a final full stop or exclamation mark are
    ignored (``" Stop SMS "``, ``"RÉABO"``, ``"start!"``); a sentence that merely contains
    the word (``"please stop calling"``) is a reply, not a keyword.
    """
    if not text:
        return None
    folded = "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c))
    folded = " ".join(folded.casefold().split()).rstrip(".!").strip()
    if folded in STOP_WORDS:
        return "stop"
    if folded in START_WORDS:
        return "start"
    return None


def screen(
    jobs: Sequence[NewJob], sender: str | None, limits: Limits, counts: Counts
) -> tuple[list[NewJob], list[Refusal]]:
    """The jobs that may be created, and a refusal for each one dropped (never charged).

    Opt-outs first (125), then the caps (127): per number per hour, SMS per day, credits
    spent per day; the jobs kept earlier in the same mail count towards each cap.
    """
    kept: list[NewJob] = []
    refused: list[Refusal] = []
    per_number = dict(counts.per_number_hour)
    spent = counts.spent_today
    for job in jobs:
        reason = optout_reason(counts.optouts, job.number, sender)
        if reason:
            refused.append(Refusal(job.number, 125, reason))
            continue
        reason = _over_cap(limits, per_number.get(job.number, 0), counts.sms_today + len(kept),
                           spent + job.cost)
        if reason:
            refused.append(Refusal(job.number, 127, reason))
            continue
        kept.append(job)
        per_number[job.number] = per_number.get(job.number, 0) + 1
        spent += job.cost
    return kept, refused


def _over_cap(limits: Limits, number_hour: int, sms_today: int, spend_after: int) -> str | None:
    if limits.per_number_per_hour and number_hour >= limits.per_number_per_hour:
        return f"at most {limits.per_number_per_hour} SMS per hour to one number"
    if limits.sms_per_day and sms_today >= limits.sms_per_day:
        return f"at most {limits.sms_per_day} SMS per day for this account"
    if limits.spend_per_day and spend_after > limits.spend_per_day:
        return f"at most {limits.spend_per_day} credits per day for this account"
    return None


def status_of(refused: Sequence[Refusal], jobs: Iterable[NewJob]) -> tuple[int, str]:
    """The status for an accepted request: a refusal code with its numbers, or 100/101."""
    if refused:
        codes = {r.code for r in refused}
        code = next(c for c in REFUSAL_ORDER if c in codes)
        note = ", ".join(f"{r.number} ({r.reason})" for r in refused[:20])
        return code, note
    scheduled = any(job.send_at is not None for job in jobs)
    return (101 if scheduled else 100), ""


def allowed_country(allowed: Iterable[str], number: str) -> bool:
    """True when ``number``'s country is allowed (FR covers overseas France, ``*`` all)."""
    allowed = set(allowed)
    country = region_of(number)
    if country in allowed or "*" in allowed:
        return True
    return country in FRENCH_REGIONS and "FR" in allowed


def quiet_release(quiet, category: str, when: float) -> float | None:
    """For a marketing SMS due at ``when`` in quiet hours: the next allowed time; else None."""
    if category != "marketing":
        return None
    wanted = datetime.fromtimestamp(when, timezone.utc)
    release = quiet.next_allowed(wanted)
    return release.timestamp() if release > wanted else None
