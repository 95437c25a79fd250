"""Outages: the server goes away in the middle of a run, or is down when it starts."""

from __future__ import annotations

import logging
import time
from typing import Any

import pytest

import deardiary_lightning
from deardiary_lightning.delivery import RetryPolicy, open_run
from tests.deardiary_server import RemoteServer, server_in_subprocess

from .conftest import client_points, expected_points, values

#: A logging call slower than this would mean it waited on delivery (functional, not a benchmark).
MAX_CALL = 0.005


def _log_through_outage(
    url: str, spool: str, outage: float, budget: float
) -> tuple[Any, float, int]:
    """Log 8 values every 5 ms while the server is down for ``outage`` seconds in the middle."""
    run = open_run(
        url,
        project="outage",
        experiment="e",
        spool=spool,
        flush_interval=0.05,
        retry=RetryPolicy(initial=0.05, maximum=0.5, budget=budget, probe_interval=0.5),
    )
    control = RemoteServer(url)
    slowest = 0.0
    step = 0
    start = time.monotonic()
    outage_started = False
    while time.monotonic() - start < outage + 4.0:
        if not outage_started and time.monotonic() - start > 1.0:
            control.outage(outage)
            outage_started = True
        metrics = values(step, 8)
        before = time.perf_counter()
        run.log_metrics(metrics, step=step)
        slowest = max(slowest, time.perf_counter() - before)
        step += 1
        time.sleep(0.005)
    return run, slowest, step


def test_outage_mid_run_loses_nothing_and_never_blocks(spool_dir: str, caplog: Any) -> None:
    caplog.set_level(logging.WARNING, logger="deardiary_lightning.delivery")
    with server_in_subprocess() as url:
        run, slowest, steps = _log_through_outage(url, spool_dir, outage=8.0, budget=2.0)
        assert run.flush(timeout=60)
        run.end("SUCCEEDED")
        run.close()

        client = deardiary_lightning.connect(url)
        assert client_points(client, run.iteration_id) == expected_points(steps, 8)
        assert client.get_iteration(run.iteration_id).status.name == "SUCCEEDED"

    assert slowest < MAX_CALL, f"a logging call took {slowest * 1000:.1f} ms"
    messages = [record.getMessage() for record in caplog.records]
    assert any("keeping the run in the spool" in m for m in messages)
    assert any("answers again" in m for m in messages)
    spool = deardiary_lightning.connect(spool_dir)
    assert spool.get_projects(), "the outage was not long enough to use the spool"


@pytest.mark.slow
def test_30_second_outage_loses_nothing(spool_dir: str) -> None:
    with server_in_subprocess() as url:
        run, slowest, steps = _log_through_outage(url, spool_dir, outage=30.0, budget=5.0)
        assert run.flush(timeout=90)
        run.close()
        client = deardiary_lightning.connect(url)
        assert client_points(client, run.iteration_id) == expected_points(steps, 8)
    assert slowest < MAX_CALL, f"a logging call took {slowest * 1000:.1f} ms"


def test_server_down_at_start_is_delivered_when_it_comes_back(spool_dir: str, caplog: Any) -> None:
    caplog.set_level(logging.WARNING, logger="deardiary_lightning.delivery")
    with server_in_subprocess() as url:
        control = RemoteServer(url)
        control.outage(3.0)
        run = open_run(
            url,
            project="late",
            experiment="e",
            spool=spool_dir,
            flush_interval=0.05,
            retry=RetryPolicy(initial=0.05, maximum=0.5, budget=1.0, probe_interval=0.3),
        )
        for step in range(50):
            run.log_metrics(values(step, 8), step=step)
        run.log_parameters({"lr": 0.5})
        run.end("SUCCEEDED")
        assert run.flush(timeout=5)  # spooled while down counts as settled
        time.sleep(3.5)
        assert run.flush(timeout=20)
        client = deardiary_lightning.connect(url)
        deadline = time.monotonic() + 20
        iterations: list[Any] = []
        while time.monotonic() < deadline:
            projects = [p for p in client.get_projects() if p.name == "late"]
            if projects:
                experiments = client.get_experiments(projects[0].id)
                iterations = client.get_iterations(experiments[0].id) if experiments else []
                if iterations and iterations[0].ended:
                    break
            time.sleep(0.2)
        run.close()
        (iteration,) = iterations
        assert client_points(client, iteration.id) == expected_points(50, 8)
        assert [(p.key, p.value) for p in client.get_parameters(iteration.id)] == [("lr", "0.5")]
        assert iteration.status.name == "SUCCEEDED"
    assert any("cannot be reached" in r.getMessage() for r in caplog.records)


def test_run_ending_while_down_tells_the_sync_command(spool_dir: str, caplog: Any) -> None:
    caplog.set_level(logging.WARNING, logger="deardiary_lightning.delivery")
    with server_in_subprocess() as url:
        run = open_run(
            url,
            project="ends-down",
            experiment="e",
            spool=spool_dir,
            flush_interval=0.05,
            retry=RetryPolicy(initial=0.05, maximum=0.2, budget=0.5, probe_interval=0.5),
        )
        run.log_metrics(values(0, 8), step=0)
        assert run.flush(timeout=10)
        RemoteServer(url).outage(30.0)
        time.sleep(0.2)
        for step in range(1, 20):
            run.log_metrics(values(step, 8), step=step)
        run.end("SUCCEEDED")
        started = time.monotonic()
        run.close(timeout=10)
        assert time.monotonic() - started < 10.5
    command = f"deardiary-lightning sync {spool_dir} --to {url}"
    assert any(command in r.getMessage() for r in caplog.records)
