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
from collections.abc import Callable, Iterable
from functools import lru_cache
from dataclasses import dataclass
from typing import Any

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
    return f"+33{found[1]}" if _sms_type("FR")(found[1]) else None


@lru_cache(maxsize=None)
def _sms_type(region: str) -> Callable[[str], bool]:
    """Whether a national significant number of ``region`` is of an SMS type, answered as
    ``phonenumbers.number_type`` would (``_number_type_helper``: the same patterns, lengths
    and order, from the same metadata), with each pattern compiled once. ``number_type``
    finds every pattern again by its text, a dozen per number: four fifths of the cost of
    a French number not seen before. ``tests/test_numbers.py`` holds the two together."""
    meta = phonenumbers.PhoneMetadata.metadata_for_region(region)
    general = _desc_test(meta.general_desc)
    # the first of these that matches decides (premium, toll free... are never SMS)
    ordered = [(test, answer) for test, answer in (
        (_desc_test(meta.premium_rate), False), (_desc_test(meta.toll_free), False),
        (_desc_test(meta.shared_cost), False), (_desc_test(meta.voip), False),
        (_desc_test(meta.personal_number), False), (_desc_test(meta.pager), True),
        (_desc_test(meta.uan), False), (_desc_test(meta.voicemail), False)) if test is not None]
    fixed, mobile = _desc_test(meta.fixed_line), _desc_test(meta.mobile)
    same = bool(meta.same_mobile_and_fixed_line_pattern)

    def matches(test: tuple[frozenset[int], Callable[[str], Any]] | None, nsn: str) -> bool:
        return test is not None and (not test[0] or len(nsn) in test[0]) and test[1](nsn) is not None

    def is_sms(nsn: str) -> bool:
        if not matches(general, nsn):
            return False  # UNKNOWN
        for test, answer in ordered:
            if matches(test, nsn):
                return answer
        if matches(fixed, nsn):  # FIXED_LINE_OR_MOBILE, else FIXED_LINE
            return same or matches(mobile, nsn)
        return not same and matches(mobile, nsn)  # MOBILE, else UNKNOWN

    return is_sms


def _desc_test(desc: Any) -> tuple[frozenset[int], Callable[[str], Any]] | None:
    """(possible lengths, the pattern's fullmatch) of a metadata ``PhoneNumberDesc``; None
    when it matches nothing (absent, or an empty pattern)."""
    if desc is None or not desc.national_number_pattern:
        return None
    return frozenset(desc.possible_length), re.compile(desc.national_number_pattern).fullmatch


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
