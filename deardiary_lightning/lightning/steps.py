"""Which step each metric point gets, so that no series ever holds two points at one step.

The logger decides a *natural* step for every call (the epoch, the global step, or none) and
:class:`StepPlanner` turns it into the step actually written, key by key:

- without a natural step, a key takes its next step: its last step plus one (0 when new);
- with one, the key takes it, unless the key already has a point at that step or later:
  the very same value at the key's last step is a repeat and is skipped; anything else moves to
  the key's last step plus one.

So a key's steps only ever grow, a repeated call never stores a point twice, and a resumed run
(whose last steps are loaded first with :meth:`StepPlanner.seed`) continues where it stopped.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["StepPlanner"]


class StepPlanner:
    """Assign steps key by key (see the module docstring)."""

    def __init__(self) -> None:
        self._last: dict[str, tuple[int, float | None]] = {}

    def __len__(self) -> int:
        return len(self._last)

    def last_step(self, key: str) -> int | None:
        """Return the last step written for a key, or ``None`` if the key is new."""
        found = self._last.get(key)
        return None if found is None else found[0]

    def seed(self, points: Iterable[tuple[str, int, float]]) -> None:
        """Load the points a run already holds, so new points continue after them.

        Args:
            points: ``(key, step, value)`` of existing points, in any order.
        """
        for key, step, value in points:
            known = self._last.get(key)
            if known is None or step >= known[0]:
                self._last[key] = (step, value)

    def place(self, values: Mapping[str, Any], natural: int | None) -> dict[int, dict[str, Any]]:
        """Give every value its step.

        Args:
            values: Key to value, as the caller logged them (values are passed through).
            natural: The step the caller meant, or ``None`` for each key's next step.

        Returns:
            Step to the values written at that step (usually a single step).
        """
        groups: dict[int, dict[str, Any]] = {}
        last = self._last
        for key, value in values.items():
            number = _as_number(value)
            known = last.get(key)
            if known is None:
                step = 0 if natural is None else natural
            elif natural is None:
                step = known[0] + 1
            elif natural > known[0]:
                step = natural
            elif natural == known[0] and number is not None and number == known[1]:
                continue
            else:
                step = known[0] + 1
            last[key] = (step, number)
            group = groups.get(step)
            if group is None:
                groups[step] = {key: value}
            else:
                group[key] = value
        return groups


def _as_number(value: Any) -> float | None:
    """Return a value as a float for the repeat test, or ``None`` when it has none."""
    if isinstance(value, float):
        return value if not math.isnan(value) else None
    if isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    try:
        number = float(value)
    except (TypeError, ValueError, RuntimeError):
        return None
    return None if math.isnan(number) else number
