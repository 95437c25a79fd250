"""The bad-value policy, decided on the calling thread with one warning per key."""

from __future__ import annotations

import decimal
import fractions
import math
import warnings

import numpy as np
import pytest
import torch

from deardiary_lightning.delivery.values import (
    EMPTY_PLACEHOLDER,
    MAX_PARAMETER_CHARS,
    DearDiaryValueWarning,
    ValuePolicy,
)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (0.5, 0.5),
        (3, 3.0),
        (np.float32(0.25), 0.25),
        (np.int64(7), 7.0),
        (np.float64(1e-300), 1e-300),
        (torch.tensor(2.5), 2.5),
        (torch.tensor([4.0]), 4.0),
        (torch.tensor(1.5, requires_grad=True) * 2, 3.0),
        (np.array([6.0]), 6.0),
        (decimal.Decimal("0.125"), 0.125),
        (fractions.Fraction(1, 4), 0.25),
    ],
)
def test_numbers_tensors_and_numpy_scalars_are_converted_silently(
    value: object, expected: float
) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert ValuePolicy().metric("loss", value) == ("loss", expected)


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (math.nan, "not finite"),
        (math.inf, "not finite"),
        (-math.inf, "not finite"),
        (np.float32("nan"), "not finite"),
        (torch.tensor(float("inf")), "not finite"),
        (10**400, "not finite"),
        (None, "None"),
        ("0.5", "not a number"),
        ([1.0], "not a number"),
        (1 + 2j, "not a number"),
        (torch.ones(3), "3 elements"),
        (np.zeros((2, 2)), "4 elements"),
    ],
)
def test_unusable_metric_values_are_dropped_with_a_warning(value: object, reason: str) -> None:
    with pytest.warns(DearDiaryValueWarning, match=reason):
        assert ValuePolicy().metric("loss", value) is None


def test_bools_are_stored_as_numbers_with_a_warning() -> None:
    with pytest.warns(DearDiaryValueWarning, match="bool"):
        assert ValuePolicy().metric("flag", True) == ("flag", 1.0)


def test_each_problem_warns_once_per_key() -> None:
    policy = ValuePolicy()
    with pytest.warns(DearDiaryValueWarning) as caught:
        for _ in range(100):
            policy.metric("a", math.nan)
            policy.metric("b", math.nan)
            policy.metric("a", None)
    assert len(caught) == 3


def test_non_string_keys_are_converted_and_empty_keys_dropped() -> None:
    policy = ValuePolicy()
    with pytest.warns(DearDiaryValueWarning, match="int"):
        assert policy.metric(3, 1.0) == ("3", 1.0)
    with pytest.warns(DearDiaryValueWarning, match="empty"):
        assert policy.metric("", 1.0) is None
    with pytest.warns(DearDiaryValueWarning, match="empty"):
        assert policy.parameter("", "x") is None


@pytest.mark.parametrize(
    ("value", "text"),
    [
        ("adam", "adam"),
        (0.1, "0.1"),
        (1e-05, "1e-05"),
        (32, "32"),
        (True, "true"),
        (None, "None"),
        (np.float32(0.5), "0.5"),
        (torch.tensor(3), "3"),
        ([1, 2], "[1, 2]"),
    ],
)
def test_parameter_values_become_text(value: object, text: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert ValuePolicy().parameter("p", value) == ("p", text)


def test_empty_parameter_text_becomes_a_visible_placeholder() -> None:
    with pytest.warns(DearDiaryValueWarning, match="empty"):
        assert ValuePolicy().parameter("note", "") == ("note", EMPTY_PLACEHOLDER)


def test_long_parameter_text_is_cut_at_the_limit_and_marked() -> None:
    with pytest.warns(DearDiaryValueWarning, match="cut"):
        item = ValuePolicy().parameter("config", "x" * (MAX_PARAMETER_CHARS * 3))
    assert item is not None
    text = item[1]
    assert len(text) == MAX_PARAMETER_CHARS
    assert text.endswith(f"...[truncated, {MAX_PARAMETER_CHARS * 3} chars]")


@pytest.mark.parametrize(
    ("step", "expected"), [(3, 3), (np.int64(4), 4), (torch.tensor(5), 5), (6.0, 6), (-1, -1)]
)
def test_integral_steps_are_accepted(step: object, expected: int) -> None:
    assert ValuePolicy.step(step) == expected


@pytest.mark.parametrize("step", [1.5, "3", True, None, math.nan, torch.ones(2)])
def test_other_steps_are_refused(step: object) -> None:
    with pytest.raises(TypeError, match="step"):
        ValuePolicy.step(step)
