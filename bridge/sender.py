"""The ``from=`` sender and Allmysms' STOP rule for custom senders towards France.

A sender starts with a letter, holds only ASCII letters, digits and spaces, and is 3 to 11
characters long (status 123 otherwise). Towards French numbers a custom sender is honoured
only if the text ends with ``STOP au 36xxx`` preceded by a space or a line break; without
it the SMS still goes out, from the provider's default sender, and the user is told.
"""

from __future__ import annotations

import re

from bridge.errors import StatusError

_SENDER = re.compile(r"[A-Za-z][A-Za-z0-9 ]{2,10}")
_STOP_MENTION = re.compile(r"(?:^|[ \n])STOP au 36\d{3}\s*\Z", re.IGNORECASE)

SENDER_DROPPED_WARNING = (
    "custom sender {sender!r} not used towards French numbers: the text must end with "
    "'STOP au 36xxx' (space or line break before it)"
)


def check_sender(sender: str | None) -> str | None:
    """The sender stripped and checked, or None when none was asked for; 123 if invalid."""
    if sender is None or not sender.strip():
        return None
    sender = sender.strip()
    if not _SENDER.fullmatch(sender):
        raise StatusError(123, note=f"from={sender[:20]}")
    return sender


def has_stop_mention(text: str) -> bool:
    """True when ``text`` ends with ``STOP au 36xxx`` after a space or a line break."""
    return bool(_STOP_MENTION.search(text))
