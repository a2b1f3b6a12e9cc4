"""When marketing SMS may go out in France: quiet hours, Sundays and public holidays.

French rules (and aggregators such as SMSPartner, which hold a message "until the next
working day at 8 AM") allow marketing SMS Monday to Saturday 08:00-20:00, never on Sundays
or public holidays. Some vendors are stricter on Saturdays (Acoustic: 10:00-18:00), so the
windows are configurable::

    QuietHours(windows=parse_windows(["mon-fri 08:00-20:00", "sat 10:00-18:00"]))

Everything here is pure: callers pass aware datetimes and get aware UTC datetimes back.
Windows are read in local wall time, so "08:00" means 08:00 in Paris in winter and summer.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone
from functools import lru_cache
from types import MappingProxyType
from zoneinfo import ZoneInfo

import holidays as holidays_lib

PARIS = ZoneInfo("Europe/Paris")
SEARCH_DAYS = 370  # more than a year: any sane calendar opens again within it
_DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_TIME = re.compile(r"(\d{1,2}):(\d{2})")
_LINE = re.compile(r"(\S+)\s+(\S+)-(\S+)")


@dataclass(frozen=True)
class Window:
    """One allowed interval on some weekdays, in local wall time.

    ``start`` is inclusive, ``end`` exclusive; ``end == time(0)`` means 24:00 (end of day).
    A window never crosses midnight: use two windows for that.
    """

    weekdays: frozenset[int]  # 0=Monday .. 6=Sunday
    start: time
    end: time

    def __post_init__(self) -> None:
        if not self.weekdays or not self.weekdays <= frozenset(range(7)):
            raise ValueError(f"weekdays must be a non-empty subset of 0..6: {set(self.weekdays)}")
        if self.end != time(0) and self.start >= self.end:
            raise ValueError(f"start {self.start:%H:%M} is not before end {self.end:%H:%M}")

    def contains(self, local: datetime) -> bool:
        """Whether the naive-or-aware local wall time ``local`` falls inside this window."""
        if local.weekday() not in self.weekdays:
            return False
        wall = local.time()
        return self.start <= wall and (self.end == time(0) or wall < self.end)


DEFAULT_WINDOWS = (Window(frozenset(range(6)), time(8), time(20)),)


@dataclass(frozen=True)
class QuietHours:
    """The legal sending calendar: allowed windows minus public holidays."""

    tz: ZoneInfo = PARIS
    windows: tuple[Window, ...] = DEFAULT_WINDOWS
    holidays: bool = True  # French public holidays are closed all day
    alsace_moselle: bool = False  # adds Good Friday and St Stephen's Day (26 Dec)

    def is_allowed(self, when: datetime) -> bool:
        """Whether a marketing SMS may be sent at the aware instant ``when``."""
        local = _aware(when).astimezone(self.tz)
        if self.holidays and local.date() in _holiday_table(local.year, self.alsace_moselle):
            return False
        return any(w.contains(local) for w in self.windows)

    def next_allowed(self, when: datetime) -> datetime:
        """``when`` if allowed, else the first allowed instant after it (aware, UTC).

        Raises ValueError when nothing is allowed within 370 days (misconfigured windows).
        """
        when = _aware(when).astimezone(timezone.utc)
        if self.is_allowed(when):
            return when
        first = when.astimezone(self.tz).date()
        for day in _days(first):
            if not self._may_open(day):
                continue  # a holiday or a weekday without windows: no boundary can open it
            for edge in self._edges(day):
                if edge > when and self.is_allowed(edge):
                    return edge
        raise ValueError(f"no allowed sending time within {SEARCH_DAYS} days of {when:%Y-%m-%d}")

    def release_time(self, when: datetime, duration: timedelta = timedelta(0)) -> datetime:
        """When a send taking ``duration`` submitted at ``when`` may start (aware, UTC).

        With no duration this is ``next_allowed(when)``: a multi-part SMS goes out within
        seconds, so only its send time counts (Saturday 19:59:30 goes out at once, Sunday
        waits for Monday 08:00, or Tuesday when Monday is a holiday). With a duration, the
        half-open interval ``[start, start + duration)`` must be allowed throughout; if it
        would run past the end of the window, the send waits for the next window start.
        """
        if duration < timedelta(0):
            raise ValueError(f"negative send duration {duration}")
        start = self.next_allowed(when)
        limit = start + timedelta(days=SEARCH_DAYS)
        while start < limit:
            closing = self._first_closed(start, start + duration)
            if closing is None:
                return start
            start = self.next_allowed(closing)
        raise ValueError(f"no window long enough for {duration} within {SEARCH_DAYS} days")

    def _may_open(self, day: date) -> bool:
        if self.holidays and day in _holiday_table(day.year, self.alsace_moselle):
            return False
        return any(day.weekday() in w.weekdays for w in self.windows)

    def _first_closed(self, start: datetime, end: datetime) -> datetime | None:
        """The first closed instant in ``(start, end)``, or None if it is allowed throughout."""
        for day in _days(start.astimezone(self.tz).date()):
            edges = self._edges(day)
            if edges and edges[0] >= end:
                return None
            for edge in edges:
                if start < edge < end and not self.is_allowed(edge):
                    return edge
        return None

    def _edges(self, day: date) -> list[datetime]:
        """Every instant on ``day`` where allowed-ness can change, sorted, in UTC.

        Allowed-ness only changes where the wall clock reaches a window start or end, at
        midnight (weekday and holidays change), or at a DST jump. A wall time in the repeated
        hour has two instants (fold 0 and 1); one in the skipped hour has none, and there the
        jump itself is the edge: a window from 02:30 opens at 03:00 on the spring-forward day.
        """
        midnight = self._instant(day, time(0), 0)
        next_midnight = self._instant(day + timedelta(days=1), time(0), 0)
        walls = {w.start for w in self.windows} | {w.end for w in self.windows}
        edges = {self._instant(day, wall, fold) for wall in walls for fold in (0, 1)}
        edges |= {midnight, next_midnight}  # weekday and holidays change; also every 24:00 end
        jump = _dst_jump(midnight, next_midnight, self.tz)
        if jump is not None:
            edges.add(jump)
        return sorted(edges)

    def _instant(self, day: date, wall: time, fold: int) -> datetime:
        local = datetime.combine(day, wall, tzinfo=self.tz).replace(fold=fold)
        return local.astimezone(timezone.utc)


def french_holidays(year: int, alsace_moselle: bool = False) -> dict[date, str]:
    """French public holidays of ``year`` with their French names.

    ``alsace_moselle`` adds the two local ones (Good Friday, 26 December); the ``holidays``
    package calls that subdivision "57" (Moselle) or "6AE" (Alsace), both with the same days.
    """
    return dict(_holiday_table(year, alsace_moselle))


@lru_cache(maxsize=64)
def _holiday_table(year: int, alsace_moselle: bool) -> Mapping[date, str]:
    # Cached per year: is_allowed runs on every queued message and holidays is not cheap.
    table = holidays_lib.France(years=year, subdiv="57" if alsace_moselle else None, language="fr")
    return MappingProxyType(dict(table))


def parse_windows(spec: list[str] | list[dict]) -> tuple[Window, ...]:
    """Windows from config: ``"mon-fri 08:00-20:00"`` or ``{"days": .., "from": .., "to": ..}``.

    Days are names (``mon`` .. ``sun``), ranges (``mon-fri``) or comma lists
    (``mon,wed,sat``); ``24:00`` is allowed as an end. Raises ValueError naming the item.
    """
    if not isinstance(spec, (list, tuple)) or not spec:
        raise ValueError("windows: expected a non-empty list")
    return tuple(_parse_item(i, item) for i, item in enumerate(spec))


def _parse_item(index: int, item: str | dict) -> Window:
    where = f"windows[{index}]"
    if isinstance(item, str):
        match = _LINE.fullmatch(item.strip())
        if not match:
            raise ValueError(f"{where}: {item!r} is not 'DAYS HH:MM-HH:MM'")
        days, start, end = match.groups()
    elif isinstance(item, dict):
        if set(item) != {"days", "from", "to"}:
            raise ValueError(f"{where}: expected keys days, from, to; got {sorted(item)}")
        days, start, end = (str(item[k]) for k in ("days", "from", "to"))
    else:
        raise ValueError(f"{where}: expected a string or a mapping, got {type(item).__name__}")
    try:
        return Window(_parse_days(days), _parse_time(start, end=False), _parse_time(end, end=True))
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from None


def _parse_days(text: str) -> frozenset[int]:
    days: set[int] = set()
    for part in text.lower().split(","):
        first, _, last = part.partition("-")
        a, b = _day(first), _day(last or first)
        days.update((a + i) % 7 for i in range((b - a) % 7 + 1))  # "fri-mon" wraps the week
    return frozenset(days)


def _day(name: str) -> int:
    if name.strip() not in _DAYS:
        raise ValueError(f"unknown day {name!r} (use {', '.join(_DAYS)})")
    return _DAYS.index(name.strip())


def _parse_time(text: str, end: bool) -> time:
    match = _TIME.fullmatch(text.strip())
    hour, minute = (int(g) for g in match.groups()) if match else (-1, -1)
    if end and (hour, minute) == (24, 0):
        return time(0)  # Window reads an end of 00:00 as 24:00
    if not (0 <= hour <= 23 and 0 <= minute <= 59):
        last = "24:00" if end else "23:59"
        raise ValueError(f"bad time {text!r} (expected HH:MM from 00:00 to {last})")
    return time(hour, minute)


def _aware(when: datetime) -> datetime:
    if when.tzinfo is None or when.utcoffset() is None:
        raise ValueError(f"naive datetime {when.isoformat()}: pass an aware datetime")
    return when


def _days(first: date) -> Iterator[date]:
    return (first + timedelta(days=n) for n in range(SEARCH_DAYS + 1))


def _dst_jump(lo: datetime, hi: datetime, tz: ZoneInfo) -> datetime | None:
    """The instant in ``[lo, hi)`` where the UTC offset changes, to the second (one at most)."""
    before = lo.astimezone(tz).utcoffset()
    if hi.astimezone(tz).utcoffset() == before:
        return None
    low, high = int(lo.timestamp()), int(hi.timestamp())  # offset(low) == before != offset(high)
    while high - low > 1:
        mid = (low + high) // 2
        if datetime.fromtimestamp(mid, tz).utcoffset() == before:
            low = mid
        else:
            high = mid
    return datetime.fromtimestamp(high, timezone.utc)
