"""Tests for bridge.encoding: GSM-7 / UCS-2 detection, segmenting, limits, reports."""

from __future__ import annotations

import unicodedata

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.encoding import (
    GSM7_BASIC,
    GSM7_EXTENSION,
    MAX_PARTS,
    Segmentation,
    check_length,
    count_report,
    is_gsm7,
    segment,
    septets,
    transliterate,
)
from bridge.errors import StatusError

EMOJI = "\U0001f600"  # 😀, a surrogate pair in UTF-16


def nfc(text: str) -> str:
    return unicodedata.normalize("NFC", text)


def short_id(value: object) -> str | None:
    """Keep parametrized ids readable when the value is a long repeated string."""
    if isinstance(value, str) and len(value) > 20:
        return f"{value[:3]!a}..x{len(value)}"
    return None


def units(text: str, encoding: str) -> int:
    """Cost computed independently of the module: septets or UTF-16 code units."""
    if encoding == "GSM-7":
        return sum(2 if ch in GSM7_EXTENSION else 1 for ch in text)
    return len(text.encode("utf-16-le", "surrogatepass")) // 2


# --- alphabet -------------------------------------------------------------------------


def test_basic_table_has_127_text_characters():
    """The basic table holds the 128 GSM 03.38 entries minus ESC."""
    assert len(GSM7_BASIC) == 127
    assert "\x1b" not in GSM7_BASIC
    assert {"@", "£", "¤", "Ç", "\n", "\r", "Δ", "Ξ", "ß", "É", "¡", "§", "¿", "à"} <= GSM7_BASIC


def test_extension_table_characters():
    """The extension table is ^ { } \\ [ ~ ] | € and form feed, disjoint from the basic one."""
    assert GSM7_EXTENSION == frozenset("^{}\\[~]|€\f")
    assert not GSM7_BASIC & GSM7_EXTENSION


@pytest.mark.parametrize(
    "text, expected",
    [
        ("", True),
        ("Hello @ £5 {x} €", True),
        ("Ça coûte", False),  # û is not GSM-7
        ("ça", False),  # only the capital Ç is in the table
        ("é è ù ì ò à Ä Ö Ñ Ü", True),
        ("e\u0301", True),  # NFC turns it into é
        ("\x1b", False),
        (EMOJI, False),
        ("tab\there", False),
    ],
)
def test_is_gsm7(text, expected):
    """is_gsm7 accepts exactly the basic + extension characters after NFC."""
    assert is_gsm7(text) is expected


@pytest.mark.parametrize(
    "text, expected",
    [("", 0), ("abc", 3), ("€", 2), ("a[b]c", 7), ("\f", 2), ("e\u0301", 1)],
)
def test_septets(text, expected):
    """septets counts 1 per basic character and 2 per extension character."""
    assert septets(text) == expected


def test_septets_rejects_non_gsm7():
    """septets raises ValueError for a text that needs UCS-2."""
    with pytest.raises(ValueError):
        septets("fenêtre")


# --- segmenting ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, encoding, count, unit_limit, part_units",
    [
        ("", "GSM-7", 0, 160, []),
        ("a", "GSM-7", 1, 160, [1]),
        ("a" * 160, "GSM-7", 1, 160, [160]),
        ("a" * 161, "GSM-7", 2, 153, [153, 8]),
        ("a" * 306, "GSM-7", 2, 153, [153, 153]),
        ("a" * 307, "GSM-7", 3, 153, [153, 153, 1]),
        ("a" * 1224, "GSM-7", 8, 153, [153] * 8),
        ("€" * 80, "GSM-7", 1, 160, [160]),
        ("€" * 81, "GSM-7", 2, 153, [152, 10]),
        ("a" * 152 + "€" + "a" * 10, "GSM-7", 2, 153, [152, 12]),
        ("ê" * 70, "UCS-2", 1, 70, [70]),
        ("ê" * 71, "UCS-2", 2, 67, [67, 4]),
        ("ê" * 536, "UCS-2", 8, 67, [67] * 8),
        ("ê" * 66 + EMOJI + "ê" * 10, "UCS-2", 2, 67, [66, 12]),
        (EMOJI * 35, "UCS-2", 1, 70, [70]),
        (EMOJI * 36, "UCS-2", 2, 67, [66, 6]),
    ],
    ids=short_id,
)
def test_segment_table(text, encoding, count, unit_limit, part_units):
    """segment picks the encoding, the per-part limit and the part sizes of each case."""
    seg = segment(text)
    assert seg.encoding == encoding
    assert seg.count == count
    assert seg.unit_limit == unit_limit
    assert [units(p, encoding) for p in seg.parts] == part_units
    assert seg.units == sum(part_units)
    assert "".join(seg.parts) == text


def test_escape_pair_moves_to_next_part():
    """An extension character never straddles a boundary: with 1 septet left it moves on."""
    seg = segment("a" * 152 + "€" + "a" * 10)
    assert seg.parts[0] == "a" * 152
    assert seg.parts[1] == "€" + "a" * 10


def test_surrogate_pair_moves_to_next_part():
    """An emoji (2 UTF-16 units) never straddles a boundary: with 1 unit left it moves on."""
    seg = segment("ê" * 66 + EMOJI + "ê" * 10)
    assert seg.parts[0] == "ê" * 66
    assert seg.parts[1] == EMOJI + "ê" * 10


def test_nfc_normalisation():
    """A decomposed é is normalised to the precomposed GSM-7 character."""
    seg = segment("Caf" + "e\u0301")
    assert seg.text == "Café"
    assert seg.encoding == "GSM-7"
    assert seg.units == 4
    assert not seg.unicode


def test_ucs2_chars_lists_forcing_characters_in_order():
    """ucs2_chars holds each non-GSM-7 character once, in first-appearance order."""
    seg = segment(f"Bonjour ê œ ê {EMOJI} é")
    assert seg.unicode
    assert seg.ucs2_chars == ("ê", "œ", EMOJI)
    assert segment("plain").ucs2_chars == ()


def test_segmentation_is_frozen():
    """Segmentation is an immutable value."""
    seg = segment("x")
    assert isinstance(seg, Segmentation)
    with pytest.raises(AttributeError):
        seg.text = "y"  # type: ignore[misc]


# --- limits ---------------------------------------------------------------------------


# Two-unit characters cannot fill the odd 153/67 parts: 76 '€' or 33 emoji per part.
@pytest.mark.parametrize(
    "text",
    ["a" * 1224, "€" * 608, "ê" * 536, EMOJI * 264, ""],
    ids=["1224 septets", "608 euro", "536 units", "264 emoji", "empty"],
)
def test_check_length_accepts_up_to_8_parts(text):
    """check_length returns the segmentation for texts of at most 8 parts."""
    seg = check_length(text)
    assert seg.count <= MAX_PARTS


@pytest.mark.parametrize(
    "text",
    ["a" * 1225, "€" * 609, "ê" * 537, EMOJI * 265],
    ids=["1225 septets", "609 euro", "537 units", "265 emoji"],
)
def test_check_length_refuses_more_than_8_parts(text):
    """check_length raises StatusError 111 one character past 8 parts."""
    with pytest.raises(StatusError) as info:
        check_length(text)
    assert info.value.code == 111


def test_check_length_note():
    """The status note says how many parts were needed, allowed, and the size."""
    with pytest.raises(StatusError) as info:
        check_length("a" * 1530)
    assert info.value.note == "10 parts needed, 8 allowed (1530 characters GSM-7)"


def test_check_length_custom_max():
    """max_parts lowers the limit."""
    check_length("a" * 160, max_parts=1)
    with pytest.raises(StatusError):
        check_length("a" * 161, max_parts=1)


# --- transliteration ------------------------------------------------------------------


@pytest.mark.parametrize(
    "source, expected",
    [
        ("l’été", "l'été"),
        ("‘a’ ‚b‛ 5′", "'a' 'b' 5'"),
        ("“a” „b” 5″ «c»", '"a" "b" 5" "c"'),
        ("a–b—c−d‑e", "a-b-c-d-e"),
        ("attends…", "attends..."),
        ("10\u00a0€ 5\u202f% a\u2009b", "10 € 5 % a b"),
        ("a\tb", "a b"),
        ("â ê î ô û ë ï ÿ", "a e i o u e i y"),
        ("ç Ç", "c Ç"),
        ("œuvre Œuf æ", "oeuvre OEuf æ"),
        ("À Â Ê È Ë Î Ï Ô Û Ù", "A A E E E I I O U U"),
        ("á í ó ú", "a i o u"),
        ("• `x` ≤ ≥", "- 'x' <= >="),
        (f"ok {EMOJI}", f"ok {EMOJI}"),
    ],
)
def test_transliterate_table(source, expected):
    """transliterate maps typographic and French characters to GSM-7 equivalents."""
    assert transliterate(source) == expected


def test_transliterate_french_text_is_gsm7():
    """A typical French message becomes pure GSM-7 and fits in fewer parts."""
    text = "Réunion à l’hôtel : êtes-vous prêt ? « Noël » — l’œuvre coûte 10\u00a0€… ça va ?"
    result = transliterate(text)
    assert is_gsm7(result)
    assert segment(result).count <= segment(text).count


def test_transliterate_keeps_gsm7_characters():
    """Characters already in GSM-7 are never changed."""
    text = "".join(sorted(GSM7_BASIC | GSM7_EXTENSION))
    assert transliterate(text) == text


def test_transliterate_recomposes_to_fixed_point():
    """A stripped letter that recomposes with a combining mark is stripped again."""
    assert transliterate("ô\u0302") == "o"


# --- count_report ---------------------------------------------------------------------


def test_count_report_ucs2():
    """The UCS-2 report names the forcing characters, parts, sizes and the saving."""
    assert count_report("ê" * 75) == (
        "encoding: UCS-2 (forced by: ê)\n"
        "characters: 75 (75 UTF-16 units)\n"
        "parts: 2 (67 units per part)\n"
        "per part: 67, 8\n"
        "with transliteration: GSM-7, 75 characters, 1 part (saves 1 part)"
    )


def test_count_report_gsm7():
    """The GSM-7 report counts septets and says no transliteration is needed."""
    report = count_report("a" * 150 + "€€€€€")
    assert "encoding: GSM-7" in report
    assert "characters: 155 (160 septets)" in report
    assert "parts: 1 (160 septets per part)" in report
    assert "per part: 160" in report
    assert "with transliteration: not needed (already GSM-7)" in report


def test_count_report_too_long():
    """A text past 8 parts is reported as too long instead of raising."""
    report = count_report("a" * 1530)
    assert "too long: 10 parts needed, 8 allowed (status 111)" in report
    assert "per part:" not in report


def test_count_report_emoji_stays_ucs2():
    """When transliteration cannot reach GSM-7 the report says so."""
    report = count_report(f"ça {EMOJI}")
    assert "forced by: ç, " + EMOJI in report
    assert "with transliteration: UCS-2, 4 characters, 1 part (same number of parts)" in report


def test_count_report_empty_and_french():
    """An empty text has zero parts; language="fr" gives French labels."""
    assert "parts: 0" in count_report("")
    report = count_report("ê" * 75, "fr")
    assert report.startswith("codage: UCS-2 (imposé par: ê)")
    assert "économise 1 partie" in report


# --- properties -----------------------------------------------------------------------

MIXED = st.text(
    alphabet=st.sampled_from(
        sorted(GSM7_BASIC) + sorted(GSM7_EXTENSION) + list("êœçâ«»’…\u00a0\u0301")
        + [EMOJI, "\U0001f389", "漢"]
    ),
    max_size=400,
)
# Repeating a short text reaches the multi-part and over-the-limit ranges cheaply.
LONG = st.builds(lambda s, n: s * n, MIXED.filter(bool), st.integers(1, 60))
ANY_TEXT = st.one_of(st.text(), MIXED, LONG)


def assert_invariants(text: str, seg: Segmentation) -> None:
    """The invariants every segmentation must satisfy."""
    assert seg.text == nfc(text)
    assert seg.count == len(seg.parts)
    assert "".join(seg.parts) == seg.text
    assert all(seg.parts)
    assert seg.units == units(seg.text, seg.encoding)
    assert seg.unicode == (seg.encoding == "UCS-2") == bool(seg.ucs2_chars)
    sizes = [units(p, seg.encoding) for p in seg.parts]
    assert all(size <= seg.unit_limit for size in sizes)
    multi = (153, 67) if seg.count > 1 else (160, 70)
    assert seg.unit_limit == multi[seg.unicode]
    for part in seg.parts:
        last = part.encode("utf-16-le", "surrogatepass")[-2:]
        assert not 0xD800 <= int.from_bytes(last, "little") <= 0xDBFF


@given(ANY_TEXT)
def test_segment_invariants(text):
    """segment never raises and its parts rebuild the NFC text within the limits."""
    assert_invariants(text, segment(text))


@given(LONG)
def test_parts_are_filled_greedily(text):
    """Every part but the last is full: its next character would not fit."""
    seg = segment(text)
    for part, nxt in zip(seg.parts, seg.parts[1:]):
        assert units(part + nxt[0], seg.encoding) > seg.unit_limit


@given(ANY_TEXT)
def test_check_length_only_raises_status_111(text):
    """check_length either returns at most 8 parts or raises StatusError 111."""
    try:
        seg = check_length(text)
    except StatusError as exc:
        assert exc.code == 111
        assert segment(text).count > MAX_PARTS
    else:
        assert seg.count <= MAX_PARTS


@given(ANY_TEXT)
def test_transliterate_idempotent_and_nfc(text):
    """transliterate is idempotent, returns NFC, and leaves GSM-7 texts alone."""
    once = transliterate(text)
    assert transliterate(once) == once
    assert nfc(once) == once
    if is_gsm7(text):
        assert once == nfc(text)


@given(st.text(alphabet="abcXYZ éèàùç âêîôûëïÿœŒÀÂÊÈËÎÏÔÛÙ’“”«»–—…\u00a0\t,.!?"))
def test_transliterate_french_always_gsm7(text):
    """Any text over French letters and typography transliterates to GSM-7."""
    assert is_gsm7(transliterate(text))
