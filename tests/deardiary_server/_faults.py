"""Fault injection: rules that make the test server answer errors, drop connections or stall.

Rules are checked in the order they were added for every request outside ``/_test/``. A rule
matches on method and path, then fires with its probability (drawn from the server's seeded
``random.Random``) until its ``count`` is used up. Every firing ``latency`` rule adds its delay;
the first firing rule of another kind decides the request's fate.
"""

from __future__ import annotations

import random
import re
import threading
from dataclasses import asdict, dataclass, field
from typing import Any

FAULT_KINDS = ("status", "drop_before", "drop_after", "latency")


@dataclass
class FaultRule:
    """One fault to inject.

    Attributes:
        kind: ``"status"`` answers ``status`` without running the handler; ``"drop_before"``
            closes the connection without an answer before the handler runs (nothing applied);
            ``"drop_after"`` runs the handler (its writes are committed) and then closes the
            connection without sending the answer; ``"latency"`` sleeps ``seconds`` first.
        status: The status code of a ``"status"`` fault.
        probability: Chance that a matching request triggers the rule.
        count: How many times the rule may fire; ``None`` means without limit.
        methods: HTTP methods the rule applies to; empty means all.
        path: A regular expression searched in the request path; ``None`` means every path.
        seconds: The delay of a ``"latency"`` fault.
        headers: Extra response headers of a ``"status"`` fault (e.g. ``Retry-After``).
        body: The JSON body of a ``"status"`` fault; by default the framework's generic
            ``{"message": "<status>: <reason>"}``.
    """

    kind: str
    status: int = 503
    probability: float = 1.0
    count: int | None = None
    methods: tuple[str, ...] = ()
    path: str | None = None
    seconds: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)
    body: Any = None

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            msg = f"unknown fault kind {self.kind!r}; use one of {', '.join(FAULT_KINDS)}"
            raise ValueError(msg)
        if not 0.0 <= self.probability <= 1.0:
            msg = f"fault probability must be within 0..1, got {self.probability}"
            raise ValueError(msg)
        self.methods = tuple(method.upper() for method in self.methods)
        if self.path is not None:
            re.compile(self.path)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> FaultRule:
        """Build a rule from the JSON body of ``POST /_test/faults``."""
        known = {name: value for name, value in data.items() if name in cls.__dataclass_fields__}
        if "methods" in known:
            known["methods"] = tuple(known["methods"] or ())
        if "headers" in known:
            known["headers"] = dict(known["headers"] or {})
        return cls(**known)

    def to_json(self) -> dict[str, Any]:
        """The rule as JSON-ready fields."""
        data = asdict(self)
        data["methods"] = list(self.methods)
        return data

    def matches(self, method: str, path: str) -> bool:
        """Whether the rule applies to a request (ignoring probability and count)."""
        if self.methods and method.upper() not in self.methods:
            return False
        return self.path is None or re.search(self.path, path) is not None


@dataclass
class FaultDecision:
    """What the fault rules decided for one request."""

    delay: float = 0.0
    rule: FaultRule | None = None


class FaultInjector:
    """The server's rule list, its seeded random source and the firing counters.

    Args:
        seed: Seed of the random source.
    """

    def __init__(self, seed: int) -> None:
        self._rules: list[tuple[FaultRule, list[int]]] = []
        self._random = random.Random(seed)
        self._lock = threading.Lock()
        self.fired = dict.fromkeys(FAULT_KINDS, 0)

    def add(self, rule: FaultRule) -> None:
        """Append a rule."""
        with self._lock:
            self._rules.append((rule, [0]))

    def clear(self) -> None:
        """Remove every rule (the counters stay)."""
        with self._lock:
            self._rules.clear()

    def rules(self) -> list[FaultRule]:
        """The current rules, in order."""
        with self._lock:
            return [rule for rule, _ in self._rules]

    def decide(self, method: str, path: str) -> FaultDecision:
        """Draw the faults of one request."""
        decision = FaultDecision()
        with self._lock:
            for rule, used in self._rules:
                if not rule.matches(method, path):
                    continue
                if rule.count is not None and used[0] >= rule.count:
                    continue
                if rule.kind != "latency" and decision.rule is not None:
                    continue
                if rule.probability < 1.0 and self._random.random() >= rule.probability:
                    continue

                used[0] += 1
                self.fired[rule.kind] += 1
                if rule.kind == "latency":
                    decision.delay += rule.seconds
                else:
                    decision.rule = rule
        return decision
