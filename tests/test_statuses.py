"""Tests for bridge.statuses: the numbered status catalogue and its texts."""

from __future__ import annotations

import pytest

from bridge.errors import StatusError
from bridge.statuses import CATALOGUE, status_text

ALLMYSMS_CODES = (100, 101, 102, 104, 105, 109, 110, 111, 113, 114, 115)


class TestCatalogue:
    """Every status the bridge can mail has a code and both languages."""

    def test_allmysms_codes_present(self):
        """Allmysms' codes are all there, and the bridge's own start above 119."""
        assert set(ALLMYSMS_CODES) <= set(CATALOGUE)
        assert all(code > 119 for code in set(CATALOGUE) - set(ALLMYSMS_CODES))

    @pytest.mark.parametrize("code", sorted(CATALOGUE), ids=str)
    def test_every_code_has_fr_and_en(self, code):
        """Each status has a non-empty French and English text, and its own code."""
        status = CATALOGUE[code]
        assert status.code == code
        assert status.fr.strip() and status.en.strip()
        assert status_text(code, "fr") and status_text(code, "en")

    @pytest.mark.parametrize(
        ("code", "is_error"),
        [
            pytest.param(100, False, id="sent"),
            pytest.param(101, False, id="scheduled"),
            pytest.param(104, True, id="credit"),
            pytest.param(113, True, id="some-invalid"),
            pytest.param(123, True, id="bad-sender"),
        ],
    )
    def test_is_error(self, code, is_error):
        """Only 100 and 101 are successes."""
        assert CATALOGUE[code].is_error is is_error


class TestStatusText:
    """Texts with their details filled in; a reply always goes out."""

    @pytest.mark.parametrize(
        ("code", "language", "details", "expected"),
        [
            pytest.param(
                104, "fr", {"used": 12, "available": 3},
                "A utiliser: 12 Crédits, Disponibles: 3 Crédits", id="104-fr",
            ),
            pytest.param(
                104, "en", {"used": 12, "available": 3},
                "Needed: 12 credits, available: 3 credits", id="104-en",
            ),
            pytest.param(
                104, "fr", {}, "A utiliser: ? Crédits, Disponibles: ? Crédits",
                id="104-missing-details",
            ),
            pytest.param(104, "fr", {"used": 5}, "Disponibles: ? Crédits", id="104-one-missing"),
            pytest.param(120, "en", {"maximum": 500}, "at most 500 per request", id="120-en"),
            pytest.param(120, "fr", {}, "maximum ? par envoi", id="120-missing"),
            pytest.param(100, "fr", {"unused": 1}, "Message envoyé", id="extra-details-ignored"),
            pytest.param(110, "de", {}, "Message non défini (vide)", id="unknown-language-fr"),
        ],
    )
    def test_text(self, code, language, details, expected):
        """Details are substituted, a missing one shows ``?``, other languages get French."""
        assert expected in status_text(code, language, **details)

    @pytest.mark.parametrize(
        ("error", "language", "expected"),
        [
            pytest.param(StatusError(110), "fr", "Message non défini (vide)", id="fr"),
            pytest.param(StatusError(110), "en", "Message not defined (empty)", id="en"),
            pytest.param(
                StatusError(104, used=7, available=2), "fr",
                "A utiliser: 7 Crédits, Disponibles: 2 Crédits", id="details",
            ),
            pytest.param(
                StatusError(114, note="abc (not a phone number)"), "en",
                "No valid phone number", id="note-not-in-text",
            ),
        ],
    )
    def test_status_error_text(self, error, language, expected):
        """``StatusError.text()`` is the catalogue text for its code and details."""
        assert expected in error.text(language)
        assert error.note not in error.text(language) or not error.note

    def test_status_error_str_has_code_and_note(self):
        """``str()`` of a StatusError (what logs show) carries the code and the note."""
        assert str(StatusError(111, note="9 parts")) == "status 111: 9 parts"
        assert str(StatusError(105)) == "status 105"
