"""The ``date=`` option: ``YYYY-MM-DD hh:ii:ss`` in the bridge's time zone.

Seconds may be left out (``2026-12-01 09:00``). A local time that does not exist (the hour
skipped when clocks go forward) is moved forward by the gap: 02:30 on the last Sunday of
March in Paris means 03:30 CEST. A local time that happens twice (clocks going back) is
the first of the two. A date in the past means "now"; one more than ``max_ahead`` away is
status 115, as is any malformed value.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

from bridge.errors import StatusError

DEFAULT_MAX_AHEAD = timedelta(days=365)
_FORMAT = re.compile(r"(\d{4})-(\d{2})-(\d{2})[ T](\d{2}):(\d{2})(?::(\d{2}))?")


def parse_date(
    value: str, tz: ZoneInfo, now: datetime, max_ahead: timedelta = DEFAULT_MAX_AHEAD
) -> datetime | None:
    """The UTC instant for ``value`` read in ``tz``; None when it is not in the future."""
    match = _FORMAT.fullmatch(value.strip())
    if not match:
        raise StatusError(115, note=f"date={value[:30]} (expected YYYY-MM-DD hh:ii:ss)")
    year, month, day, hour, minute, second = (int(g or 0) for g in match.groups())
    try:
        local = datetime(year, month, day, hour, minute, second, tzinfo=tz, fold=0)
    except ValueError:
        raise StatusError(115, note=f"date={value[:30]} does not exist") from None
    # With fold=0 a skipped time takes the offset from before the change, which lands
    # one gap later once converted: the "move forward" rule above.
    instant = local.astimezone(timezone.utc)
    if instant <= now:
        return None
    if instant - now > max_ahead:
        raise StatusError(115, note=f"date={value[:30]} is too far ahead")
    return instant
