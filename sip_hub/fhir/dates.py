"""FHIR date, dateTime and instant values as ranges of UTC microseconds.

A partial date stands for the whole period it names ("2024-05" is all of May), which is what
date search compares against. Values without a zone are read as UTC so that stored values
and search values use one convention.
"""

from __future__ import annotations

import calendar
import re
from datetime import datetime, timedelta, timezone

_RE = re.compile(
    r"^(?P<y>\d{4})(?:-(?P<m>\d{2})(?:-(?P<d>\d{2})"
    r"(?:T(?P<H>\d{2}):(?P<M>\d{2})(?::(?P<S>\d{2})(?P<f>\.\d+)?)?"
    r"(?P<tz>Z|[+-]\d{2}:\d{2})?)?)?)?$")
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_US = timedelta(microseconds=1)


def to_us(dt: datetime) -> int:
    return (dt - _EPOCH) // _US


def from_us(us: int) -> datetime:
    return _EPOCH + timedelta(microseconds=us)


_DAY_US = 86_400_000_000
_EPOCH_NAIVE = datetime(1970, 1, 1)
# The instants a datetime can hold: a range is cut to them, so that ``from_us`` takes any of
# its ends (9999-12-31 with a zone west of UTC ends after them; 0001-01-01 east, before).
MIN_US = to_us(datetime.min.replace(tzinfo=timezone.utc))
MAX_US = to_us(datetime.max.replace(tzinfo=timezone.utc))


def parse_range(value: str) -> tuple[int, int]:
    """The [low, high] range in UTC microseconds a FHIR date/dateTime/instant covers, within
    [MIN_US, MAX_US]: reckoned in integers, so that the last day of year 9999 (a common "no
    end" value) or a zone at either end of the calendar is a range like any other.

    Raises ValueError for anything that is not one.
    """
    low, high, _zoned = parse_zoned(value)
    return low, high


def parse_zoned(value: str) -> tuple[int, int, bool]:
    """``parse_range``, and whether the value names its zone (a time without one is read as
    UTC, but may be up to 14 hours off it)."""
    m = _RE.match(value.strip())
    if not m:
        raise ValueError(f"'{value}' is not a FHIR date or dateTime")
    y = int(m["y"])
    offset = 0
    if m["tz"] and m["tz"] != "Z":
        hours, minutes = int(m["tz"][1:3]), int(m["tz"][4:6])
        if minutes > 59 or hours * 60 + minutes > 14 * 60:  # FHIR's offsets: up to 14:00
            raise ValueError(f"'{value}' has no UTC offset FHIR allows")
        offset = (1 if m["tz"][0] == "+" else -1) * (hours * 60 + minutes) * 60_000_000
    if m["m"] is None:
        start, span = datetime(y, 1, 1), (366 if calendar.isleap(y) else 365) * _DAY_US
    elif m["d"] is None:
        mo = int(m["m"])
        start, span = datetime(y, mo, 1), calendar.monthrange(y, mo)[1] * _DAY_US
    elif m["H"] is None:
        start, span = datetime(y, int(m["m"]), int(m["d"])), _DAY_US
    else:
        frac = m["f"][1:7].ljust(6, "0") if m["f"] else "0"
        # FHIR's dateTime allows a leap second (:60), which datetime refuses (a stored one
        # made every operation reading the time a 5xx): it is read as the second before.
        start = datetime(y, int(m["m"]), int(m["d"]), int(m["H"]), int(m["M"]),
                         min(int(m["S"] or 0), 59), int(frac))
        span = 60_000_000 if m["S"] is None else 1_000_000 if not m["f"] else 1
    low = (start - _EPOCH_NAIVE) // _US - offset
    return _within(low), _within(low + span - 1), m["tz"] is not None


def _within(us: int) -> int:
    return MIN_US if us < MIN_US else MAX_US if us > MAX_US else us


def format_instant(dt: datetime) -> str:
    """An R4 instant in UTC with microseconds."""
    # isoformat is several times faster than strftime; in UTC it ends in "+00:00".
    return dt.astimezone(timezone.utc).isoformat(timespec="microseconds")[:-6] + "Z"


def now_utc() -> datetime:
    return datetime.now(timezone.utc)
