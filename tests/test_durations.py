"""Go/Litestream durations and RFC 3339 timestamps."""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from replicator.durations import format_duration, format_timestamp, parse_duration, parse_timestamp

BASE = int(dt.datetime(2026, 11, 20, 10, 0, 0, tzinfo=dt.timezone.utc).timestamp()) * 1_000_000_000


@pytest.mark.parametrize("text, seconds", [
    ("720h", 720 * 3600.0),
    ("24h", 86400.0),
    ("1h30m", 5400.0),
    ("1m30s", 90.0),
    ("250ms", 0.25),
    ("1.5s", 1.5),
    (".5s", 0.5),
    ("1s", 1.0),
    ("100us", 1e-4),
    ("100µs", 1e-4),
    ("1500ns", 1.5e-6),
    ("1d", 86400.0),
    ("0", 0.0),
    (" 10s ", 10.0),
    (10, 10.0),
    (2.5, 2.5),
])
def test_parse_duration(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["7 days", "", "h", "10", "1.5", "1h 30m", "-1s", "1y", "s1", "1hh",
                                  True, -1, "1e3s"])
def test_bad_durations(text):
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 10_000), st.integers(0, 59), st.integers(0, 59), st.integers(0, 999))
def test_duration_sums_its_parts(h, m, s, ms):
    assert parse_duration(f"{h}h{m}m{s}s{ms}ms") == pytest.approx(h * 3600 + m * 60 + s + ms / 1000)


@pytest.mark.parametrize("seconds", [720 * 3600.0, 3600.0, 1.0, 90.0, 1.5, 0.25, 0.001])
def test_format_duration_round_trips(seconds):
    assert parse_duration(format_duration(seconds)) == pytest.approx(seconds)


def test_format_duration_examples():
    assert format_duration(720 * 3600) == "720h"
    assert format_duration(1.5) == "1.5s"
    assert format_duration(0.25) == "250ms"


@pytest.mark.parametrize("text, ns", [
    ("2026-11-20T10:00:00Z", BASE),
    ("2026-11-20T10:00:00.250Z", BASE + 250_000_000),
    ("2026-11-20T10:00:00.123456789Z", BASE + 123_456_789),
    ("2026-11-20T10:00:00.5z", BASE + 500_000_000),
    ("2026-11-20T10:00:00", BASE),  # no offset: UTC
    ("2026-11-20T10:00:00.250", BASE + 250_000_000),
    ("2026-11-20 10:00:00Z", BASE),
    ("2026-11-20t10:00:00Z", BASE),
    ("2026-11-20T12:00:00+02:00", BASE),
    ("2026-11-20T12:00:00.250+02:00", BASE + 250_000_000),
    ("2026-11-20T12:00:00+0200", BASE),
    ("2026-11-20T08:30:00-01:30", BASE),
    ("2026-11-20T10:00:00+00:00", BASE),
    ("  2026-11-20T10:00:00Z  ", BASE),
])
def test_parse_timestamp(text, ns):
    assert parse_timestamp(text) == ns


@pytest.mark.parametrize("text", ["yesterday", "", "2026-11-20", "2026-11-20T10:00Z", "2026-13-01T00:00:00Z",
                                  "2026-02-30T00:00:00Z", "2026-11-20T25:00:00Z", "2026-11-20T10:00:00.Z",
                                  "2026-11-20T10:00:00.1234567890Z", "2026-11-20T10:00:00+2:00",
                                  "1763632800"])
def test_bad_timestamps(text):
    with pytest.raises(ValueError, match="timestamp"):
        parse_timestamp(text)


def test_format_timestamp():
    assert format_timestamp(BASE + 250_999_999) == "2026-11-20T10:00:00.250Z"
    assert format_timestamp(0) == "1970-01-01T00:00:00.000Z"


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 2**62))
def test_formatted_timestamps_parse_back_to_the_millisecond(ns):
    assert parse_timestamp(format_timestamp(ns)) == ns - ns % 1_000_000


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_numbers_are_not_durations(value):
    with pytest.raises(ValueError):
        parse_duration(value)
