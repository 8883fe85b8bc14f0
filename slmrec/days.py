"""Days: the one home for the daily partitions' arithmetic (UTC, unix seconds: the store's ts unit).

    day_bounds("1998-03-01")        # (888710400, 888796800): [start, end)
    day_name(888710400)             # "1998-03-01"
    days_ending("1998-03-07", 7)    # ["1998-03-01", ..., "1998-03-07"], oldest first
"""

from __future__ import annotations

import datetime as dt

DAY = 86_400


def day_bounds(day: str) -> tuple[int, int]:
    """'YYYY-MM-DD' -> [start, end) in unix seconds, UTC."""
    try:
        start = dt.datetime.strptime(day, "%Y-%m-%d").replace(tzinfo=dt.timezone.utc)
    except ValueError as err:
        raise ValueError(f"day must be YYYY-MM-DD, got {day!r}") from err
    return int(start.timestamp()), int(start.timestamp()) + DAY


def day_name(ts: int | float) -> str:
    """The UTC day holding unix time `ts`."""
    return dt.datetime.fromtimestamp(int(ts), dt.timezone.utc).strftime("%Y-%m-%d")


def days_ending(day: str, n: int) -> list[str]:
    """The `n` days ending with `day`, oldest first."""
    if n < 1:
        raise ValueError(f"a window holds at least one day, got {n}")
    start, _ = day_bounds(day)
    return [day_name(start - i * DAY) for i in range(n - 1, -1, -1)]


def shift_day(day: str, days: int) -> str:
    """`day` moved by `days` (negative: earlier)."""
    return day_name(day_bounds(day)[0] + days * DAY)
