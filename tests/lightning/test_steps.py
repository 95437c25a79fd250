"""The step planner: no key ever gets two points at one step."""

from __future__ import annotations

from deardiary_lightning.lightning.steps import StepPlanner


def test_natural_steps_are_kept_while_they_grow():
    planner = StepPlanner()
    assert planner.place({"a": 1.0, "b": 2.0}, 0) == {0: {"a": 1.0, "b": 2.0}}
    assert planner.place({"a": 1.5}, 7) == {7: {"a": 1.5}}
    assert planner.last_step("a") == 7 and planner.last_step("b") == 0


def test_without_a_step_each_key_takes_its_next():
    planner = StepPlanner()
    planner.place({"a": 1.0}, 4)
    assert planner.place({"a": 2.0, "new": 3.0}, None) == {5: {"a": 2.0}, 0: {"new": 3.0}}


def test_a_repeat_is_skipped_and_a_collision_moves_forward():
    planner = StepPlanner()
    planner.place({"a": 1.0}, 3)
    assert planner.place({"a": 1.0}, 3) == {}  # the same point again
    assert planner.place({"a": 2.0}, 3) == {4: {"a": 2.0}}  # another value at the same step
    assert planner.place({"a": 9.0}, 1) == {5: {"a": 9.0}}  # behind the series


def test_nan_and_non_numbers_are_never_taken_for_repeats():
    planner = StepPlanner()
    planner.place({"a": float("nan"), "b": "text"}, 0)
    groups = planner.place({"a": float("nan"), "b": "text"}, 0)
    assert set(groups) == {1} and set(groups[1]) == {"a", "b"}


def test_seed_continues_a_resumed_run():
    planner = StepPlanner()
    planner.seed([("a", 0, 1.0), ("a", 9, 2.0), ("a", 4, 3.0), ("b", 2, 5.0)])
    assert len(planner) == 2
    assert planner.place({"a": 2.0, "b": 6.0}, 0) == {10: {"a": 2.0}, 3: {"b": 6.0}}
    assert planner.place({"a": 1.0}, 9) == {11: {"a": 1.0}}


def test_tensors_compare_by_value():
    import torch

    planner = StepPlanner()
    planner.place({"a": torch.tensor(0.25)}, 2)
    assert planner.place({"a": torch.tensor(0.25)}, 2) == {}
