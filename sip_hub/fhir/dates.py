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


def parse_range(value: str) -> tuple[int, int]:
    """The [low, high] range in UTC microseconds a FHIR date/dateTime/instant covers.

    Raises ValueError for anything that is not one.
    """
    m = _RE.match(value.strip())
    if not m:
        raise ValueError(f"'{value}' is not a FHIR date or dateTime")
    y = int(m["y"])
    tz = timezone.utc
    if m["tz"] and m["tz"] != "Z":
        sign = 1 if m["tz"][0] == "+" else -1
        hh, mm = int(m["tz"][1:3]), int(m["tz"][4:6])
        tz = timezone(sign * timedelta(hours=hh, minutes=mm))
    if m["m"] is None:
        low, high = datetime(y, 1, 1, tzinfo=tz), datetime(y + 1, 1, 1, tzinfo=tz)
    elif m["d"] is None:
        mo = int(m["m"])
        low = datetime(y, mo, 1, tzinfo=tz)
        high = low + timedelta(days=calendar.monthrange(y, mo)[1])
    elif m["H"] is None:
        low = datetime(y, int(m["m"]), int(m["d"]), tzinfo=tz)
        high = low + timedelta(days=1)
    else:
        base = datetime(y, int(m["m"]), int(m["d"]), int(m["H"]), int(m["M"]), tzinfo=tz)
        if m["S"] is None:
            low, high = base, base + timedelta(minutes=1)
        else:
            low = base.replace(second=int(m["S"]))
            if m["f"]:
                frac = m["f"][1:7].ljust(6, "0")
                low = low.replace(microsecond=int(frac))
                high = low + _US
            else:
                high = low + timedelta(seconds=1)
    return to_us(low), to_us(high) - 1


def format_instant(dt: datetime) -> str:
    """An R4 instant in UTC with microseconds."""
    # isoformat is several times faster than strftime; in UTC it ends in "+00:00".
    return dt.astimezone(timezone.utc).isoformat(timespec="microseconds")[:-6] + "Z"


def now_utc() -> datetime:
    return datetime.now(timezone.utc)
