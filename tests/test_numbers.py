"""Tests for bridge.numbers: national/international forms to E.164, validity, limits."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.errors import StatusError
from bridge.numbers import Invalid, Numbers, is_french, normalise, parse_numbers, region_of


class TestNormalise:
    """One number as written in a subject, to E.164 or a ValueError with a reason."""

    @pytest.mark.parametrize(
        "raw",
        [
            pytest.param("0612121515", id="national"),
            pytest.param("33612121515", id="international-without-plus"),
            pytest.param("+33612121515", id="international"),
            pytest.param("0033612121515", id="double-zero-prefix"),
            pytest.param("06 12 12 15 15", id="spaces"),
            pytest.param("06.12.12.15.15", id="dots"),
            pytest.param("06-12-12-15-15", id="dashes"),
            pytest.param("(06) 12 12 15 15", id="brackets"),
            pytest.param("+33 (0)6 12 12 15 15", id="international-with-trunk-zero"),
            pytest.param("  0612121515  ", id="surrounding-spaces"),
        ],
    )
    def test_french_mobile_forms(self, raw):
        """Every usual way of writing a French mobile gives the same E.164 number."""
        assert normalise(raw) == "+33612121515"

    @pytest.mark.parametrize(
        ("raw", "expected"),
        [
            pytest.param("0692123456", "+262692123456", id="reunion-national"),
            pytest.param("0690123456", "+590690123456", id="guadeloupe-national"),
            pytest.param("0696123456", "+596696123456", id="martinique-national"),
            pytest.param("0694123456", "+594694123456", id="guyane-national"),
            pytest.param("+262692123456", "+262692123456", id="reunion-international"),
            pytest.param("+1 415 555 2671", "+14155552671", id="usa"),
            pytest.param("+44 7911 123456", "+447911123456", id="uk-mobile"),
            pytest.param("+49 151 23456789", "+4915123456789", id="germany-mobile"),
            pytest.param("0044 7911 123456", "+447911123456", id="uk-double-zero"),
        ],
    )
    def test_overseas_and_foreign(self, raw, expected):
        """Overseas French mobiles get their own country code; foreign mobiles are kept."""
        assert normalise(raw) == expected

    @pytest.mark.parametrize(
        ("raw", "reason"),
        [
            pytest.param("0145454545", "not a mobile number", id="paris-landline"),
            pytest.param("0262123456", "not a mobile number", id="reunion-landline"),
            pytest.param("", "empty", id="empty"),
            pytest.param(" - . ", "empty", id="only-separators"),
            pytest.param("hello", "not a phone number", id="word"),
            pytest.param("06 12 CALL ME", "not a phone number", id="vanity-letters"),
            pytest.param("0612121515x12", "not a phone number", id="extension"),
            pytest.param("++33612121515", "not a phone number", id="double-plus"),
            pytest.param("+", "not a phone number", id="lone-plus"),
            pytest.param("06121215", "not a valid number", id="too-short"),
            pytest.param("061212151515", "not a valid number", id="too-long"),
            pytest.param("0" * 300, "not a phone number", id="huge"),
        ],
    )
    def test_refused(self, raw, reason):
        """Landlines and garbage are refused with a short reason."""
        with pytest.raises(ValueError, match=reason):
            normalise(raw)

    @given(st.text())
    def test_any_text_raises_only_value_error(self, raw):
        """Whatever is written, the result is an E.164 string or a ValueError."""
        try:
            result = normalise(raw)
        except ValueError:
            return
        assert result.startswith("+") and result[1:].isdigit()

    @given(st.text(alphabet="0123456789+ .-()", max_size=20))
    def test_result_is_stable(self, raw):
        """Normalising an E.164 result again gives it back unchanged."""
        try:
            result = normalise(raw)
        except ValueError:
            return
        assert normalise(result) == result


class TestParseNumbers:
    """The numbers field: dedup, invalid list, 114 and 120."""

    @pytest.mark.parametrize(
        ("raw", "valid", "invalid"),
        [
            pytest.param(["0612121515"], ("+33612121515",), (), id="one"),
            pytest.param(
                ["0612121515", "+33612121515", "06 12 12 15 15", "0614141515"],
                ("+33612121515", "+33614141515"), (), id="duplicates-dropped",
            ),
            pytest.param(
                ["0614141515", "0612121515", "0614141515"],
                ("+33614141515", "+33612121515"), (), id="first-appearance-order",
            ),
            pytest.param(
                ["0612121515", "0145454545", "abc"],
                ("+33612121515",),
                (
                    Invalid("0145454545", "not a mobile number"),
                    Invalid("abc", "not a phone number"),
                ),
                id="some-invalid",
            ),
        ],
    )
    def test_valid_and_invalid(self, raw, valid, invalid):
        """Valid numbers are E.164 in order without repeats; refused ones keep their raw form."""
        assert parse_numbers(raw) == Numbers(valid, invalid)

    @pytest.mark.parametrize(
        ("raw", "listed"),
        [
            pytest.param([], [], id="none-given"),
            pytest.param(["0145454545"], ["0145454545 (not a mobile number)"], id="landline"),
            pytest.param(
                ["abc", "0612"],
                ["abc (not a phone number)", "0612 (not a valid number)"],
                id="garbage",
            ),
        ],
    )
    def test_none_valid_is_114(self, raw, listed):
        """No valid number is status 114 and the note lists each refused one with its reason."""
        with pytest.raises(StatusError) as caught:
            parse_numbers(raw)
        assert caught.value.code == 114
        for item in listed:
            assert item in caught.value.note

    @pytest.mark.parametrize(
        ("raw", "maximum"),
        [
            pytest.param(["0612121515", "0612121516", "0612121517", "0612121518"], 3,
                         id="four-for-three"),
            pytest.param(["0612121515", "0612121516"], 1, id="two-for-one"),
        ],
    )
    def test_too_many_is_120(self, raw, maximum):
        """More distinct valid numbers than ``maximum`` is status 120, telling the maximum."""
        with pytest.raises(StatusError) as caught:
            parse_numbers(raw, maximum=maximum)
        assert caught.value.code == 120
        assert f"at most {maximum} per request" in caught.value.text("en")
        assert f"maximum {maximum} par envoi" in caught.value.text("fr")

    @pytest.mark.parametrize(
        ("raw", "maximum"),
        [
            pytest.param(["0612121515", "0612121516", "0612121517"], 3, id="exactly-max"),
            pytest.param(["0612121515", "+33612121515", "0612121516"], 2,
                         id="duplicates-not-counted"),
            pytest.param(["0612121515", "abc", "def"], 1, id="invalid-not-counted"),
        ],
    )
    def test_up_to_maximum_is_fine(self, raw, maximum):
        """The limit counts distinct valid numbers only."""
        assert len(parse_numbers(raw, maximum=maximum).valid) <= maximum

    def test_other_region(self):
        """National numbers are read in the given region."""
        assert parse_numbers(["07911 123456"], region="GB").valid == ("+447911123456",)


class TestIsFrench:
    """Which E.164 numbers count as French for the STOP rule."""

    @pytest.mark.parametrize(
        ("e164", "french", "region"),
        [
            pytest.param("+33612121515", True, "FR", id="metropolitan"),
            pytest.param("+262692123456", True, "RE", id="reunion"),
            pytest.param("+590690123456", True, "GP", id="guadeloupe"),
            pytest.param("+596696123456", True, "MQ", id="martinique"),
            pytest.param("+14155552671", False, "US", id="usa"),
            pytest.param("+447400123456", False, "GB", id="uk"),
            pytest.param("+32470123456", False, "BE", id="belgium"),
            pytest.param("not a number", False, None, id="garbage"),
        ],
    )
    def test_is_french(self, e164, french, region):
        """Metropolitan and overseas France are French; the rest, and garbage, are not."""
        assert is_french(e164) is french
        assert region_of(e164) == region


class TestFrenchShortcut:
    """The usual French forms skip ``phonenumbers.parse``; the answer must not change."""

    @given(nsn=st.integers(100_000_000, 999_999_999), form=st.sampled_from(["0", "+33", "0033"]),
           region=st.sampled_from(["FR", "BE", "RE"]))
    def test_same_number_and_type_as_the_full_parse(self, nsn, form, region):
        """Whenever the shortcut answers, the full parse gives the same E.164, an SMS type,
        and France as the region."""
        import phonenumbers

        from bridge.numbers import _SMS_TYPES, _french_mobile, _parse

        compact = f"{form}{nsn}"
        fast = _french_mobile(compact, region)
        if fast is not None:
            number, kind = _parse(compact, region)
            assert fast == phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
            assert kind in _SMS_TYPES and phonenumbers.region_code_for_number(number) == "FR"

    @pytest.mark.parametrize("raw, expected", [("0692123456", "+262692123456"), ("0612121515", "+33612121515"),
                                               ("0033734567890", "+33734567890")])
    def test_overseas_numbers_still_find_their_region(self, raw, expected):
        """A Réunion mobile written the French way is not taken for a metropolitan one."""
        assert normalise(raw) == expected


class TestSmsTyping:
    """``_sms_type`` answers "can it get an SMS" exactly as ``phonenumbers.number_type``."""

    KINDS = ("general_desc", "premium_rate", "toll_free", "shared_cost", "voip", "personal_number", "pager",
             "uan", "voicemail", "fixed_line", "mobile")

    @staticmethod
    def _by_phonenumbers(country_code: int, nsn: str) -> bool:
        import phonenumbers

        from bridge.numbers import _SMS_TYPES

        number = phonenumbers.PhoneNumber(country_code=country_code, national_number=int(nsn))
        return phonenumbers.number_type(number) in _SMS_TYPES

    def test_every_french_prefix(self):
        """Every four-digit start of a French national number, with varying ends."""
        from bridge.numbers import _sms_type

        is_sms = _sms_type("FR", 9)
        differ = [nsn for nsn in (f"{p}{p * 7919 % 100_000:05d}" for p in range(1_000, 10_000))
                  if is_sms(nsn) != self._by_phonenumbers(33, nsn)]
        assert differ == []
        assert is_sms("612345678") and is_sms("734567890")
        assert not is_sms("123456789") and not is_sms("800123456") and not is_sms("912345678")

    @pytest.mark.parametrize("region", ["FR", "DE", "CH", "NL", "SE", "PL", "BE", "ES", "PT", "JP", "KR", "IE"])
    def test_an_example_of_every_kind(self, region):
        """The metadata's own example of each kind (premium, VoIP, pager, voicemail, fixed,
        mobile...) and its neighbours (other last digit, one digit more or less), in
        regions with pagers, voicemail and numbers of several lengths."""
        import phonenumbers

        from bridge.numbers import _sms_type

        nsns = set()
        for kind in phonenumbers.PhoneNumberType.values():
            example = phonenumbers.example_number_for_type(region, kind)
            if example is not None:
                nsn = phonenumbers.national_significant_number(example)
                nsns |= {nsn, nsn[:-1], nsn + "5", *(nsn[:-1] + d for d in "0123456789")}
        assert len(nsns) > 30
        country_code = phonenumbers.country_code_for_region(region)
        assert [n for n in sorted(nsns) if n[:1] != "0"
                and _sms_type(region, len(n))(n) != self._by_phonenumbers(country_code, n)] == []
