"""From a parsed subject and body to a checked SMS request (pure: no sockets, no store).

Checks run in this order and the first failure wins: sender (123), date (115), numbers
(114, 120), empty text (110), marketing STOP mention (124, or the mention is appended),
length (111). Some invalid numbers among valid ones is not a
failure: the valid ones go out and the sender is told with status 113. What the checks
change without refusing (a custom sender dropped towards France, a STOP mention added)
is listed in ``SmsRequest.warnings``; a dropped sender is also logged (``sender_dropped``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import structlog

from bridge import encoding
from bridge.dates import DEFAULT_MAX_AHEAD, parse_date
from bridge.errors import StatusError
from bridge.numbers import DEFAULT_MAX_RECIPIENTS, Invalid, is_french, parse_numbers
from bridge.sender import SENDER_DROPPED_WARNING, check_sender, has_stop_mention
from bridge.subject import Subject

log = structlog.get_logger("bridge.request")


@dataclass(frozen=True)
class RequestPolicy:
    """The settings a request is checked against (global config plus the account's)."""

    tz: ZoneInfo = field(default_factory=lambda: ZoneInfo("Europe/Paris"))
    region: str = "FR"
    max_recipients: int = DEFAULT_MAX_RECIPIENTS
    max_parts: int = encoding.MAX_PARTS
    max_ahead: timedelta = DEFAULT_MAX_AHEAD
    transliterate: bool = False
    category: str = "transactional"          # the account's; the subject's type= wins
    stop: str = "append"                     # marketing to France without STOP: append | reject
    stop_text: str = "STOP au 36180"


@dataclass(frozen=True)
class SmsRequest:
    """A request that passed every check: what to send, to whom, from whom, when."""

    subject: Subject
    numbers: tuple[str, ...]                 # E.164, deduplicated
    invalid: tuple[Invalid, ...]             # refused numbers (status 113 when not empty)
    text: str
    segmentation: encoding.Segmentation
    sender: str | None                       # the checked ``from=``
    stop_mention: bool                       # text ends with "STOP au 36xxx"
    send_at: datetime | None                 # UTC; None means now
    warnings: tuple[str, ...] = ()
    category: str = "transactional"

    @property
    def low_cost(self) -> bool:
        """True when the subject asked for the low-cost route (``lc=1``)."""
        return self.subject.low_cost

    def sender_for(self, number: str) -> str | None:
        """The sender used towards ``number``: dropped for France without a STOP mention."""
        if self.sender and is_french(number) and not self.stop_mention:
            return None
        return self.sender


def build_request(
    subject: Subject, body: str, policy: RequestPolicy, now: datetime
) -> SmsRequest:
    """Check everything about one request; raise ``StatusError`` with the first failure."""
    sender = check_sender(subject.sender)
    send_at = parse_date(subject.date, policy.tz, now, policy.max_ahead) if subject.date else None
    numbers = parse_numbers(subject.numbers, policy.region, policy.max_recipients)
    text = body.strip("\n")
    if not text.strip():
        raise StatusError(110)
    if policy.transliterate:
        text = encoding.transliterate(text)
    category = subject.category or policy.category
    warnings = []
    if category == "marketing" and not has_stop_mention(text) and any(is_french(n) for n in numbers.valid):
        if policy.stop == "reject":
            raise StatusError(124)
        text = f"{text}\n{policy.stop_text}"  # counted in the parts below
        warnings.append(f"'{policy.stop_text}' added at the end (marketing SMS to France)")
    segmentation = encoding.check_length(text, policy.max_parts)
    stop = has_stop_mention(segmentation.text)
    if sender and not stop and any(is_french(n) for n in numbers.valid):
        # Not an error (the SMS still goes out), but never silent: logged here, and the
        # warning reaches the user in the status mail (receipts) and in `mail2sms send`.
        log.info("sender_dropped", sender=sender, reason="no 'STOP au 36xxx' at the end of the text")
        warnings.append(SENDER_DROPPED_WARNING.format(sender=sender))
    return SmsRequest(
        subject=subject,
        numbers=numbers.valid,
        invalid=numbers.invalid,
        text=segmentation.text,
        segmentation=segmentation,
        sender=sender,
        stop_mention=stop,
        send_at=send_at,
        warnings=tuple(warnings),
        category=category,
    )
