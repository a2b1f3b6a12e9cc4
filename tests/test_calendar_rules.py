"""Tests for bridge.calendar_rules: when French marketing SMS may go out."""

from __future__ import annotations

from datetime import date, datetime, time, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.calendar_rules import QuietHours, Window, french_holidays, parse_windows

PARIS = ZoneInfo("Europe/Paris")
NEW_YORK = ZoneInfo("America/New_York")
DEFAULT = QuietHours()
ALSACE = QuietHours(alsace_moselle=True)
EVERY_DAY = QuietHours(windows=parse_windows(["mon-sun 08:00-20:00"]))
EVERY_DAY_ALSACE = QuietHours(windows=EVERY_DAY.windows, alsace_moselle=True)
ALL_SUNDAY = QuietHours(windows=parse_windows(["sun 00:00-24:00"]), holidays=False)
SUNDAY_1_TO_4 = QuietHours(windows=parse_windows(["sun 01:00-04:00"]), holidays=False)
SUNDAY_0230_TO_4 = QuietHours(windows=parse_windows(["sun 02:30-04:00"]), holidays=False)
SUNDAY_1_TO_0230 = QuietHours(windows=parse_windows(["sun 01:00-02:30"]), holidays=False)

HOLIDAYS = {
    2026: [
        date(2026, 1, 1), date(2026, 4, 6), date(2026, 5, 1), date(2026, 5, 8),
        date(2026, 5, 14), date(2026, 5, 25), date(2026, 7, 14), date(2026, 8, 15),
        date(2026, 11, 1), date(2026, 11, 11), date(2026, 12, 25),
    ],
    2027: [
        date(2027, 1, 1), date(2027, 3, 29), date(2027, 5, 1), date(2027, 5, 8),
        date(2027, 5, 6), date(2027, 5, 17), date(2027, 7, 14), date(2027, 8, 15),
        date(2027, 11, 1), date(2027, 11, 11), date(2027, 12, 25),
    ],
}  # fmt: skip
ALL_HOLIDAYS = HOLIDAYS[2026] + HOLIDAYS[2027]
ALSACE_EXTRAS = [date(2026, 4, 3), date(2026, 12, 26), date(2027, 3, 26), date(2027, 12, 26)]


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=timezone.utc)


def paris(*args: int, fold: int = 0) -> datetime:
    return datetime(*args, tzinfo=PARIS, fold=fold)


def at(day: date, hour: int, minute: int = 0) -> datetime:
    return datetime.combine(day, time(hour, minute), tzinfo=PARIS)


def weekday_neighbours(day: date) -> list[date]:
    """The days around ``day`` that are neither Sundays nor holidays themselves."""
    around = (day - timedelta(days=1), day + timedelta(days=1))
    return [d for d in around if d.weekday() != 6 and d not in ALL_HOLIDAYS]


class TestFrenchHolidays:
    """The national list, and the two Alsace-Moselle extras."""

    @pytest.mark.parametrize("year", [2026, 2027])
    def test_national_list_is_exact(self, year: int) -> None:
        """Eleven public holidays a year, exactly the listed dates."""
        assert set(french_holidays(year)) == set(HOLIDAYS[year])

    @pytest.mark.parametrize("year", [2026, 2027])
    def test_alsace_moselle_adds_two_days(self, year: int) -> None:
        """Alsace-Moselle adds Good Friday and 26 December, nothing else."""
        extras = set(french_holidays(year, alsace_moselle=True)) - set(french_holidays(year))
        assert extras == {d for d in ALSACE_EXTRAS if d.year == year}

    def test_names_are_french(self) -> None:
        """Names come in French whatever the process locale."""
        assert french_holidays(2026)[date(2026, 7, 14)] == "Fête nationale"

    def test_returns_a_copy(self) -> None:
        """Mutating the result does not poison the per-year cache."""
        french_holidays(2026).clear()
        assert date(2026, 1, 1) in french_holidays(2026)


class TestIsAllowed:
    """Whether one instant is inside the legal sending calendar."""

    @pytest.mark.parametrize("day", ALL_HOLIDAYS, ids=str)
    @pytest.mark.parametrize("hour", [0, 8, 12, 19])
    def test_holiday_closed_all_day(self, day: date, hour: int) -> None:
        """A public holiday is closed from midnight to midnight."""
        assert not DEFAULT.is_allowed(at(day, hour, 59 if hour == 19 else 0))

    @pytest.mark.parametrize("day", ALL_HOLIDAYS, ids=str)
    def test_holiday_weekday_neighbours_open(self, day: date) -> None:
        """The ordinary working days either side of a holiday are open at noon."""
        for neighbour in weekday_neighbours(day):
            assert DEFAULT.is_allowed(at(neighbour, 12)), neighbour

    @pytest.mark.parametrize("day", ALL_HOLIDAYS, ids=str)
    def test_holidays_option_off(self, day: date) -> None:
        """With holidays=False only the windows count."""
        assert QuietHours(windows=EVERY_DAY.windows, holidays=False).is_allowed(at(day, 12))

    @pytest.mark.parametrize("day", ALSACE_EXTRAS, ids=str)
    def test_alsace_extras_closed_only_with_option(self, day: date) -> None:
        """Good Friday and 26 December close only in Alsace-Moselle."""
        assert EVERY_DAY.is_allowed(at(day, 12))
        assert not EVERY_DAY_ALSACE.is_allowed(at(day, 12))

    def test_alsace_good_friday_with_default_windows(self) -> None:
        """Good Friday 2026 is an ordinary Friday elsewhere, closed in Alsace-Moselle."""
        assert DEFAULT.is_allowed(paris(2026, 4, 3, 12))
        assert not ALSACE.is_allowed(paris(2026, 4, 3, 12))

    @pytest.mark.parametrize(
        "day", [date(2026, 1, 4), date(2026, 6, 7), date(2027, 2, 14), date(2027, 9, 5)], ids=str
    )
    def test_sundays_closed(self, day: date) -> None:
        """The default windows leave Sunday out."""
        assert not DEFAULT.is_allowed(at(day, 12))

    @pytest.mark.parametrize(
        ("when", "allowed"),
        [
            pytest.param(utc(2026, 1, 13, 6, 59), False, id="winter-0759"),
            pytest.param(utc(2026, 1, 13, 7, 0), True, id="winter-0800"),
            pytest.param(utc(2026, 1, 13, 18, 59), True, id="winter-1959"),
            pytest.param(utc(2026, 1, 13, 19, 0), False, id="winter-2000"),
            pytest.param(utc(2026, 7, 7, 5, 59), False, id="summer-0759"),
            pytest.param(utc(2026, 7, 7, 6, 0), True, id="summer-0800"),
            pytest.param(utc(2026, 7, 7, 17, 59), True, id="summer-1959"),
            pytest.param(utc(2026, 7, 7, 18, 0), False, id="summer-2000"),
            pytest.param(utc(2026, 1, 17, 18, 59, 59), True, id="saturday-195959"),
            pytest.param(datetime(2026, 1, 13, 2, 0, tzinfo=NEW_YORK), True, id="other-tz-0800-paris"),
            pytest.param(datetime(2026, 1, 13, 1, 59, tzinfo=NEW_YORK), False, id="other-tz-0759-paris"),
        ],
    )
    def test_window_boundaries(self, when: datetime, allowed: bool) -> None:
        """08:00 Paris is open and 20:00 closed, in winter and summer alike."""
        assert DEFAULT.is_allowed(when) is allowed

    def test_naive_datetime_rejected(self) -> None:
        """A naive datetime has no instant: refuse it rather than guess a zone."""
        with pytest.raises(ValueError, match="naive"):
            DEFAULT.is_allowed(datetime(2026, 1, 13, 12))

    def test_acoustic_saturday(self) -> None:
        """The stricter Saturday window of the Acoustic example closes at 18:00."""
        strict = QuietHours(windows=parse_windows(["mon-fri 08:00-20:00", "sat 10:00-18:00"]))
        assert not strict.is_allowed(paris(2026, 1, 17, 9, 59))
        assert strict.is_allowed(paris(2026, 1, 17, 10, 0))
        assert not strict.is_allowed(paris(2026, 1, 17, 18, 0))
        assert strict.is_allowed(paris(2026, 1, 16, 19, 0))


class TestNextAllowed:
    """The first allowed instant at or after a given one, in UTC."""

    @pytest.mark.parametrize(
        ("calendar", "when", "expected"),
        [
            pytest.param(DEFAULT, utc(2026, 1, 13, 10), utc(2026, 1, 13, 10), id="open-itself"),
            pytest.param(DEFAULT, paris(2026, 1, 13, 5), utc(2026, 1, 13, 7), id="early-morning"),
            pytest.param(DEFAULT, paris(2026, 1, 13, 20, 0), utc(2026, 1, 14, 7), id="evening"),
            pytest.param(DEFAULT, paris(2026, 1, 17, 20), utc(2026, 1, 19, 7), id="saturday-to-monday"),
            pytest.param(DEFAULT, paris(2026, 1, 18, 10), utc(2026, 1, 19, 7), id="sunday-to-monday"),
            pytest.param(DEFAULT, paris(2026, 5, 23, 20), utc(2026, 5, 26, 6), id="whit-monday-to-tuesday"),
            pytest.param(DEFAULT, paris(2026, 4, 4, 20), utc(2026, 4, 7, 6), id="easter-monday-to-tuesday"),
            pytest.param(DEFAULT, paris(2026, 12, 31, 20, 30), utc(2027, 1, 2, 7), id="new-year"),
            pytest.param(DEFAULT, paris(2026, 5, 13, 21), utc(2026, 5, 15, 6), id="ascension-eve"),
            pytest.param(ALSACE, paris(2026, 4, 2, 20), utc(2026, 4, 4, 6), id="alsace-good-friday"),
            pytest.param(ALSACE, paris(2026, 12, 24, 20), utc(2026, 12, 28, 7), id="alsace-christmas"),
            pytest.param(DEFAULT, utc(2026, 1, 13, 6, 59, 30), utc(2026, 1, 13, 7), id="seconds"),
            # DST weekends with the default windows: Sundays are closed anyway.
            pytest.param(DEFAULT, paris(2026, 3, 28, 20), utc(2026, 3, 30, 6), id="2026-spring-weekend"),
            pytest.param(DEFAULT, paris(2026, 10, 24, 20), utc(2026, 10, 26, 7), id="2026-autumn-weekend"),
            pytest.param(DEFAULT, paris(2027, 3, 27, 20), utc(2027, 3, 30, 6), id="2027-spring-easter"),
            pytest.param(DEFAULT, paris(2027, 10, 30, 20), utc(2027, 11, 2, 7), id="2027-autumn-all-saints"),
        ],
    )
    def test_default_calendar(self, calendar: QuietHours, when: datetime, expected: datetime) -> None:
        """Closed evenings, Sundays and chains of holidays are skipped to the next opening."""
        result = calendar.next_allowed(when)
        assert result == expected
        assert result.tzinfo is timezone.utc

    @pytest.mark.parametrize(
        ("calendar", "when", "expected"),
        [
            # Spring forward: 02:00-03:00 CET does not exist on these Sundays.
            pytest.param(ALL_SUNDAY, utc(2026, 3, 28, 22, 59), utc(2026, 3, 28, 23), id="2026-sunday-midnight"),
            pytest.param(SUNDAY_1_TO_4, utc(2026, 3, 28, 23), utc(2026, 3, 29, 0), id="2026-spring-0100"),
            pytest.param(SUNDAY_0230_TO_4, utc(2026, 3, 28, 12), utc(2026, 3, 29, 1), id="2026-spring-start-in-gap"),
            pytest.param(SUNDAY_1_TO_0230, utc(2026, 3, 29, 1), utc(2026, 4, 4, 23), id="2026-spring-end-in-gap"),
            pytest.param(SUNDAY_1_TO_4, utc(2026, 3, 29, 2), utc(2026, 4, 4, 23), id="2026-spring-0400-closes"),
            pytest.param(ALL_SUNDAY, utc(2026, 3, 29, 22), utc(2026, 4, 4, 22), id="2026-sunday-2400-closes"),
            pytest.param(SUNDAY_0230_TO_4, utc(2027, 3, 27, 12), utc(2027, 3, 28, 1), id="2027-spring-start-in-gap"),
            pytest.param(SUNDAY_1_TO_4, utc(2027, 3, 28, 2), utc(2027, 4, 3, 23), id="2027-spring-0400-closes"),
            # Fall back: 02:00-03:00 happens twice, first CEST then CET.
            pytest.param(SUNDAY_1_TO_4, utc(2026, 10, 24, 22, 59), utc(2026, 10, 24, 23), id="2026-autumn-0100"),
            pytest.param(SUNDAY_1_TO_4, utc(2026, 10, 25, 2, 59), utc(2026, 10, 25, 2, 59), id="2026-autumn-0359-cet"),
            pytest.param(SUNDAY_1_TO_4, utc(2026, 10, 25, 3), utc(2026, 11, 1, 0), id="2026-autumn-0400-closes"),
            pytest.param(SUNDAY_0230_TO_4, utc(2026, 10, 24, 12), utc(2026, 10, 25, 0, 30), id="2026-autumn-first-0230"),
            pytest.param(SUNDAY_1_TO_0230, utc(2026, 10, 25, 0, 45), utc(2026, 10, 25, 1), id="2026-autumn-reopens-0200-cet"),
            pytest.param(SUNDAY_1_TO_0230, utc(2026, 10, 25, 1, 30), utc(2026, 11, 1, 0), id="2026-autumn-second-0230"),
            pytest.param(ALL_SUNDAY, utc(2026, 10, 25, 22, 59), utc(2026, 10, 25, 22, 59), id="2026-sunday-2359-cet"),
            pytest.param(ALL_SUNDAY, utc(2026, 10, 25, 23), utc(2026, 10, 31, 23), id="2026-sunday-2400-cet"),
            pytest.param(SUNDAY_1_TO_0230, utc(2027, 10, 31, 0, 45), utc(2027, 10, 31, 1), id="2027-autumn-reopens-0200-cet"),
            pytest.param(SUNDAY_1_TO_4, utc(2027, 10, 31, 3), utc(2027, 11, 7, 0), id="2027-autumn-0400-closes"),
        ],
    )  # fmt: skip
    def test_dst_changes(self, calendar: QuietHours, when: datetime, expected: datetime) -> None:
        """Windows follow the wall clock through the skipped and the repeated hour."""
        assert calendar.next_allowed(when) == expected

    def test_no_opening_within_a_year(self) -> None:
        """A calendar with no windows is a misconfiguration, reported as such."""
        with pytest.raises(ValueError, match="no allowed sending time"):
            QuietHours(windows=()).next_allowed(utc(2026, 1, 1))


class TestReleaseTime:
    """When a send taking some time may start."""

    @pytest.mark.parametrize(
        ("when", "duration", "expected"),
        [
            pytest.param(paris(2026, 1, 17, 19, 59, 30), timedelta(0), utc(2026, 1, 17, 18, 59, 30), id="sat-195930"),
            pytest.param(paris(2026, 1, 17, 19, 59, 30), timedelta(seconds=20), utc(2026, 1, 17, 18, 59, 30), id="fits"),
            pytest.param(paris(2026, 1, 17, 19, 59, 30), timedelta(seconds=30), utc(2026, 1, 17, 18, 59, 30), id="ends-at-2000"),
            pytest.param(paris(2026, 1, 17, 19, 59, 30), timedelta(minutes=1), utc(2026, 1, 19, 7), id="overruns-saturday"),
            pytest.param(paris(2026, 5, 22, 19, 30), timedelta(hours=1), utc(2026, 5, 23, 6), id="overruns-to-next-day"),
            pytest.param(paris(2026, 5, 23, 19, 30), timedelta(hours=1), utc(2026, 5, 26, 6), id="overruns-past-whit-monday"),
            pytest.param(paris(2026, 1, 18, 10), timedelta(minutes=5), utc(2026, 1, 19, 7), id="sunday"),
            pytest.param(paris(2026, 1, 13, 7), timedelta(hours=12), utc(2026, 1, 13, 7), id="whole-window"),
        ],
    )  # fmt: skip
    def test_default_calendar(self, when: datetime, duration: timedelta, expected: datetime) -> None:
        """A send starts when it can also finish before its window closes."""
        assert DEFAULT.release_time(when, duration) == expected

    @pytest.mark.parametrize(
        "when",
        [paris(2026, 1, 17, 19, 59, 30), paris(2026, 1, 18, 10), paris(2026, 5, 23, 20), utc(2026, 3, 1)],
        ids=["saturday", "sunday", "whit-weekend", "midnight"],
    )
    def test_no_duration_is_next_allowed(self, when: datetime) -> None:
        """Without a duration only the send time counts."""
        assert DEFAULT.release_time(when) == DEFAULT.next_allowed(when)

    def test_adjacent_windows_join(self) -> None:
        """Two windows meeting at noon are one stretch of allowed time."""
        split = QuietHours(windows=parse_windows(["mon-sat 08:00-12:00", "mon-sat 12:00-20:00"]))
        assert split.release_time(paris(2026, 1, 13, 11), timedelta(hours=2)) == utc(2026, 1, 13, 10)

    def test_dst_shortens_the_window(self) -> None:
        """Sunday 01:00-04:00 lasts two real hours when clocks go forward, four when they go back."""
        three_hours = timedelta(hours=3)
        assert SUNDAY_1_TO_4.release_time(utc(2026, 3, 28, 12), three_hours) == utc(2026, 4, 4, 23)
        assert SUNDAY_1_TO_4.release_time(utc(2026, 3, 28, 12), timedelta(hours=2)) == utc(2026, 3, 29, 0)
        assert SUNDAY_1_TO_4.release_time(utc(2026, 10, 24, 12), three_hours) == utc(2026, 10, 24, 23)

    def test_longer_than_any_window(self) -> None:
        """A send that no window can hold is reported, not looped over forever."""
        with pytest.raises(ValueError, match="no window long enough"):
            DEFAULT.release_time(utc(2026, 1, 13, 10), timedelta(hours=13))


    def test_negative_duration(self) -> None:
        """A negative duration is a caller bug, not a send that ends before it starts."""
        with pytest.raises(ValueError, match="negative"):
            DEFAULT.release_time(utc(2026, 1, 13, 10), timedelta(seconds=-1))


class TestParseWindows:
    """Windows as written in the config file."""

    @pytest.mark.parametrize(
        ("spec", "expected"),
        [
            pytest.param(
                ["mon-sat 08:00-20:00"], (Window(frozenset(range(6)), time(8), time(20)),), id="default"
            ),
            pytest.param(
                ["mon-fri 08:00-20:00", "sat 10:00-18:00"],
                (Window(frozenset(range(5)), time(8), time(20)), Window(frozenset({5}), time(10), time(18))),
                id="acoustic",
            ),
            pytest.param(
                [{"days": "mon-sat", "from": "08:00", "to": "20:00"}],
                (Window(frozenset(range(6)), time(8), time(20)),),
                id="dict",
            ),
            pytest.param(["sun 00:00-24:00"], (Window(frozenset({6}), time(0), time(0)),), id="until-24"),
            pytest.param(["Mon,WED,fri 9:00-12:30"], (Window(frozenset({0, 2, 4}), time(9), time(12, 30)),), id="list"),
            pytest.param(["fri-mon 10:00-11:00"], (Window(frozenset({4, 5, 6, 0}), time(10), time(11)),), id="wraps"),
        ],
    )  # fmt: skip
    def test_valid(self, spec: list, expected: tuple[Window, ...]) -> None:
        """Day names, ranges and lists, string or mapping form."""
        assert parse_windows(spec) == expected

    @pytest.mark.parametrize(
        ("spec", "message"),
        [
            pytest.param(["sta 08:00-20:00"], r"windows\[0\]: unknown day 'sta'", id="bad-day"),
            pytest.param(["mon 08:00-20:00", "mon-frx 08:00-20:00"], r"windows\[1\]: unknown day 'frx'", id="bad-range"),
            pytest.param(["mon 08:00-25:00"], r"bad time '25:00'", id="25h"),
            pytest.param(["mon 24:00-24:00"], r"bad time '24:00'", id="24h-start"),
            pytest.param(["mon 08:60-20:00"], r"bad time '08:60'", id="60min"),
            pytest.param(["mon 20:00-08:00"], r"start 20:00 is not before end 08:00", id="backwards"),
            pytest.param(["mon 08:00-08:00"], r"start 08:00 is not before end 08:00", id="empty"),
            pytest.param(["mon 8h-20h"], r"bad time '8h'", id="not-hhmm"),
            pytest.param(["monday"], r"is not 'DAYS HH:MM-HH:MM'", id="no-times"),
            pytest.param([{"days": "mon", "from": "08:00"}], r"expected keys days, from, to", id="dict-missing"),
            pytest.param([42], r"expected a string or a mapping", id="not-str"),
            pytest.param([], r"non-empty list", id="empty-list"),
        ],
    )  # fmt: skip
    def test_invalid(self, spec: list, message: str) -> None:
        """A bad window raises ValueError naming the item and the problem."""
        with pytest.raises(ValueError, match=message):
            parse_windows(spec)


class TestProperties:
    """Invariants of next_allowed over whole years."""

    def test_sweep_2026(self) -> None:
        """Every 7 minutes of 2026: the answer is allowed, not earlier, and nothing opens before it."""
        step = timedelta(minutes=7)
        t, end = utc(2025, 12, 31, 23), utc(2027, 1, 1)
        while t < end:
            found = DEFAULT.next_allowed(t)
            assert found >= t and DEFAULT.is_allowed(found), t
            gap = found - t
            if gap:
                for sample in (t + gap / 4, t + gap / 2, t + gap * 3 / 4, found - timedelta(minutes=1)):
                    assert sample < t or not DEFAULT.is_allowed(sample), (t, sample)
            t += step

    @settings(max_examples=300, deadline=None)
    @given(st.datetimes(datetime(2026, 1, 1), datetime(2028, 12, 31), timezones=st.just(timezone.utc)))
    def test_default_allowed_and_idempotent(self, when: datetime) -> None:
        """next_allowed lands on an allowed instant and stays there."""
        found = DEFAULT.next_allowed(when)
        assert found >= when and DEFAULT.is_allowed(found)
        assert DEFAULT.next_allowed(found) == found
        assert DEFAULT.release_time(when) == found

    @settings(max_examples=300, deadline=None)
    @given(
        st.datetimes(datetime(2026, 1, 1), datetime(2028, 12, 31), timezones=st.just(PARIS)),
        st.sampled_from([ALL_SUNDAY, SUNDAY_1_TO_4, SUNDAY_0230_TO_4, SUNDAY_1_TO_0230, ALSACE]),
    )
    def test_dst_windows_allowed_and_idempotent(self, when: datetime, calendar: QuietHours) -> None:
        """The same holds for windows that straddle the DST changes, and the minute before is closed."""
        found = calendar.next_allowed(when)
        assert found >= when and calendar.is_allowed(found)
        assert calendar.next_allowed(found) == found
        before = found - timedelta(minutes=1)
        assert found == when.astimezone(timezone.utc) or before < when or not calendar.is_allowed(before)
