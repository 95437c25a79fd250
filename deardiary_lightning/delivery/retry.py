"""When the delivery pipeline retries, how long it waits, and when it gives up.

A failed request falls in one of four classes (:func:`classify`):

- :attr:`Failure.NOT_APPLIED`: the server certainly did not apply it (no connection could be
  opened; 429, which a server or proxy answers before handling anything; 401
  ``TOKEN_EXPIRED``, refused before the handler). Sending it again is safe.
- :attr:`Failure.AMBIGUOUS`: it may have been applied, fully or in part (the answer was lost
  after the request left, the read timed out, or a 5xx: DearDiary's batch route can answer 500
  after writing some rows). Reads and updates are simply sent again; a create is first checked
  against the server (see :mod:`deardiary_lightning.delivery.writer`).
- :attr:`Failure.PERMANENT`: any other 4xx. Sending it again gives the same answer.

Waits grow exponentially with *full jitter*: attempt ``n`` sleeps a uniform random time between
0 and ``min(maximum, initial * multiplier**n)``, which spreads the retries of many clients
instead of synchronising them. A ``Retry-After`` the server sent is honoured as a lower bound.
Retrying stops when the *budget* (seconds since the first failure of the current streak) is
spent; the writer then treats the server as down and keeps the data in the spool.
"""

from __future__ import annotations

import enum
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from deardiary_lightning.errors import (
    APIError,
    RateLimitedError,
    ServerError,
    TokenExpiredError,
    TransportError,
)

__all__ = ["Failure", "RetryPolicy", "RetryState", "classify", "retry_after_of"]


class Failure(enum.Enum):
    """What a failed request tells about the server's state."""

    NOT_APPLIED = "not-applied"
    AMBIGUOUS = "ambiguous"
    PERMANENT = "permanent"


def classify(exc: BaseException) -> Failure:
    """Sort an exception raised by a backend call into a :class:`Failure` class.

    Args:
        exc: The exception.

    Returns:
        The class; anything that is not a DearDiary error counts as permanent.
    """
    if isinstance(exc, TransportError):
        return Failure.AMBIGUOUS if exc.may_have_landed else Failure.NOT_APPLIED
    if isinstance(exc, (RateLimitedError, TokenExpiredError)):
        return Failure.NOT_APPLIED
    if isinstance(exc, ServerError):
        return Failure.AMBIGUOUS
    if isinstance(exc, APIError) and exc.status >= 500:
        return Failure.AMBIGUOUS
    return Failure.PERMANENT


def retry_after_of(exc: BaseException) -> float | None:
    """Return the delay a server asked for (``Retry-After``, in seconds), if any.

    The HTTP backend stores it on the error as ``retry_after``; other errors have none.
    """
    value = getattr(exc, "retry_after", None)
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0:
        return float(value)
    return None


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded exponential backoff with full jitter.

    Args:
        initial: Upper bound of the first wait, in seconds.
        maximum: Largest upper bound of a wait, in seconds.
        multiplier: Growth of the upper bound per attempt.
        budget: Seconds of failing (from the first failure of a streak) after which the server
            counts as down: data goes to the spool and delivery resumes when a probe succeeds.
        max_retry_after: Largest ``Retry-After`` honoured, in seconds (a longer one is capped).
        probe_interval: Longest wait between two probes of a server that is down.
    """

    initial: float = 0.1
    maximum: float = 5.0
    multiplier: float = 2.0
    budget: float = 30.0
    max_retry_after: float = 60.0
    probe_interval: float = 5.0

    def __post_init__(self) -> None:
        if self.initial <= 0 or self.maximum < self.initial or self.multiplier < 1:
            msg = (
                f"invalid backoff (initial={self.initial}, maximum={self.maximum}, "
                f"multiplier={self.multiplier}): need 0 < initial <= maximum and multiplier >= 1"
            )
            raise ValueError(msg)
        if self.budget < 0:
            msg = f"retry budget must be >= 0 seconds, got {self.budget}"
            raise ValueError(msg)

    def ceiling(self, attempt: int) -> float:
        """Return the upper bound of the wait before retry number ``attempt`` (from 0)."""
        # Cap the exponent: beyond it the bound is ``maximum`` anyway, and floats overflow.
        exponent = min(attempt, 64)
        return min(self.maximum, self.initial * self.multiplier**exponent)

    def delay(
        self, attempt: int, retry_after: float | None = None, rng: random.Random | None = None
    ) -> float:
        """Return how long to wait before retry number ``attempt`` (from 0).

        Args:
            attempt: How many retries came before this one.
            retry_after: The server's ``Retry-After`` in seconds, a lower bound.
            rng: Random source (for reproducible tests).

        Returns:
            Seconds to sleep.
        """
        draw = (rng or _RANDOM).uniform(0.0, self.ceiling(attempt))
        if retry_after is not None:
            return max(draw, min(retry_after, self.max_retry_after))
        return draw


_RANDOM = random.Random()


class RetryState:
    """A streak of failures shared by every request of one writer (thread-safe).

    The first failure starts the streak, any success ends it; the budget is measured from the
    streak's start, so a server that keeps failing is given up on once, not once per request.

    Args:
        policy: The backoff policy.
        clock: Monotonic clock in seconds (for tests).
    """

    def __init__(self, policy: RetryPolicy, clock: Callable[[], float] = time.monotonic) -> None:
        self.policy = policy
        self._clock = clock
        self._lock = threading.Lock()
        self.streak_start: float | None = None
        self.failures = 0

    def failed(self) -> None:
        """Record a failure (starting a streak if none is running)."""
        with self._lock:
            if self.streak_start is None:
                self.streak_start = self._clock()
            self.failures += 1

    def succeeded(self) -> None:
        """Record a success: the streak ends."""
        with self._lock:
            self.streak_start = None
            self.failures = 0

    @property
    def exhausted(self) -> bool:
        """Whether the current streak has lasted at least as long as the budget."""
        start = self.streak_start
        if start is None:
            return False
        return self._clock() - start >= self.policy.budget

    def remaining(self) -> float:
        """Seconds left in the budget (the full budget when no streak is running)."""
        start = self.streak_start
        if start is None:
            return self.policy.budget
        return max(0.0, self.policy.budget - (self._clock() - start))
