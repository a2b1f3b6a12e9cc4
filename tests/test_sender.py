"""Tests for bridge.sender: the ``from=`` sender rules and the ``STOP au 36xxx`` mention."""

from __future__ import annotations

import pytest

from bridge.errors import StatusError
from bridge.sender import check_sender, has_stop_mention


class TestCheckSender:
    """A sender starts with a letter, holds ASCII letters/digits/spaces, 3 to 11 long."""

    @pytest.mark.parametrize(
        ("sender", "expected"),
        [
            pytest.param("ABC", "ABC", id="3-chars"),
            pytest.param("ABCDEFGHIJK", "ABCDEFGHIJK", id="11-chars"),
            pytest.param("Shop", "Shop", id="mixed-case"),
            pytest.param("Shop42", "Shop42", id="digits-after-letter"),
            pytest.param("My Shop", "My Shop", id="inner-space"),
            pytest.param("  SHOP  ", "SHOP", id="stripped"),
            pytest.param(None, None, id="none"),
            pytest.param("", None, id="empty"),
            pytest.param("   ", None, id="blank"),
        ],
    )
    def test_accepted(self, sender, expected):
        """A valid sender comes back stripped; no sender at all is None."""
        assert check_sender(sender) == expected

    @pytest.mark.parametrize(
        "sender",
        [
            pytest.param("AB", id="2-chars"),
            pytest.param("ABCDEFGHIJKL", id="12-chars"),
            pytest.param("1SHOP", id="leading-digit"),
            pytest.param(" 1SHOP", id="leading-digit-after-space"),
            pytest.param("Société", id="accents"),
            pytest.param("SHOP-24", id="dash"),
            pytest.param("SHOP.fr", id="dot"),
            pytest.param("SHOP\nX", id="newline"),
            pytest.param("ＳＨＯＰ", id="fullwidth-letters"),
        ],
    )
    def test_refused_is_123(self, sender):
        """Anything else is status 123, and the note shows the sender asked for."""
        with pytest.raises(StatusError) as caught:
            check_sender(sender)
        assert caught.value.code == 123
        assert "from=" in caught.value.note


class TestHasStopMention:
    """The text must end with ``STOP au 36xxx`` after a space or a line break."""

    @pytest.mark.parametrize(
        ("text", "expected"),
        [
            pytest.param("Promo STOP au 36180", True, id="space-before"),
            pytest.param("Promo\nSTOP au 36180", True, id="newline-before"),
            pytest.param("Promo\r\nSTOP au 36180", True, id="crlf-before"),
            pytest.param("Promo STOP au 36180  \n", True, id="trailing-whitespace"),
            pytest.param("STOP au 36180", True, id="whole-text"),
            pytest.param("Promo stop au 36180", True, id="lowercase"),
            pytest.param("PromoSTOP au 36180", False, id="no-space-before"),
            pytest.param("Promo STOP au 3618", False, id="four-digits"),
            pytest.param("Promo STOP au 361800", False, id="six-digits"),
            pytest.param("Promo STOP au 37180", False, id="not-36"),
            pytest.param("Promo STOP au 36180 today", False, id="in-the-middle"),
            pytest.param("Promo STOP au 36180.", False, id="trailing-dot"),
            pytest.param("Promo STOP 36180", False, id="no-au"),
            pytest.param("Promo", False, id="absent"),
            pytest.param("", False, id="empty"),
        ],
    )
    def test_stop_mention(self, text, expected):
        """Only a final ``STOP au 36`` + three digits after a space or line break counts."""
        assert has_stop_mention(text) is expected
