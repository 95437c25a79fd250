"""Wire rules of the DearDiary server: error answers, JSON bodies, date-times and numbers.

The server reads JSON bodies with fixed type rules (section 1.3 of the REST contract), writes
date-times as naive text with a trimmed fraction (section 1.5) and writes floats the way Julia
prints them. Everything here is independent of the HTTP plumbing and of the database.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from datetime import datetime
from typing import Any

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1

JSON_CONTENT_TYPE = "application/json; charset=utf-8"

_DATETIME_IN = re.compile(r"^(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,3}))?$")


class ApiError(Exception):
    """An answer with the server's error envelope ``{"code", "message"}``."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message


class GenericError(Exception):
    """An answer with the framework's own body (``{"message": "<status>: <reason>"}``)."""

    def __init__(self, status: int, detail: str = "") -> None:
        super().__init__(f"{status} {detail}".strip())
        self.status = status


def bad_request(detail: str = "") -> GenericError:
    """The generic 400 the framework sends when a body cannot be read."""
    return GenericError(400, detail)


def crash(detail: str = "") -> GenericError:
    """The generic 500 the framework sends for an uncaught exception."""
    return GenericError(500, detail)


def not_found(message: str = "Not Found") -> ApiError:
    """404 ``NOT_FOUND``."""
    return ApiError(404, "NOT_FOUND", message)


def unprocessable(message: str) -> ApiError:
    """422 ``INVALID_PAYLOAD``."""
    return ApiError(422, "INVALID_PAYLOAD", message)


def server_error(message: str) -> ApiError:
    """500 ``SERVER_ERROR`` (an enveloped database or delete failure)."""
    return ApiError(500, "SERVER_ERROR", message)


def conflict(message: str) -> ApiError:
    """409 ``CONFLICT``."""
    return ApiError(409, "CONFLICT", message)


# --- date-times -----------------------------------------------------------------------------


def now_text() -> str:
    """The server's local wall clock, stored with millisecond precision."""
    return datetime_to_stored(datetime.now())


def datetime_to_stored(value: datetime) -> str:
    """Store a naive date-time as fixed-width text (sorts like the value)."""
    millis = value.microsecond // 1000
    return value.strftime("%Y-%m-%dT%H:%M:%S") + f".{millis:03d}"


def parse_datetime_input(text: str) -> str:
    """Read a request date-time and return its stored form.

    Args:
        text: ``YYYY-MM-DDTHH:MM:SS`` with zero to three fractional digits, no zone suffix.

    Returns:
        The stored text (three fractional digits).

    Raises:
        GenericError: 400 for any other form or an impossible date.
    """
    match = _DATETIME_IN.match(text)
    if match is None:
        raise bad_request("unreadable date-time")

    year, month, day, hour, minute, second = (int(part) for part in match.groups()[:6])
    fraction = (match.group(7) or "").ljust(3, "0")
    try:
        value = datetime(year, month, day, hour, minute, second, int(fraction) * 1000)
    except ValueError as exc:
        raise bad_request("impossible date-time") from exc
    return datetime_to_stored(value)


def format_datetime(stored: str | None) -> str | None:
    """Write a stored date-time the way Julia prints it (fraction trimmed, dropped when zero)."""
    if stored is None:
        return None
    head, _, fraction = stored.partition(".")
    fraction = fraction.rstrip("0")
    return f"{head}.{fraction}" if fraction else head


# --- JSON output ----------------------------------------------------------------------------


def _format_float(value: float) -> str:
    """Shortest round-trip text in Julia's spelling (``1.0e-5``, ``2.5e16``, ``3.0``)."""
    if not math.isfinite(value):
        # The response writer refuses non-finite numbers (section 1.6).
        raise crash("non-finite float in a response")

    text = repr(value)
    if "e" not in text:
        return text

    mantissa, exponent = text.split("e")
    if "." not in mantissa:
        mantissa += ".0"
    return f"{mantissa}e{int(exponent)}"


def _encode(value: Any, out: list[str]) -> None:
    """Append the JSON text of ``value`` to ``out``."""
    if value is None:
        out.append("null")
    elif value is True:
        out.append("true")
    elif value is False:
        out.append("false")
    elif isinstance(value, int):
        out.append(str(value))
    elif isinstance(value, float):
        out.append(_format_float(value))
    elif isinstance(value, str):
        out.append(json.dumps(value, ensure_ascii=False))
    elif isinstance(value, dict):
        out.append("{")
        for index, (key, item) in enumerate(value.items()):
            if index:
                out.append(",")
            out.append(json.dumps(str(key), ensure_ascii=False))
            out.append(":")
            _encode(item, out)
        out.append("}")
    elif isinstance(value, (list, tuple)):
        out.append("[")
        for index, item in enumerate(value):
            if index:
                out.append(",")
            _encode(item, out)
        out.append("]")
    else:
        raise TypeError(f"cannot write {type(value).__name__} as JSON")


def dumps(value: Any) -> bytes:
    """Serialise a response body as UTF-8 JSON with Julia-style floats."""
    out: list[str] = []
    _encode(value, out)
    return "".join(out).encode("utf-8")


# --- JSON input -----------------------------------------------------------------------------


def _reject_constant(token: str) -> Any:
    """Refuse ``NaN``/``Infinity``/``-Infinity`` tokens (JSON.jl reads with ``allownan`` off)."""
    raise ValueError(f"{token} is not allowed")


def read_json(raw: bytes) -> Any:
    """Parse a request body; any failure is the generic 400."""
    try:
        text = raw.decode("utf-8")
        return json.loads(text, parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise bad_request("unreadable JSON") from exc


def _as_int(value: Any) -> int:
    """Integer rules: ints, integral floats and booleans; strings never."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        result = value
    elif isinstance(value, float) and math.isfinite(value) and value.is_integer():
        result = int(value)
    else:
        raise bad_request("not an integer")

    if not INT64_MIN <= result <= INT64_MAX:
        raise bad_request("integer out of range")
    return result


def _as_float(value: Any) -> float:
    """Float rules: numbers and booleans; strings never."""
    if isinstance(value, (bool, int, float)):
        try:
            return float(value)
        except OverflowError as exc:
            raise bad_request("number out of range") from exc
    raise bad_request("not a number")


def _as_bool(value: Any) -> bool:
    """Boolean rules: ``true``/``false`` and the integers 0 and 1."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    raise bad_request("not a boolean")


def _as_str(value: Any) -> str:
    """String rules: only JSON strings."""
    if isinstance(value, str):
        return value
    raise bad_request("not a string")


def _coerce(value: Any, kind: str, id_kind: str) -> Any:
    """Convert one present, non-null field value according to its declared type."""
    if kind == "str":
        return _as_str(value)
    if kind == "int":
        return _as_int(value)
    if kind == "float":
        return _as_float(value)
    if kind == "bool":
        return _as_bool(value)
    if kind == "datetime":
        return parse_datetime_input(_as_str(value))
    if kind == "id":
        return _as_int(value) if id_kind == "int" else _as_str(value)
    if kind == "metrics":
        if not isinstance(value, list):
            raise bad_request("metrics must be an array")
        return [read_fields(item, METRIC_ITEM_FIELDS, id_kind) for item in value]
    raise AssertionError(f"unknown field kind {kind}")


Field = tuple[str, str, bool]
"""A payload field: name, kind (``str``, ``int``, ``float``, ``bool``, ``datetime``, ``id``,
``metrics``) and whether it is required."""

METRIC_ITEM_FIELDS: Sequence[Field] = (("key", "str", True), ("value", "float", True))


def read_fields(obj: Any, fields: Sequence[Field], id_kind: str) -> dict[str, Any]:
    """Read a payload object: unknown keys ignored, null means absent, types checked.

    Args:
        obj: The parsed JSON value.
        fields: The payload's declared fields.
        id_kind: ``"int"`` or ``"uuid"``, for fields of kind ``id``.

    Returns:
        Every declared field, ``None`` when absent or null.

    Raises:
        GenericError: 400 when ``obj`` is not an object, a required field is missing or null,
            or a value has the wrong type.
    """
    if not isinstance(obj, dict):
        raise bad_request("body is not an object")

    result: dict[str, Any] = {}
    for name, kind, required in fields:
        value = obj.get(name)
        if value is None:
            if required:
                raise bad_request(f"missing {name}")
            result[name] = None
            continue
        result[name] = _coerce(value, kind, id_kind)
    return result


def parse_body(raw: bytes, fields: Sequence[Field], id_kind: str) -> dict[str, Any]:
    """Parse a JSON request body into its declared fields (see :func:`read_fields`)."""
    if not raw.strip():
        raise bad_request("empty body")
    return read_fields(read_json(raw), fields, id_kind)


_JULIA_INT = re.compile(
    r"(?P<sign>[+-]?)(?:0x(?P<hex>[0-9a-fA-F]+)|0o(?P<oct>[0-7]+)|0b(?P<bin>[01]+)|(?P<dec>[0-9]+))"
)


def try_parse_int(text: str | None) -> int | None:
    """Julia's ``tryparse(Int64, s)``, which the server uses on query and path text.

    Surrounding whitespace and a sign are allowed, and so are the prefixes ``0x``, ``0o`` and
    ``0b`` (``"0x10"`` is 16). Anything else, or a value outside 64 bits, gives ``None``.
    """
    if text is None:
        return None
    match = _JULIA_INT.fullmatch(text.strip())
    if match is None:
        return None

    bases = {"hex": 16, "oct": 8, "bin": 2, "dec": 10}
    digits, base = next((match[name], bases[name]) for name in bases if match[name] is not None)
    value = int(digits, base)
    if match["sign"] == "-":
        value = -value
    return value if INT64_MIN <= value <= INT64_MAX else None
