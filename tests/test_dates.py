"""Tests for bridge.dates: ``date=YYYY-MM-DD hh:ii:ss`` in the bridge's time zone."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest

from bridge.dates import parse_date
from bridge.errors import StatusError

PARIS = ZoneInfo("Europe/Paris")
NEW_YORK = ZoneInfo("America/New_York")
NOW = datetime(2026, 1, 15, 12, 0, 0, tzinfo=timezone.utc)


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=timezone.utc)


class TestParseDate:
    """A local date in the future becomes a UTC instant."""

    @pytest.mark.parametrize(
        ("value", "tz", "expected"),
        [
            pytest.param("2026-12-01 09:00:00", PARIS, utc(2026, 12, 1, 8, 0, 0), id="winter"),
            pytest.param("2026-06-01 09:00:00", PARIS, utc(2026, 6, 1, 7, 0, 0), id="summer"),
            pytest.param("2026-12-01 09:00", PARIS, utc(2026, 12, 1, 8, 0, 0),
                         id="without-seconds"),
            pytest.param("2026-12-01T09:00:30", PARIS, utc(2026, 12, 1, 8, 0, 30),
                         id="iso-t-separator"),
            pytest.param("  2026-12-01 09:00:00 ", PARIS, utc(2026, 12, 1, 8, 0, 0),
                         id="surrounding-spaces"),
            pytest.param("2026-03-29 02:30:00", PARIS, utc(2026, 3, 29, 1, 30, 0),
                         id="dst-gap-moves-forward"),
            pytest.param("2026-10-25 02:30:00", PARIS, utc(2026, 10, 25, 0, 30, 0),
                         id="dst-overlap-first-occurrence"),
            pytest.param("2026-12-01 09:00:00", NEW_YORK, utc(2026, 12, 1, 14, 0, 0),
                         id="new-york-winter"),
            pytest.param("2026-07-01 09:00:00", NEW_YORK, utc(2026, 7, 1, 13, 0, 0),
                         id="new-york-summer"),
        ],
    )
    def test_future_is_utc_instant(self, value, tz, expected):
        """The local wall time in ``tz`` is converted to the UTC instant to send at."""
        result = parse_date(value, tz, NOW)
        assert result == expected
        assert result.utcoffset() == timedelta(0)

    @pytest.mark.parametrize(
        "value",
        [
            pytest.param("2025-12-01 09:00:00", id="last-year"),
            pytest.param("2026-01-15 13:00:00", id="exactly-now"),
            pytest.param("2026-01-15 12:59:59", id="one-second-ago"),
        ],
    )
    def test_not_future_is_none(self, value):
        """A date that is not in the future means "send now" (None)."""
        assert parse_date(value, PARIS, NOW) is None

    def test_one_second_ahead_is_kept(self):
        """Just after now is still a scheduled instant."""
        assert parse_date("2026-01-15 13:00:01", PARIS, NOW) == utc(2026, 1, 15, 12, 0, 1)

    @pytest.mark.parametrize(
        "value",
        [
            pytest.param("", id="empty"),
            pytest.param("tomorrow", id="word"),
            pytest.param("01/12/2026 09:00:00", id="french-order"),
            pytest.param("2026-12-01", id="no-time"),
            pytest.param("2026-12-1 09:00:00", id="one-digit-day"),
            pytest.param("2026-12-01 9:00:00", id="one-digit-hour"),
            pytest.param("2026-12-01 09:00:00 +01:00", id="with-offset"),
            pytest.param("2026-12-01 09:00:00.5", id="fraction"),
            pytest.param("2026-02-30 09:00:00", id="february-30"),
            pytest.param("2026-13-01 09:00:00", id="month-13"),
            pytest.param("2026-12-01 24:00:00", id="hour-24"),
            pytest.param("2026-12-01 09:60:00", id="minute-60"),
        ],
    )
    def test_malformed_or_impossible_is_115(self, value):
        """A value not in the expected form, or naming no real day/time, is status 115."""
        with pytest.raises(StatusError) as caught:
            parse_date(value, PARIS, NOW)
        assert caught.value.code == 115

    @pytest.mark.parametrize(
        ("value", "max_ahead"),
        [
            pytest.param("2027-01-15 14:00:00", timedelta(days=365), id="just-over-a-year"),
            pytest.param("2030-01-01 00:00:00", timedelta(days=365), id="years-ahead"),
            pytest.param("2026-01-16 14:00:00", timedelta(days=1), id="over-custom-limit"),
        ],
    )
    def test_too_far_ahead_is_115(self, value, max_ahead):
        """A date further than ``max_ahead`` (a year by default) is status 115."""
        with pytest.raises(StatusError) as caught:
            parse_date(value, PARIS, NOW, max_ahead)
        assert caught.value.code == 115
        assert "too far" in caught.value.note

    def test_just_under_a_year_is_kept(self):
        """A date within a year is scheduled."""
        assert parse_date("2027-01-15 12:00:00", PARIS, NOW) == utc(2027, 1, 15, 11, 0, 0)
