"""Text hygiene: surrogates, control characters, MIME leftovers, API keys."""

from __future__ import annotations

import pytest
from hypothesis import given, strategies as st

from bridge.text import clean, clean_body, redact_subject


@pytest.mark.parametrize(("raw", "expected"), [
    ("hello \udd25", "hello \ufffd"),
    ("emoji \ud83d\ude00 ok", "emoji \U0001f600 ok"),     # a pair is joined, not replaced
    ("a\x00b\x07c\x1bd", "abcd"),
    ("line1\r\nline2\rline3", "line1\nline2\nline3"),
    ("tab\there", "tab here"),
    ("C1 \x85 control", "C1  control"),
])
def test_clean(raw, expected):
    """Lone surrogates become U+FFFD, controls go, line breaks are normalised."""
    assert clean(raw) == expected


@given(st.text())
def test_clean_always_encodes(text):
    """Whatever arrives, the cleaned text encodes to UTF-8 (the store and logs need it)."""
    clean(text).encode("utf-8")


def test_mime_leftovers_are_dropped():
    """Boundary lines and part headers of an unparsed multipart are not SMS text."""
    body = "--b1\nContent-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: 8bit\n\nDisk full\n--b1--"
    assert clean_body(body) == "Disk full"


def test_dashes_in_text_are_kept():
    """A line of dashes or a signature separator is not a boundary."""
    assert clean_body("Status:\n----------\nall good\n-- \nops") == "Status:\n----------\nall good\n-- \nops"


@pytest.mark.parametrize(("subject", "expected"), [
    ("arthur@s3cret|0612121515", "arthur@***|0612121515"),
    ("arthur@s3cret 0612121515", "arthur@***"),
    ("no key here", "no key here"),
    ("Re: a@b|x@y", "Re: a@***|x@y"),
])
def test_redact_subject(subject, expected):
    """Whatever follows @ in the first field is hidden, parsed or not."""
    assert redact_subject(subject) == expected


@pytest.mark.parametrize("summary, expected", [
    ("arthur45@***|0612121515|from=Alerts", "arthur45|0612121515|from=Alerts"),
    ("arthur45@***", "arthur45"),
    ("no key|0612", "no key|0612"),
    ("a@***|x\r\nBcc: victim@example.org", "a|x Bcc: victim@example.org"),
    (None, "SMS"), ("", "SMS"),
])
def test_subject_without_key(summary, expected):
    """The subject of a threaded mail: no key, no line break (no header injection)."""
    from bridge.text import subject_without_key
    assert subject_without_key(summary) == expected
