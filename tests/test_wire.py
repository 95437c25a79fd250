"""Wire rules shared by every backend: date-times, numbers and parameter text."""

from __future__ import annotations

import math
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from fractions import Fraction

import pytest

from deardiary_lightning.wire import (
    check_finite,
    check_key,
    format_datetime,
    parameter_text,
    parse_datetime,
    to_server_clock,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-06-23T13:14:06.207", datetime(2026, 6, 23, 13, 14, 6, 207000)),
        ("2026-06-23T13:14:06.12", datetime(2026, 6, 23, 13, 14, 6, 120000)),
        ("2026-06-23T13:14:06.5", datetime(2026, 6, 23, 13, 14, 6, 500000)),
        ("2026-06-23T13:14:06", datetime(2026, 6, 23, 13, 14, 6)),
        ("2026-06-23T13:14:06Z", datetime(2026, 6, 23, 13, 14, 6)),
        ("2026-06-23T15:14:06+02:00", datetime(2026, 6, 23, 13, 14, 6)),
    ],
)
def test_parse_every_form_the_server_writes(text: str, expected: datetime) -> None:
    assert parse_datetime(text) == expected


def test_format_uses_three_fraction_digits_and_no_zone() -> None:
    assert format_datetime(datetime(2026, 1, 2, 3, 4, 5, 678901)) == "2026-01-02T03:04:05.678"
    assert format_datetime(datetime(2026, 1, 2, 3, 4, 5)) == "2026-01-02T03:04:05.000"
    with pytest.raises(ValueError, match="to_server_clock"):
        format_datetime(datetime(2026, 1, 2, tzinfo=timezone.utc))


def test_to_server_clock() -> None:
    aware = datetime(2026, 1, 1, 12, 0, tzinfo=timezone(timedelta(hours=2)))
    assert to_server_clock(aware, timedelta(hours=-5)) == datetime(2026, 1, 1, 5, 0)
    naive = datetime(2026, 1, 1, 12, 0)
    assert to_server_clock(naive, timedelta(hours=3)) is naive


def test_check_finite() -> None:
    assert check_finite("k", 3) == 3.0
    assert check_finite("k", Decimal("0.5")) == 0.5
    assert check_finite("k", Fraction(1, 4)) == 0.25
    for bad in (math.nan, math.inf, -math.inf):
        with pytest.raises(ValueError, match="'k'"):
            check_finite("k", bad)
    for wrong in ("1.0", b"1", None, True, [1.0]):
        with pytest.raises(TypeError):
            check_finite("k", wrong)


def test_check_key() -> None:
    assert check_key("metric", "loss") == "loss"
    with pytest.raises(ValueError, match="empty"):
        check_key("metric", "")
    with pytest.raises(TypeError, match="strings"):
        check_key("metric", 1)


def test_parameter_text() -> None:
    assert parameter_text("k", "adam") == "adam"
    assert parameter_text("k", 3) == "3"
    assert parameter_text("k", 0.1) == "0.1"
    assert parameter_text("k", 1e-5) == "1e-05"
    assert parameter_text("k", True) == "true"
    with pytest.raises(ValueError, match="empty"):
        parameter_text("k", "")
    with pytest.raises(TypeError, match="str, int, float or bool"):
        parameter_text("k", [1])


def test_huge_integers_are_refused_as_values() -> None:
    with pytest.raises(ValueError, match="too large"):
        check_finite("k", 10**400)
