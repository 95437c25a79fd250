"""The retry policy: which failures are retried, how long to wait, when to give up."""

from __future__ import annotations

import random

import pytest

from deardiary_lightning.delivery.retry import (
    Failure,
    RetryPolicy,
    RetryState,
    classify,
    retry_after_of,
)
from deardiary_lightning.errors import (
    BadRequestError,
    ConnectError,
    NotFoundError,
    RateLimitedError,
    ReadTimeoutError,
    ResponseLostError,
    ServerError,
    TokenExpiredError,
    UnprocessableError,
)

WHERE = {"method": "POST", "url": "http://server/metric/iteration/1/batch"}


@pytest.mark.parametrize(
    ("error", "failure"),
    [
        (ConnectError("refused", **WHERE), Failure.NOT_APPLIED),
        (RateLimitedError(429, "UNKNOWN", "slow down", **WHERE), Failure.NOT_APPLIED),
        (TokenExpiredError(401, "TOKEN_EXPIRED", "expired", **WHERE), Failure.NOT_APPLIED),
        (ResponseLostError("dropped", **WHERE), Failure.AMBIGUOUS),
        (ReadTimeoutError("timeout", **WHERE), Failure.AMBIGUOUS),
        (ServerError(503, "UNKNOWN", "unavailable", **WHERE), Failure.AMBIGUOUS),
        (ServerError(500, "SERVER_ERROR", "failed", **WHERE), Failure.AMBIGUOUS),
        (UnprocessableError(422, "INVALID_PAYLOAD", "ended", **WHERE), Failure.PERMANENT),
        (BadRequestError(400, "UNKNOWN", "bad", **WHERE), Failure.PERMANENT),
        (NotFoundError(404, "NOT_FOUND", "gone", **WHERE), Failure.PERMANENT),
        (ValueError("not ours"), Failure.PERMANENT),
    ],
)
def test_failures_are_classified(error: BaseException, failure: Failure) -> None:
    assert classify(error) is failure


def test_backoff_is_exponential_capped_and_fully_jittered() -> None:
    policy = RetryPolicy(initial=0.1, maximum=2.0, multiplier=2.0)
    assert [policy.ceiling(n) for n in range(6)] == [0.1, 0.2, 0.4, 0.8, 1.6, 2.0]
    assert policy.ceiling(10_000) == 2.0
    rng = random.Random(1)
    draws = [policy.delay(3, rng=rng) for _ in range(2000)]
    assert all(0.0 <= d <= 0.8 for d in draws)
    assert min(draws) < 0.05 and max(draws) > 0.75  # spread over the whole range


def test_retry_after_is_a_lower_bound_and_capped() -> None:
    policy = RetryPolicy(initial=0.1, maximum=1.0, max_retry_after=30.0)
    rng = random.Random(2)
    assert all(policy.delay(0, retry_after=3.0, rng=rng) == 3.0 for _ in range(100))
    assert policy.delay(0, retry_after=3600.0, rng=rng) == 30.0


def test_retry_after_is_read_from_the_error() -> None:
    error = RateLimitedError(429, "UNKNOWN", "slow down", **WHERE)
    assert retry_after_of(error) is None
    error.retry_after = 2.5  # type: ignore[attr-defined]
    assert retry_after_of(error) == 2.5


def test_the_budget_runs_from_the_first_failure_of_a_streak() -> None:
    now = [100.0]
    state = RetryState(RetryPolicy(budget=10.0), clock=lambda: now[0])
    assert not state.exhausted and state.remaining() == 10.0
    state.failed()
    now[0] = 105.0
    state.failed()
    assert not state.exhausted and state.remaining() == 5.0
    now[0] = 110.0
    assert state.exhausted
    state.succeeded()
    assert not state.exhausted and state.failures == 0


def test_invalid_policies_are_refused() -> None:
    with pytest.raises(ValueError, match="backoff"):
        RetryPolicy(initial=0.0)
    with pytest.raises(ValueError, match="budget"):
        RetryPolicy(budget=-1.0)
