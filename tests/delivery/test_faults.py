"""Exactly once through injected 5xx answers and dropped connections."""

from __future__ import annotations

import time
from typing import Any

from deardiary_lightning.delivery import RetryPolicy, open_run
from tests.deardiary_server import FaultRule

from .conftest import expected_points, server_points, values


def test_2000_steps_with_503s_and_dropped_connections_land_exactly_once(
    deardiary_server_factory: Any, spool_dir: str
) -> None:
    server = deardiary_server_factory(seed=4)
    batch_route = r"^/metric/iteration/[^/]+/batch"
    server.add_fault(FaultRule(kind="status", status=503, probability=0.10, path=batch_route))
    server.add_fault(FaultRule(kind="drop_before", probability=0.025, path=batch_route))
    server.add_fault(FaultRule(kind="drop_after", probability=0.025, path=batch_route))

    run = open_run(
        server.url,
        project="faults",
        experiment="exactly-once",
        spool=spool_dir,
        flush_interval=0.05,
        retry=RetryPolicy(initial=0.01, maximum=0.2, budget=30.0),
    )
    for step in range(2000):
        run.log_metrics(values(step, 8), step=step)
    run.log_parameters({"lr": 0.01, "layers": 3})
    assert run.flush(timeout=120)
    run.end("SUCCEEDED")
    run.close()

    assert server_points(server, run.iteration_id) == expected_points(2000, 8)
    stats = server.stats
    assert stats["faults"]["drop_after"] > 5
    assert stats["faults"]["status"] > 50
    params = server.query(
        "SELECT key, value FROM parameter WHERE iteration_id = ?", (run.iteration_id,)
    )
    assert sorted((p["key"], p["value"]) for p in params) == [("layers", "3"), ("lr", "0.01")]


def test_429_with_retry_after_is_honoured(deardiary_server_factory: Any, spool_dir: str) -> None:
    server = deardiary_server_factory()
    server.add_fault(
        FaultRule(
            kind="status",
            status=429,
            count=2,
            path=r"/batch$",
            headers={"Retry-After": "1"},
        )
    )
    run = open_run(
        server.url,
        project="faults",
        experiment="retry-after",
        spool=spool_dir,
        flush_interval=0.02,
        retry=RetryPolicy(initial=0.01, maximum=0.05, budget=30.0),
    )
    started = time.monotonic()
    run.log_metrics(values(0, 8), step=0)
    assert run.flush(timeout=20)
    took = time.monotonic() - started
    run.close()
    assert took >= 2.0  # two refusals, each asking for a one-second pause
    assert server_points(server, run.iteration_id) == expected_points(1, 8)
