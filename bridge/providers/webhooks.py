"""Small pure helpers the provider modules share to read webhooks (``parse_callback``).

Nothing here knows a provider: each module says which fields it reads; this only turns
what arrived into the shapes ``Callback`` wants (E.164 numbers, plain strings).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import phonenumbers

from bridge.providers.base import CallbackRequest

_SEPARATORS = re.compile(r"[\s.\-()/]")
#: shortest international number written without "+" (shorter digit strings are short codes)
_MIN_INTERNATIONAL = 8


def e164(raw: Any, region: str = "FR") -> str | None:
    """A phone number from a webhook as E.164 when it can be made so, else as written.

    ``33612345678`` and ``0033612345678`` are international (providers drop the ``+``),
    ``0612345678`` is national for ``region``; short codes (``36111``) and sender names
    stay as they are. None for a missing or empty value.
    """
    text = "" if raw is None else str(raw).strip()
    if not text:
        return None
    compact = _SEPARATORS.sub("", text)
    if compact.startswith("00"):
        compact = "+" + compact[2:]
    elif compact.isdigit() and not compact.startswith("0") and len(compact) >= _MIN_INTERNATIONAL:
        compact = "+" + compact
    if not re.fullmatch(r"\+?[0-9]+", compact) or (compact[0] != "+" and len(compact) < _MIN_INTERNATIONAL):
        return text
    try:
        number = phonenumbers.parse(compact, region)
    except phonenumbers.NumberParseException:
        return text
    if not phonenumbers.is_possible_number(number):
        return text
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def first(fields: Mapping[str, Any], *names: str) -> str | None:
    """The first of ``names`` present in ``fields`` with a non-empty value, as a string."""
    for name in names:
        value = fields.get(name)
        if value is not None and not isinstance(value, (dict, list)) and str(value).strip() != "":
            return str(value).strip()
    return None


def require(fields: Mapping[str, Any], *names: str) -> str:
    """Like ``first``, but a missing value makes the request unreadable (``ValueError``)."""
    value = first(fields, *names)
    if value is None:
        raise ValueError(f"no {' or '.join(names)} in the request")
    return value


def is_form(request: CallbackRequest) -> bool:
    """Whether the body is an URL-encoded form (what Twilio, Vonage and OVH post)."""
    return request.content_type.split(";")[0].strip().lower() == "application/x-www-form-urlencoded"
