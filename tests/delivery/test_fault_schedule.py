"""Randomized fault schedules: whatever mix of failures the server shows, the run lands exactly.

Each seed draws its own schedule: rates of 503, 500 and 429 answers, connections dropped before
and after the write, latency, and one short outage, on every API route (reads used by the
checks included). The run mixes explicit and automatic steps, steps revisited by later calls,
the same key twice at one step, parameters whose values change, tags and the end of the run.
The server's database must then hold every logged point once, the last value of every
parameter, every tag once and the final status.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Any

import pytest

from deardiary_lightning.delivery import RetryPolicy, open_run
from tests.deardiary_server import FaultRule

from .conftest import server_points

#: Chosen so that the draws cover every retry budget (riding out the outage or spooling) and
#: every final status.
SEEDS = (17, 29, 41, 53)

#: Steps of the simulated training loop, and the pause between two of them (seconds).
STEPS = 120
PAUSE = 0.02


@dataclass
class _Schedule:
    """The faults of one seed."""

    rules: list[FaultRule]
    outage_step: int
    outage_seconds: float
    budget: float
    status: str

    def describe(self) -> str:
        parts = [
            f"{r.kind}{'/' + str(r.status) if r.kind == 'status' else ''}@{r.probability:.2f}"
            for r in self.rules
        ]
        return (
            f"rules={', '.join(parts)}; outage at step {self.outage_step} for "
            f"{self.outage_seconds:.2f} s; budget {self.budget:.2f} s; end {self.status}"
        )


#: Writes whose first attempt lands but loses its answer, in every schedule, so that each kind of
#: check (metric rows, parameter list, tag list, reading an ended iteration) runs at least once.
ALWAYS = (
    FaultRule(kind="drop_after", count=1, path=r"^/metric/iteration/[^/]+/batch"),
    FaultRule(kind="drop_after", count=1, methods=("POST",), path=r"^/parameter/iteration/"),
    FaultRule(kind="drop_after", count=1, methods=("PATCH",), path=r"^/parameter/"),
    FaultRule(kind="drop_after", count=1, methods=("POST",), path=r"^/tag/iteration/"),
    FaultRule(kind="drop_after", count=1, methods=("PATCH",), path=r"^/iteration/"),
)


def _draw_schedule(rng: random.Random) -> _Schedule:
    """Draw one fault schedule; every kind of fault is present, at a random rate."""
    drawn = [
        FaultRule(kind="status", status=503, probability=rng.uniform(0.01, 0.04)),
        FaultRule(kind="status", status=500, probability=rng.uniform(0.005, 0.02)),
        FaultRule(
            kind="status",
            status=429,
            probability=rng.uniform(0.005, 0.02),
            headers={"Retry-After": "0"} if rng.random() < 0.5 else {},
        ),
        FaultRule(kind="drop_before", probability=rng.uniform(0.005, 0.02)),
        FaultRule(kind="drop_after", probability=rng.uniform(0.01, 0.03)),
    ]
    rng.shuffle(drawn)
    latency = FaultRule(
        kind="latency", probability=rng.uniform(0.03, 0.1), seconds=rng.uniform(0.05, 0.2)
    )
    return _Schedule(
        rules=[latency, *(replace(rule) for rule in ALWAYS), *drawn],
        outage_step=rng.randrange(STEPS // 5, STEPS // 2),
        outage_seconds=rng.uniform(0.5, 1.5),
        # Shorter than the outage (the spool takes over) or longer (retries ride it out).
        budget=rng.choice([0.3, 0.6, 5.0]),
        status=rng.choice(["SUCCEEDED", "FAILED", "KILLED"]),
    )


@dataclass
class _Expected:
    """What the run logged, kept the way the server must end up holding it."""

    points: Counter[tuple[str, int, float]] = field(default_factory=Counter)
    auto_steps: dict[str, int] = field(default_factory=dict)
    parameters: dict[str, str] = field(default_factory=dict)
    tags: set[str] = field(default_factory=set)

    def metrics(self, run: Any, values: dict[str, float], step: int | None) -> None:
        run.log_metrics(values, step=step)
        for key, value in values.items():
            if step is None:
                key_step = self.auto_steps.get(key, -1) + 1
                self.auto_steps[key] = key_step
            else:
                key_step = step
            self.points[(key, key_step, value)] += 1

    def params(self, run: Any, params: dict[str, Any]) -> None:
        run.log_parameters(params)
        self.parameters.update({key: str(value) for key, value in params.items()})

    def tag(self, run: Any, value: str) -> None:
        run.add_tag(value)
        self.tags.add(value)


def _train(run: Any, rng: random.Random, schedule: _Schedule, server: Any) -> _Expected:
    """A training loop that uses every kind of logging call, with an outage in the middle."""
    expected = _Expected()
    expected.tag(run, "fault-schedule")
    expected.params(run, {"optimizer": "sgd", "batch": 32, "phase": "warmup"})
    for step in range(STEPS):
        if step == schedule.outage_step:
            server.outage(schedule.outage_seconds)
        expected.metrics(run, {"loss": 1.0 / (step + 1), "acc": step / STEPS}, step)
        expected.metrics(run, {"auto": float(step)}, None)
        if rng.random() < 0.3:
            # A later call for the same step, with other keys (one batch or two).
            expected.metrics(run, {"grad_norm": rng.uniform(0, 10)}, step)
        if rng.random() < 0.1:
            # The same key again at the same step: a second point, kept.
            expected.metrics(run, {"loss": 2.0 + step}, step)
        if step >= 5 and rng.random() < 0.15:
            # A step revisited after later steps were logged.
            back = step - rng.randrange(1, 5)
            expected.metrics(run, {"val_loss": float(back) + 0.5}, back)
        if rng.random() < 0.1:
            expected.metrics(run, {"auto": -float(step), "auto_b": float(step)}, None)
        if step % 10 == 0:
            expected.params(run, {"lr": round(0.1 * 0.5 ** (step // 30), 6), "batch": 32})
        if step == STEPS // 2:
            expected.params(run, {"phase": "main"})
            expected.tag(run, "phase-main")
            expected.tag(run, "fault-schedule")  # attaching it again changes nothing
        time.sleep(PAUSE)
    return expected


@pytest.mark.parametrize("seed", SEEDS)
def test_a_random_fault_schedule_leaves_exactly_what_was_logged(
    deardiary_server_factory: Any, spool_dir: str, seed: int
) -> None:
    rng = random.Random(seed)
    schedule = _draw_schedule(rng)
    server = deardiary_server_factory(seed=seed)
    run = open_run(
        server.url,
        project="faults",
        experiment=f"schedule {seed}",
        spool=spool_dir,
        flush_interval=0.05,
        retry=RetryPolicy(initial=0.02, maximum=0.2, budget=schedule.budget, probe_interval=0.2),
    )
    for rule in schedule.rules:
        server.add_fault(rule)

    expected = _train(run, rng, schedule, server)
    error = "diverged" if schedule.status == "FAILED" else None
    run.end(schedule.status, error_message=error)

    # The end is sent after everything logged before it: once the server shows it, the data
    # is all there (or something was lost, which the comparison below shows).
    deadline = time.monotonic() + 30.0
    ended = False
    while not ended and time.monotonic() < deadline:
        (row,) = server.query("SELECT end_date FROM iteration WHERE id = ?", (run.iteration_id,))
        ended = row["end_date"] is not None
        time.sleep(0.05)
    run.close(timeout=5.0)
    assert ended, f"the end never reached the server ({schedule.describe()})"

    assert server_points(server, run.iteration_id) == expected.points, schedule.describe()
    params = server.query(
        "SELECT key, value FROM parameter WHERE iteration_id = ?", (run.iteration_id,)
    )
    assert sorted((p["key"], p["value"]) for p in params) == sorted(expected.parameters.items())
    tags = server.query(
        "SELECT t.value FROM tag t JOIN iteration_tag it ON it.tag_id = t.id "
        "WHERE it.iteration_id = ?",
        (run.iteration_id,),
    )
    assert sorted(t["value"] for t in tags) == sorted(expected.tags)
    (iteration,) = server.query(
        "SELECT status_id, error_message FROM iteration WHERE id = ?", (run.iteration_id,)
    )
    statuses = {"SUCCEEDED": 2, "FAILED": 3, "KILLED": 4}
    assert iteration["status_id"] == statuses[schedule.status]
    assert (iteration["error_message"] or None) == error
    fired = server.stats["faults"]
    assert fired["drop_after"] >= len(ALWAYS) and fired["status"] and fired["latency"], fired
