"""Phone numbers from the subject: parsed with ``phonenumbers``, output as E.164.

Accepted forms: national for the default region (``0612121515``), international with or
without ``+`` (``+33612121515``, ``33612121515``), with the ``00`` prefix
(``0033612121515``); spaces, dots, dashes and brackets are ignored, anything else but
digits and a leading ``+`` is refused (no vanity letters, no extensions). Duplicates (after
normalisation) are dropped, order is kept. Only numbers that can receive SMS (mobile, or
"fixed line or mobile" where a plan cannot tell) are valid.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from functools import lru_cache
from dataclasses import dataclass

import phonenumbers
from phonenumbers import PhoneNumberType

from bridge.errors import StatusError

DEFAULT_MAX_RECIPIENTS = 500

_SMS_TYPES = frozenset(
    {PhoneNumberType.MOBILE, PhoneNumberType.FIXED_LINE_OR_MOBILE, PhoneNumberType.PAGER}
)
_SEPARATORS = re.compile(r"[\s.\-()/]")
# What is left once separators are gone: phonenumbers would otherwise read letters as a
# vanity number ("06 12 CALL ME") and "x..." as an extension, sending to a number
# nobody wrote.
_DIALLABLE = re.compile(r"\+?[0-9]+")
_FRENCH = re.compile(r"(?:\+33|0033|0)([1-9][0-9]{8})")

# E.164 -> region of the numbers ``normalise`` parsed lately: intake asks the region of
# every number it just normalised (country rules, routing, pricing), and parsing each a
# second time cost as much as the first parse. Cleared when full.
_REGIONS: dict[str, str | None] = {}
_REGIONS_MAX = 65536

#: Regions whose numbers count as "France" for the STOP rule (metropolitan and overseas).
FRENCH_REGIONS = frozenset(
    {"FR", "GP", "MQ", "GF", "RE", "YT", "PM", "BL", "MF", "NC", "PF", "WF"}
)


@dataclass(frozen=True)
class Invalid:
    """A number as written and why it was refused."""

    raw: str
    reason: str


@dataclass(frozen=True)
class Numbers:
    """The valid numbers (E.164, deduplicated) and the refused ones."""

    valid: tuple[str, ...]
    invalid: tuple[Invalid, ...]


@lru_cache(maxsize=8192)
def normalise(raw: str, region: str = "FR") -> str:
    """One number as E.164; raise ``ValueError`` with a reason if it cannot get an SMS."""
    compact = _SEPARATORS.sub("", raw)
    if not compact:
        raise ValueError("empty")
    if not _DIALLABLE.fullmatch(compact):
        raise ValueError("not a phone number")
    if compact.isdigit() and not compact.startswith("0") and len(compact) > 10:
        # "33612121515": Allmysms' international form without "+".
        compact = "+" + compact
    e164 = _french_mobile(compact, region)
    if e164 is not None:
        where: str | None = "FR"
    else:
        number, kind = _parse(compact, region)
        if kind not in _SMS_TYPES:
            raise ValueError("not a mobile number")
        e164 = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
        where = phonenumbers.region_code_for_number(number)
    if len(_REGIONS) >= _REGIONS_MAX:
        _REGIONS.clear()
    _REGIONS[e164] = where
    return e164


def _french_mobile(compact: str, region: str) -> str | None:
    """A French SMS-type number in one of its usual forms, as E.164, without
    ``phonenumbers.parse`` (two thirds of the cost of a number): the number ``parse`` would
    return for these forms (+33, national prefix 0 and international prefix 00 in France),
    typed by the same metadata; +33 is France's alone, and its national number (no leading
    zero) is written as it came. None for anything else, which then takes the full parse."""
    found = _FRENCH.fullmatch(compact)
    if found is None or not (region == "FR" or compact.startswith("+")):
        return None
    kind = phonenumbers.number_type(phonenumbers.PhoneNumber(country_code=33, national_number=int(found[1])))
    return f"+33{found[1]}" if kind in _SMS_TYPES else None


def _parse(compact: str, region: str) -> tuple[phonenumbers.PhoneNumber, PhoneNumberType]:
    """The valid number and its type."""
    try:
        number = phonenumbers.parse(compact, region)
    except phonenumbers.NumberParseException:
        raise ValueError("not a phone number") from None
    # A number of an SMS type is valid (the type is only matched for valid numbers): one
    # match of the plan instead of two for the usual mobile number.
    kind = phonenumbers.number_type(number)
    if kind in _SMS_TYPES or phonenumbers.is_valid_number(number):
        return number, kind
    if region == "FR" and compact.startswith("0"):
        # French overseas departments share the 0 + 9 digits national form (0692... is
        # Réunion) but have their own country codes.
        for overseas in ("RE", "GP", "MQ", "GF", "YT"):
            candidate = phonenumbers.parse(compact, overseas)
            if phonenumbers.is_valid_number(candidate):
                return candidate, phonenumbers.number_type(candidate)
    raise ValueError("not a valid number")


def parse_numbers(
    raw: Iterable[str], region: str = "FR", maximum: int = DEFAULT_MAX_RECIPIENTS
) -> Numbers:
    """Normalise ``raw``; 114 when none is valid, 120 when more than ``maximum`` remain."""
    valid: dict[str, None] = {}
    invalid: list[Invalid] = []
    for item in raw:
        try:
            valid.setdefault(normalise(item, region))
        except ValueError as exc:
            invalid.append(Invalid(item, str(exc)))
    if not valid:
        listed = ", ".join(f"{i.raw} ({i.reason})" for i in invalid[:20])
        raise StatusError(114, note=listed or "no number given")
    if len(valid) > maximum:
        raise StatusError(120, note=f"{len(valid)} numbers", maximum=maximum)
    return Numbers(tuple(valid), tuple(invalid))


def region_of(e164: str) -> str | None:
    """The region code (``FR``, ``RE``, ...) of an E.164 number, or None."""
    known = _REGIONS.get(e164)
    return known if known is not None else _region_of(e164)


@lru_cache(maxsize=8192)
def _region_of(e164: str) -> str | None:
    try:
        return phonenumbers.region_code_for_number(phonenumbers.parse(e164))
    except phonenumbers.NumberParseException:
        return None


def is_french(e164: str) -> bool:
    """True for metropolitan and overseas French numbers."""
    return region_of(e164) in FRENCH_REGIONS
