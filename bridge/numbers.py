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
    return f"+33{found[1]}" if _sms_type("FR", 9)(found[1]) else None


@lru_cache(maxsize=None)
def _sms_type(region: str, length: int) -> Callable[[str], bool]:
    """Whether a national significant number of ``region``, ``length`` digits long, is of an
    SMS type, answered as ``phonenumbers.number_type`` would (``_number_type_helper``: the
    same patterns, lengths and order, from the same metadata), with the patterns compiled
    once. ``number_type`` finds a dozen patterns again by their text for every number: two
    thirds of the cost of a French number not seen before (7.5 of 11 us). The kinds a number of this
    length cannot be are left out, and kinds in a row with the same answer are one pattern
    (premium, toll free, shared cost, VoIP, personal: never SMS). ``tests/test_numbers.py``
    holds the two together."""
    meta = phonenumbers.PhoneMetadata.metadata_for_region(region)

    def pattern(desc: Any) -> str | None:
        """The desc's pattern when a number of this length may match it, else None."""
        if desc is None or not desc.national_number_pattern:
            return None
        if desc.possible_length and length not in desc.possible_length:
            return None
        return desc.national_number_pattern

    general = pattern(meta.general_desc)
    if general is None:
        return lambda nsn: False  # UNKNOWN
    steps: list[tuple[list[str], bool]] = []  # the first that matches decides
    for desc, answer in ((meta.premium_rate, False), (meta.toll_free, False), (meta.shared_cost, False),
                         (meta.voip, False), (meta.personal_number, False), (meta.pager, True),
                         (meta.uan, False), (meta.voicemail, False)):
        found = pattern(desc)
        if found is not None and steps and steps[-1][1] is answer:
            steps[-1][0].append(found)
        elif found is not None:
            steps.append(([found], answer))
    in_order = [(_fullmatch(patterns), answer) for patterns, answer in steps]
    general_match = _fullmatch([general])
    fixed, mobile = pattern(meta.fixed_line), pattern(meta.mobile)
    fixed_match = _fullmatch([fixed]) if fixed else None
    mobile_match = _fullmatch([mobile]) if mobile else None
    same = bool(meta.same_mobile_and_fixed_line_pattern)

    def is_sms(nsn: str) -> bool:
        if general_match(nsn) is None:
            return False  # UNKNOWN
        for match, answer in in_order:
            if match(nsn) is not None:
                return answer
        is_mobile = mobile_match is not None and mobile_match(nsn) is not None
        if fixed_match is not None and fixed_match(nsn) is not None:
            return same or is_mobile  # FIXED_LINE_OR_MOBILE, else FIXED_LINE
        return not same and is_mobile  # MOBILE, else UNKNOWN

    return is_sms


def _fullmatch(patterns: list[str]) -> Callable[[str], Any]:
    """``fullmatch`` of any of ``patterns``."""
    return re.compile("|".join(f"(?:{p})" for p in patterns)).fullmatch


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
