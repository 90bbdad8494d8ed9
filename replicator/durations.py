"""Go/Litestream-style durations ("720h", "1h30m", "250ms") and RFC 3339 timestamps."""

from __future__ import annotations

import datetime as dt
import re

_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h|d)")


def parse_duration(text: str | int | float) -> float:
    """Seconds from a Go duration string; bare numbers are seconds. Raises ValueError."""
    if isinstance(text, bool):
        raise ValueError(f"not a duration: {text!r}")
    if isinstance(text, (int, float)):
        if text != text or text in (float("inf"), float("-inf")):
            raise ValueError(f"not a duration: {text!r}")
        if text < 0:
            raise ValueError(f"negative duration: {text!r}")
        return float(text)
    s = str(text).strip()
    if s == "0":
        return 0.0
    pos, total = 0, 0.0
    while pos < len(s):
        m = _PART.match(s, pos)
        if not m:
            raise ValueError(f"not a duration: {text!r}")
        total += float(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    if not s:
        raise ValueError(f"not a duration: {text!r}")
    return total


def format_duration(seconds: float) -> str:
    if seconds >= 3600 and seconds % 3600 == 0:
        return f"{int(seconds // 3600)}h"
    if seconds >= 1:
        return f"{seconds:g}s"
    return f"{seconds * 1000:g}ms"


_RFC3339 = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?(Z|z|[+-]\d{2}:?\d{2})$"
)


def parse_timestamp(text: str) -> int:
    """Nanoseconds since the epoch from RFC 3339 (fraction and offset optional; no offset = UTC)."""
    s = text.strip()
    m = _RFC3339.match(s if re.search(r"(Z|z|[+-]\d{2}:?\d{2})$", s) else s + "Z")
    if not m:
        raise ValueError(f"not an RFC 3339 timestamp: {text!r} (e.g. 2026-11-20T10:00:00.250Z)")
    year, month, day, hour, minute, second, frac, tz = m.groups()
    if tz in ("Z", "z"):
        offset = dt.timezone.utc
    else:
        sign = -1 if tz[0] == "-" else 1
        digits = tz[1:].replace(":", "")
        offset = dt.timezone(sign * dt.timedelta(hours=int(digits[:2]), minutes=int(digits[2:])))
    try:
        when = dt.datetime(int(year), int(month), int(day), int(hour), int(minute), int(second), tzinfo=offset)
    except ValueError as err:
        raise ValueError(f"not a valid timestamp: {text!r} ({err})") from None
    nanos = int((frac or "0").ljust(9, "0"))
    return int(when.timestamp()) * 1_000_000_000 + nanos


def format_timestamp(ns: int) -> str:
    """RFC 3339 in UTC with milliseconds, the form users paste back into --timestamp."""
    secs, rem = divmod(ns, 1_000_000_000)
    when = dt.datetime.fromtimestamp(secs, dt.timezone.utc)
    return when.strftime("%Y-%m-%dT%H:%M:%S") + f".{rem // 1_000_000:03d}Z"
