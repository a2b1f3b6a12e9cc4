"""Tests for bridge.subject: the ``login@apiKey|numbers|name=value...`` grammar."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.errors import StatusError
from bridge.subject import Subject, parse_subject


class TestParseSubjectAccepts:
    """Subjects in the Allmysms form and the liberties the docstring allows."""

    @pytest.mark.parametrize(
        ("subject", "login", "api_key", "numbers", "options"),
        [
            pytest.param(
                "demo@key|0612121515", "demo", "key", ("0612121515",), {}, id="minimal"
            ),
            pytest.param(
                "demo@key|0612121515;33614141515|from=SHOP|date=2026-12-01 09:00:00|lc=1",
                "demo", "key", ("0612121515", "33614141515"),
                {"from": "SHOP", "date": "2026-12-01 09:00:00", "lc": "1"},
                id="every-option",
            ),
            pytest.param(
                "demo@key|0612121515|lc=0|date=2026-12-01 09:00:00|from=SHOP",
                "demo", "key", ("0612121515",),
                {"lc": "0", "date": "2026-12-01 09:00:00", "from": "SHOP"},
                id="options-in-any-order",
            ),
            pytest.param(
                "demo@key|0612121515|from=|date=",
                "demo", "key", ("0612121515",), {"from": "", "date": ""},
                id="empty-options",
            ),
            pytest.param(
                "  demo @ key  |  0612121515 ; 0614141515  |  from = SHOP  |  lc = 1  ",
                "demo", "key", ("0612121515", "0614141515"), {"from": "SHOP", "lc": "1"},
                id="whitespace-around-fields",
            ),
            pytest.param(
                "demo@k@y=1; x|0612121515", "demo", "k@y=1; x", ("0612121515",), {},
                id="key-split-at-first-at-and-keeps-at-equals-semicolon-space",
            ),
            pytest.param(
                "demo@key|0612121515,0614141515;0616161616",
                "demo", "key", ("0612121515", "0614141515", "0616161616"), {},
                id="numbers-with-comma-and-semicolon",
            ),
            pytest.param(
                "demo@key|0612121515;;0614141515;",
                "demo", "key", ("0612121515", "0614141515"), {},
                id="empty-number-slots-skipped",
            ),
            pytest.param(
                "demo@key|0612121515|", "demo", "key", ("0612121515",), {},
                id="trailing-pipe",
            ),
            pytest.param(
                "demo@key|0612121515|from=SHOP||", "demo", "key", ("0612121515",),
                {"from": "SHOP"}, id="empty-fields-between-pipes",
            ),
            pytest.param(
                "demo@key|0612121515|LC=1|From=SHOP", "demo", "key", ("0612121515",),
                {"lc": "1", "from": "SHOP"}, id="option-names-any-case",
            ),
            pytest.param(
                "demo@key|0612121515|from=A=B", "demo", "key", ("0612121515",),
                {"from": "A=B"}, id="value-split-at-first-equals",
            ),
            pytest.param(
                "demo@key|0612121515\n", "demo", "key", ("0612121515",), {},
                id="trailing-newline",
            ),
        ],
    )
    def test_fields(self, subject, login, api_key, numbers, options):
        """Login, key, numbers and options come out as written, trimmed."""
        parsed = parse_subject(subject)
        assert parsed.login == login
        assert parsed.api_key == api_key
        assert parsed.numbers == numbers
        assert dict(parsed.options) == options

    @pytest.mark.parametrize(
        ("subject", "sender", "date", "low_cost"),
        [
            pytest.param("a@k|06", None, None, False, id="nothing"),
            pytest.param("a@k|06|from=|date=|lc=", None, None, False, id="all-empty"),
            pytest.param("a@k|06|from=SHOP", "SHOP", None, False, id="sender"),
            pytest.param(
                "a@k|06|date=2026-12-01 09:00:00", None, "2026-12-01 09:00:00", False,
                id="date",
            ),
            pytest.param("a@k|06|lc=0", None, None, False, id="lc-0-premium"),
            pytest.param("a@k|06|lc=1", None, None, True, id="lc-1-low-cost"),
        ],
    )
    def test_properties(self, subject, sender, date, low_cost):
        """``sender``/``date`` are None when absent or empty; ``low_cost`` only for lc=1."""
        parsed = parse_subject(subject)
        assert (parsed.sender, parsed.date, parsed.low_cost) == (sender, date, low_cost)

    def test_empty_numbers_field_parses_to_no_numbers(self):
        """An empty numbers field is not malformed here; the number check reports it (114)."""
        assert parse_subject("demo@key|").numbers == ()


class TestParseSubjectRefuses:
    """Blank subjects are 105; anything else out of shape is 109."""

    @pytest.mark.parametrize(
        "subject",
        [
            pytest.param("", id="empty"),
            pytest.param("   ", id="spaces"),
            pytest.param("\t\r\n", id="control-whitespace"),
        ],
    )
    def test_blank_is_105(self, subject):
        """A blank subject is status 105 (empty request)."""
        with pytest.raises(StatusError) as caught:
            parse_subject(subject)
        assert caught.value.code == 105

    @pytest.mark.parametrize(
        "subject",
        [
            pytest.param("demo-key|0612121515", id="no-at"),
            pytest.param("@key|0612121515", id="no-login"),
            pytest.param("demo@|0612121515", id="no-key"),
            pytest.param("demo@   |0612121515", id="blank-key"),
            pytest.param("de mo@key|0612121515", id="space-in-login"),
            pytest.param("|0612121515", id="empty-first-field"),
            pytest.param("demo@key", id="numbers-field-missing"),
            pytest.param("demo@key|0612121515|sender=SHOP", id="unknown-option"),
            pytest.param("demo@key|0612121515|SHOP", id="option-without-equals"),
            pytest.param("demo@key|0612121515|from=A|from=B", id="duplicate-option"),
            pytest.param("demo@key|0612121515|lc=1|LC=0", id="duplicate-option-other-case"),
            pytest.param("demo@key|0612121515|lc=2", id="lc-2"),
            pytest.param("demo@key|0612121515|lc=yes", id="lc-yes"),
        ],
    )
    def test_malformed_is_109(self, subject):
        """A subject out of shape is status 109 (malformed request)."""
        with pytest.raises(StatusError) as caught:
            parse_subject(subject)
        assert caught.value.code == 109

    def test_malformed_note_never_shows_the_key(self):
        """The note of a 109 says what is wrong without repeating the API key."""
        with pytest.raises(StatusError) as caught:
            parse_subject("demo@s3cret-key|0612121515|bogus=1")
        assert "bogus" in caught.value.note
        assert "s3cret" not in str(caught.value)

    @given(st.text())
    def test_any_text_raises_only_105_or_109(self, subject):
        """Whatever the subject, parsing returns a Subject or raises StatusError 105/109."""
        try:
            parsed = parse_subject(subject)
        except StatusError as exc:
            assert exc.code in (105, 109)
        else:
            assert isinstance(parsed, Subject)
            assert parsed.login and parsed.api_key


class TestRedacted:
    """``redacted()`` is what replies and logs show of a subject."""

    @pytest.mark.parametrize(
        ("subject", "expected"),
        [
            pytest.param("demo@s3cret|0612121515", "demo@***|0612121515", id="minimal"),
            pytest.param(
                "demo@s3cret|06;07|from=SHOP|lc=1", "demo@***|06;07|from=SHOP|lc=1",
                id="options-kept",
            ),
            pytest.param(
                "demo@s3cret@more|0612121515", "demo@***|0612121515", id="key-with-at",
            ),
        ],
    )
    def test_hides_the_key(self, subject, expected):
        """The API key is replaced by ``***``; everything else is kept."""
        assert parse_subject(subject).redacted() == expected

    def test_repr_hides_the_key(self):
        """The dataclass repr (what a stray log line would print) leaves the key out."""
        assert "s3cret" not in repr(parse_subject("demo@s3cret|0612121515"))
