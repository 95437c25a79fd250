"""The bad-value policy: what the writer does with values DearDiary cannot store as given.

Every decision is made on the calling thread, when ``log_metrics`` or ``log_parameters`` is
called, so the background delivery only ever sees clean values and a problem is reported next to
the line that caused it. Each kind of problem is reported once per key with a
:class:`DearDiaryValueWarning` (a ``UserWarning``; filter it with the ``warnings`` module), so a
training loop that logs a bad value at every step warns once, not a million times.

Metric values (DearDiary stores finite 64-bit floats only):

============================================  ===================================================
value                                         what is stored
============================================  ===================================================
``float``, ``int``                            the value as a float, silently
``bool``                                      ``1.0`` or ``0.0``, warned (often a mistake)
numpy scalar (``np.float32(0.5)``, ...)       the value as a float, silently
0-d or one-element tensor / array             ``.item()`` as a float, silently (detached; a GPU
                                              tensor is copied to the host)
``decimal.Decimal``, ``fractions.Fraction``   the value as a float, silently
NaN, +inf, -inf (in any of the forms above)   nothing: the point is dropped, warned
``None``                                      nothing: dropped, warned
tensor or array of several elements           nothing: refused, warned (log one key per element)
anything else (str, list, dict, complex, ...) nothing: dropped, warned ("non-numeric")
============================================  ===================================================

Parameter values (DearDiary stores non-empty text):

============================================  ===================================================
value                                         what is stored
============================================  ===================================================
non-empty ``str``                             the text
``bool``                                      ``"true"`` / ``"false"`` (as the client writes it)
``int``, ``float``                            the shortest exact text (``0.1`` -> ``"0.1"``)
numpy scalar, one-element tensor              its ``.item()``, then as above
``None``                                      ``"None"``, silently (a common, meaningful default)
``""`` (empty text)                           ``"<empty>"``, warned
anything else (list, Path, enum, array, ...)  ``str(value)``, silently
text longer than :data:`MAX_PARAMETER_CHARS`  cut to that length, ending with ``"...[truncated,
                                              N chars]"`` so the stored text says it was cut,
                                              warned
============================================  ===================================================

Keys (metrics and parameters): a non-string key is converted with ``str()`` and warned; an empty
key (DearDiary refuses them) drops the value, warned.

Steps: ``None`` (the key's next step), an ``int`` or anything integral (numpy integer, 0-d
tensor, ``3.0``) is accepted; anything else raises ``TypeError`` at the call, because a wrong
step would silently reorder a series.
"""

from __future__ import annotations

import decimal
import math
import numbers
import operator
import warnings
from typing import Any

from deardiary_lightning.wire import parameter_text

__all__ = [
    "EMPTY_PLACEHOLDER",
    "MAX_PARAMETER_CHARS",
    "DearDiaryValueWarning",
    "ValuePolicy",
]

#: Longest parameter text stored; longer values are cut and marked.
MAX_PARAMETER_CHARS = 8192

#: What an empty parameter value is stored as (DearDiary refuses empty text).
EMPTY_PLACEHOLDER = "<empty>"

_TRUNCATION_MARK = "...[truncated, {n} chars]"


class DearDiaryValueWarning(UserWarning):
    """A logged value was changed or dropped because DearDiary cannot store it as given."""


class ValuePolicy:
    """Applies the bad-value policy and remembers which warnings were already given.

    One instance belongs to one run writer and is used from the calling thread(s) only.

    Args:
        stacklevel: ``stacklevel`` for :func:`warnings.warn`, counted from the policy method, so
            that the warning points at the user's logging call.
    """

    def __init__(self, stacklevel: int = 4) -> None:
        self._warned: set[tuple[str, str, str]] = set()
        self._stacklevel = stacklevel

    def _warn(self, kind: str, key: str, reason: str, message: str) -> None:
        """Warn once per (kind, key, reason)."""
        mark = (kind, key, reason)
        if mark in self._warned:
            return
        self._warned.add(mark)
        warnings.warn(message, DearDiaryValueWarning, stacklevel=self._stacklevel)

    # -- keys ---------------------------------------------------------------------------------

    def key(self, kind: str, key: Any) -> str | None:
        """Return a usable key, or ``None`` when the value must be dropped.

        Args:
            kind: ``"metric"`` or ``"parameter"``, for messages.
            key: The key as the user gave it.

        Returns:
            The key as text, or ``None`` for an empty key.
        """
        if isinstance(key, str):
            text = key
        else:
            text = str(key)
            self._warn(
                kind,
                text,
                "key-type",
                f"{kind} key {key!r} is a {type(key).__name__}; it is stored as the text "
                f"{text!r}. Pass string keys to choose the name yourself.",
            )
        if not text:
            self._warn(
                kind,
                "",
                "key-empty",
                f"{kind} key is empty; DearDiary refuses empty keys, so the value is dropped. "
                "Give the value a name.",
            )
            return None
        return text

    # -- metrics ------------------------------------------------------------------------------

    def metric(self, key: Any, value: Any) -> tuple[str, float] | None:
        """Return a clean ``(key, value)`` metric item, or ``None`` if it is dropped.

        This is the slow path: the writer handles finite ``float`` values with ``str`` keys
        inline and calls this for everything else.
        """
        name = self.key("metric", key)
        if name is None:
            return None
        number = self._metric_number(name, value)
        if number is None:
            return None
        if not math.isfinite(number):
            self._warn(
                "metric",
                name,
                "non-finite",
                f"metric {name!r}: value {number} is not finite; DearDiary stores only finite "
                "numbers, so this point (and later non-finite points of this key) is dropped. "
                "Check the training for divergence, or log a finite stand-in.",
            )
            return None
        return name, number

    def _metric_number(self, name: str, value: Any) -> float | None:
        """Convert a metric value to float, or warn and return ``None``."""
        if isinstance(value, bool):
            self._warn(
                "metric",
                name,
                "bool",
                f"metric {name!r}: value {value!r} is a bool; it is stored as "
                f"{float(value)}. Log a number to silence this warning.",
            )
            return float(value)
        if isinstance(value, (numbers.Real, decimal.Decimal)):
            try:
                return float(value)
            except OverflowError:
                return math.inf
        if value is None:
            self._warn(
                "metric",
                name,
                "none",
                f"metric {name!r}: value is None; the point is dropped. Log a number, or skip "
                "the key when there is no value.",
            )
            return None
        item = _scalar_item(value)
        if item is _MANY:
            size = _size(value)
            self._warn(
                "metric",
                name,
                "many",
                f"metric {name!r}: a {type(value).__name__} of {size} elements is not one "
                "number; it is refused. Log one key per element, or reduce it (mean, norm).",
            )
            return None
        if item is not _NOT_ARRAY:
            return self._metric_number(name, item)
        self._warn(
            "metric",
            name,
            "non-numeric",
            f"metric {name!r}: value of type {type(value).__name__} is not a number; it is "
            "dropped. Log text as a parameter, or convert the value to float first.",
        )
        return None

    # -- parameters ---------------------------------------------------------------------------

    def parameter(self, key: Any, value: Any) -> tuple[str, str] | None:
        """Return a clean ``(key, text)`` parameter, or ``None`` if it is dropped."""
        name = self.key("parameter", key)
        if name is None:
            return None
        text = self._parameter_text(name, value)
        if not text:
            self._warn(
                "parameter",
                name,
                "empty",
                f"parameter {name!r}: the value is empty text; DearDiary refuses empty values, "
                f"so {EMPTY_PLACEHOLDER!r} is stored instead.",
            )
            return name, EMPTY_PLACEHOLDER
        if len(text) > MAX_PARAMETER_CHARS:
            mark = _TRUNCATION_MARK.format(n=len(text))
            self._warn(
                "parameter",
                name,
                "long",
                f"parameter {name!r}: the value has {len(text)} characters; it is cut to "
                f"{MAX_PARAMETER_CHARS} and marked. Store large texts as a resource instead.",
            )
            return name, text[: MAX_PARAMETER_CHARS - len(mark)] + mark
        return name, text

    def _parameter_text(self, name: str, value: Any) -> str:
        """Turn any parameter value into text (possibly empty; the caller handles that)."""
        if value is None:
            return "None"
        if isinstance(value, str):
            return value
        if isinstance(value, (bool, int, float)):
            return parameter_text(name, value)
        item = _scalar_item(value)
        if item is not _MANY and item is not _NOT_ARRAY:
            return self._parameter_text(name, item)
        return str(value)

    # -- steps --------------------------------------------------------------------------------

    @staticmethod
    def step(step: Any) -> int:
        """Return a step as ``int``.

        Raises:
            TypeError: The step is not integral.
        """
        if isinstance(step, bool):
            msg = f"step {step!r} is a bool; pass an integer step"
            raise TypeError(msg)
        try:
            return operator.index(step)
        except TypeError:
            pass
        item = _scalar_item(step)
        if item is not _MANY and item is not _NOT_ARRAY:
            step = item
        if isinstance(step, numbers.Real) and not isinstance(step, bool):
            as_float = float(step)
            if math.isfinite(as_float) and as_float == int(as_float):
                return int(as_float)
        msg = f"step {step!r} is not an integer; pass an int (or None for the key's next step)"
        raise TypeError(msg)


class _Marker:
    """A sentinel with a readable repr."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


_MANY = _Marker("<several elements>")
_NOT_ARRAY = _Marker("<not an array>")


def _size(value: Any) -> int:
    """Return the element count of a tensor or array (``-1`` if unknown)."""
    numel = getattr(value, "numel", None)
    if callable(numel):
        return int(numel())
    size = getattr(value, "size", None)
    if isinstance(size, int):
        return size
    return -1


def _scalar_item(value: Any) -> Any:
    """Return the Python scalar held by a one-element tensor, array or numpy scalar.

    Returns:
        The scalar; ``_MANY`` for several elements; ``_NOT_ARRAY`` when ``value`` has no
        ``item()`` method.
    """
    item = getattr(value, "item", None)
    if not callable(item):
        return _NOT_ARRAY
    if _size(value) not in (1, -1):
        return _MANY
    detach = getattr(value, "detach", None)
    if callable(detach):
        value = detach()
        item = value.item
    try:
        return item()
    except (TypeError, ValueError, RuntimeError):
        return _MANY
