"""Encoding rules shared by every backend: date-times, numbers and parameter text.

DearDiary writes naive date-times (``YYYY-MM-DDTHH:MM:SS`` with an optional fraction of one to
three digits, trailing zeros dropped) and reads at most three fractional digits, with no time
zone suffix. It refuses ``NaN`` and infinities, and parameter values must be non-empty text.
These helpers enforce those rules before anything is sent or stored.
"""

from __future__ import annotations

import math
import re
from datetime import datetime, timedelta, timezone
from typing import Any

__all__ = [
    "check_finite",
    "check_key",
    "format_datetime",
    "parameter_text",
    "parse_datetime",
    "to_server_clock",
]

_FRACTION = re.compile(r"\.(\d{1,6})")


def format_datetime(value: datetime) -> str:
    """Write a date-time the way the server reads it: naive, millisecond precision.

    Args:
        value: A naive date-time, already in the server's convention. An aware one must be
            converted first (see :func:`to_server_clock`).

    Returns:
        ``YYYY-MM-DDTHH:MM:SS.sss``.

    Raises:
        ValueError: ``value`` carries a time zone.
    """
    if value.tzinfo is not None:
        msg = (
            f"date-time {value.isoformat()} carries a time zone; the server stores naive "
            "values: convert it with to_server_clock() or drop the zone"
        )
        raise ValueError(msg)
    return value.isoformat(timespec="milliseconds")


def parse_datetime(text: str) -> datetime:
    """Read a date-time written by the server (``.5``, ``.12`` and ``.207`` fractions alike).

    Args:
        text: The wire text.

    Returns:
        A naive date-time (a suffix, if a newer server wrote one, is converted to UTC and dropped).
    """
    # Python 3.10 reads only 3- or 6-digit fractions: pad what the server trimmed.
    padded = _FRACTION.sub(lambda m: "." + m.group(1).ljust(6, "0"), text, count=1)
    if padded.endswith("Z"):
        padded = padded[:-1] + "+00:00"
    value = datetime.fromisoformat(padded)
    if value.tzinfo is not None:
        value = value.astimezone(timezone.utc).replace(tzinfo=None)
    return value


def to_server_clock(value: datetime, server_utc_offset: timedelta) -> datetime:
    """Convert a date-time to the server's naive local convention.

    Args:
        value: An aware date-time (converted), or a naive one (returned as it is: it is taken to
            be in the server's convention already).
        server_utc_offset: The server's local offset from UTC.

    Returns:
        A naive date-time.
    """
    if value.tzinfo is None:
        return value
    return (value.astimezone(timezone.utc) + server_utc_offset).replace(tzinfo=None)


def check_finite(key: str, value: Any) -> float:
    """Return a metric value as a finite float.

    Args:
        key: The metric key, for the error message.
        value: A real number (``bool`` is refused: it is almost always a mistake).

    Returns:
        The value as ``float``.

    Raises:
        TypeError: The value is not a real number.
        ValueError: The value is NaN or infinite; DearDiary cannot store it.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        try:
            number = float(value)
        except (TypeError, ValueError):
            msg = f"metric {key!r}: value {value!r} is not a real number"
            raise TypeError(msg) from None
        if isinstance(value, (bool, str, bytes)):
            msg = f"metric {key!r}: value {value!r} is not a real number"
            raise TypeError(msg)
    else:
        try:
            number = float(value)
        except OverflowError:
            msg = f"metric {key!r}: value {value!r} is too large for a 64-bit float"
            raise ValueError(msg) from None
    if not math.isfinite(number):
        msg = (
            f"metric {key!r}: value {number} is not finite; DearDiary stores only finite "
            "numbers: skip the point or replace it before logging"
        )
        raise ValueError(msg)
    return number


def check_key(kind: str, key: Any) -> str:
    """Return a parameter or metric key after checking it is non-empty text.

    Args:
        kind: ``"metric"`` or ``"parameter"``, for the message.
        key: The key.

    Returns:
        The key.

    Raises:
        TypeError: The key is not a string.
        ValueError: The key is empty.
    """
    if not isinstance(key, str):
        msg = f"{kind} key {key!r} is a {type(key).__name__}; keys must be strings"
        raise TypeError(msg)
    if not key:
        msg = f"{kind} key is empty; DearDiary refuses empty keys"
        raise ValueError(msg)
    return key


def parameter_text(key: str, value: Any) -> str:
    """Turn a parameter value into the non-empty text DearDiary stores.

    ``str`` values are kept; ``bool`` becomes ``"true"``/``"false"``; ``int`` and ``float`` use
    their shortest round-tripping form (``repr``), so ``0.1`` is ``"0.1"`` and ``1e-05`` stays
    exact.

    Args:
        key: The parameter key, for the error message.
        value: ``str``, ``int``, ``float`` or ``bool``.

    Returns:
        The text.

    Raises:
        TypeError: Another type was given.
        ValueError: The text would be empty.
    """
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if not isinstance(value, str):
        msg = (
            f"parameter {key!r}: value of type {type(value).__name__} is not supported; "
            "pass str, int, float or bool (convert other objects with str())"
        )
        raise TypeError(msg)
    if not value:
        msg = f"parameter {key!r}: value is empty; DearDiary stores only non-empty values"
        raise ValueError(msg)
    return value
