"""SMS encoding and segmenting (GSM 03.38 alphabet, concatenated SMS), pure functions.

A text is sent in GSM-7 when every character is in the default alphabet or its
extension table, otherwise the whole message goes out in UCS-2. Long messages are
split into parts the way the phone will show them; the bridge allows at most
``MAX_PARTS`` parts (status 111 beyond that).
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

from bridge.errors import StatusError

# The 128-entry basic table minus ESC (0x1B), which is a control code, not text.
GSM7_BASIC: frozenset[str] = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ"
    " !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§"
    "¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
# Extension table characters: each is sent as ESC + char, so it costs two septets.
GSM7_EXTENSION: frozenset[str] = frozenset("^{}\\[~]|€\f")
_GSM7 = GSM7_BASIC | GSM7_EXTENSION

MAX_PARTS = 8
GSM7_SINGLE, GSM7_PART = 160, 153  # a part loses 7 septets to the concatenation header
UCS2_SINGLE, UCS2_PART = 70, 67  # ... and 3 UTF-16 units in UCS-2

_TRANSLITERATION: dict[str, str] = {
    **dict.fromkeys("‘’‚‛′`", "'"),
    **dict.fromkeys("“”„‟″«»", '"'),
    **dict.fromkeys("‐‑‒–—―−•", "-"),
    "…": "...", "\t": " ", "≤": "<=", "≥": ">=",
    "â": "a", "á": "a", "ê": "e", "ë": "e", "î": "i", "ï": "i", "í": "i",
    "ô": "o", "ó": "o", "û": "u", "ú": "u", "ÿ": "y", "ç": "c", "œ": "oe",
    "À": "A", "Â": "A", "Á": "A", "Ê": "E", "È": "E", "Ë": "E", "Î": "I", "Ï": "I",
    "Í": "I", "Ô": "O", "Ó": "O", "Û": "U", "Ù": "U", "Ú": "U", "Ÿ": "Y", "Œ": "OE",
}  # fmt: skip


@dataclass(frozen=True)
class Segmentation:
    """How a text goes out: its encoding, its parts and the units they cost."""

    text: str
    encoding: str
    parts: tuple[str, ...]
    units: int
    unit_limit: int
    ucs2_chars: tuple[str, ...] = ()

    @property
    def count(self) -> int:
        """The number of SMS parts (0 for an empty text)."""
        return len(self.parts)

    @property
    def unicode(self) -> bool:
        """True when the message has to be sent in UCS-2."""
        return self.encoding == "UCS-2"


def _nfc(text: str) -> str:
    return unicodedata.normalize("NFC", text)


# Character classes for whole-text scans (one regular expression pass in C, not a Python
# step per character): what is outside GSM-7, what costs two septets, what costs two
# UTF-16 units.
_NOT_GSM7 = re.compile("[^" + "".join(sorted(re.escape(ch) for ch in _GSM7)) + "]")
_ESCAPED = re.compile("[" + "".join(sorted(re.escape(ch) for ch in GSM7_EXTENSION)) + "]")
_ASTRAL = re.compile("[\U00010000-\U0010FFFF]")


def is_gsm7(text: str) -> bool:
    """True when the NFC form of ``text`` fits the GSM-7 alphabet (basic + extension)."""
    return _NOT_GSM7.search(_nfc(text)) is None


def septets(text: str) -> int:
    """The GSM-7 cost of the NFC form of ``text``; ValueError if it is not GSM-7."""
    text = _nfc(text)
    if not is_gsm7(text):
        raise ValueError(f"not GSM-7: {_forcing(text)!r}")
    return _units(text, gsm=True)


def _forcing(text: str) -> tuple[str, ...]:
    # dict keeps first-appearance order while dropping repeats.
    found = _NOT_GSM7.findall(text)
    return tuple(dict.fromkeys(found)) if found else ()


def _units(text: str, gsm: bool) -> int:
    """The sum of ``_cost`` over ``text``: one unit a character, two for the escaped ones."""
    return len(text) + len((_ESCAPED if gsm else _ASTRAL).findall(text))


def _cost(ch: str, gsm: bool) -> int:
    if gsm:
        return 2 if ch in GSM7_EXTENSION else 1
    return 2 if ord(ch) > 0xFFFF else 1  # astral chars are a UTF-16 surrogate pair


def _split(text: str, costs: list[int], limit: int) -> tuple[str, ...]:
    # Greedy: a character that does not fit whole (escape pair, surrogate pair)
    # starts the next part, exactly as handsets and SMSCs do.
    parts, start, used = [], 0, 0
    for i, cost in enumerate(costs):
        if used + cost > limit:
            parts.append(text[start:i])
            start, used = i, 0
        used += cost
    parts.append(text[start:])
    return tuple(parts)


def segment(text: str) -> Segmentation:
    """Split ``text`` (NFC-normalised) into SMS parts; never raises, whatever the length."""
    text = _nfc(text)
    forcing = _forcing(text)
    gsm = not forcing
    units = _units(text, gsm)
    single, per_part = (GSM7_SINGLE, GSM7_PART) if gsm else (UCS2_SINGLE, UCS2_PART)
    if units <= single:
        parts, limit = ((text,) if text else ()), single
    else:
        parts, limit = _split(text, [_cost(ch, gsm) for ch in text], per_part), per_part
    encoding = "GSM-7" if gsm else "UCS-2"
    return Segmentation(text, encoding, parts, units, limit, forcing)


def check_length(text: str, max_parts: int = MAX_PARTS) -> Segmentation:
    """Segment ``text``; raise StatusError(111) when it needs more than ``max_parts`` parts."""
    seg = segment(text)
    if seg.count > max_parts:
        note = (
            f"{seg.count} parts needed, {max_parts} allowed "
            f"({len(seg.text)} characters {seg.encoding})"
        )
        raise StatusError(111, note=note)
    return seg


def transliterate(text: str) -> str:
    """Replace non-GSM-7 characters by a close GSM-7 equivalent where one exists.

    Typographic quotes, dashes, ellipsis, Unicode spaces and tabs become their ASCII
    forms; French accents outside GSM-7 lose the accent (``ç`` becomes ``c``: GSM-7
    only has the capital ``Ç``), ``œ`` becomes ``oe``. GSM-7 characters are never
    changed and anything without an equivalent (emoji...) is kept, so such a text
    stays UCS-2. The result is NFC and ``transliterate`` is idempotent.
    """
    text = _nfc(text)
    while True:
        # Re-normalising may compose a stripped letter with a following combining
        # mark into a new mappable letter (o + U+0302 -> ô), so loop to a fixed point.
        result = _nfc("".join(_transliterate_char(ch) for ch in text))
        if result == text:
            return result
        text = result


def _transliterate_char(ch: str) -> str:
    if ch in _GSM7:
        return ch
    if ch in _TRANSLITERATION:
        return _TRANSLITERATION[ch]
    return " " if unicodedata.category(ch) == "Zs" else ch  # NBSP, thin spaces...


# count_report() wording; "needed" is the too-long line, "part" the singular/plural.
_LABELS = {
    "en": {
        "encoding": "encoding", "forced": "forced by", "chars": "characters",
        "char_count": "{n} characters", "septets": "septets", "units": "UTF-16 units",
        "units_short": "units", "parts": "parts", "part": ("part", "parts"),
        "per_part": "per part", "unit_per_part": "{u} per part",
        "too_long": "too long", "needed": "{n} parts needed, {max} allowed (status 111)",
        "translit": "with transliteration", "not_needed": "not needed (already GSM-7)",
        "saves": "saves {p}", "more": "{p} more", "same": "same number of parts",
    },
    "fr": {
        "encoding": "codage", "forced": "imposé par", "chars": "caractères",
        "char_count": "{n} caractères", "septets": "septets", "units": "unités UTF-16",
        "units_short": "unités", "parts": "parties", "part": ("partie", "parties"),
        "per_part": "par partie", "unit_per_part": "{u} par partie",
        "too_long": "trop long",
        "needed": "{n} parties nécessaires, {max} autorisées (statut 111)",
        "translit": "avec translittération", "not_needed": "inutile (déjà GSM-7)",
        "saves": "économise {p}", "more": "{p} de plus", "same": "même nombre de parties",
    },
}  # fmt: skip


def count_report(text: str, language: str = "en") -> str:
    """The multi-line ``mail2sms count`` report: encoding, size, parts, transliteration gain.

    ``language`` is ``en`` or ``fr`` (anything else falls back to English). A text
    longer than ``MAX_PARTS`` parts is reported as too long instead of raising.
    """
    lab = _LABELS.get(language, _LABELS["en"])
    seg = segment(text)
    unit = lab["units"] if seg.unicode else lab["septets"]
    encoding = seg.encoding
    if seg.unicode:
        encoding += f" ({lab['forced']}: {', '.join(seg.ucs2_chars)})"
    short_unit = lab["units_short"] if seg.unicode else lab["septets"]
    per_part = lab["unit_per_part"].format(u=f"{seg.unit_limit} {short_unit}")
    lines = [
        f"{lab['encoding']}: {encoding}",
        f"{lab['chars']}: {len(seg.text)} ({seg.units} {unit})",
        f"{lab['parts']}: {seg.count} ({per_part})",
    ]
    if seg.count > MAX_PARTS:
        lines.append(f"{lab['too_long']}: " + lab["needed"].format(n=seg.count, max=MAX_PARTS))
    elif seg.parts:
        sizes = (sum(_cost(ch, not seg.unicode) for ch in part) for part in seg.parts)
        lines.append(f"{lab['per_part']}: {', '.join(map(str, sizes))}")
    lines.append(f"{lab['translit']}: {_translit_summary(seg, lab)}")
    return "\n".join(lines)


def _translit_summary(seg: Segmentation, lab: dict) -> str:
    if not seg.unicode:
        return lab["not_needed"]
    new = segment(transliterate(seg.text))
    gain = seg.count - new.count
    if gain > 0:
        change = lab["saves"].format(p=_plural(gain, lab))
    elif gain < 0:
        change = lab["more"].format(p=_plural(-gain, lab))
    else:
        change = lab["same"]
    chars = lab["char_count"].format(n=len(new.text))
    return f"{new.encoding}, {chars}, {_plural(new.count, lab)} ({change})"


def _plural(n: int, lab: dict) -> str:
    singular, plural = lab["part"]
    return f"{n} {singular if n == 1 else plural}"
