"""Outages: the server goes away in the middle of a run, or is down when it starts."""

from __future__ import annotations

import logging
import sys
import time
from types import FrameType
from typing import Any

import pytest

import deardiary_lightning
from deardiary_lightning.delivery import RetryPolicy, open_run
from tests.deardiary_server import FaultRule, RemoteServer, server_in_subprocess

from .conftest import client_points, expected_points, server_points, values, wait_for_outage

#: Calls that block or do I/O (qualified names; any ``*.acquire`` and ``*.wait`` as well): a
#: logging call that makes one of them could wait on the server.
BLOCKING = frozenset(
    {
        "sleep", "select", "poll", "open", "getaddrinfo", "create_connection",
        "socket.connect", "socket.connect_ex", "socket.send", "socket.sendall",
        "socket.recv", "socket.recv_into", "Session.request", "Thread.join",
        "Queue.get", "Queue.put", "SimpleQueue.get", "SimpleQueue.put",
    }
)  # fmt: skip

#: A coarse bound on one logging call's wall time: far below any wait the outage could impose
#: (the retry budget is 2 s and more), far above what thread scheduling adds on a busy 2-core
#: machine (the GIL hands over every 5 ms; tens of milliseconds were seen under load). That the
#: call does not wait is shown by :class:`_CallTrace`, not by this bound.
MAX_CALL = 0.5


class _CallTrace:
    """Names every function a logging call runs on the calling thread (``sys.setprofile``)."""

    def __init__(self) -> None:
        self.called: set[str] = set()

    def _profile(self, frame: FrameType, event: str, arg: Any) -> None:
        if event == "call":
            code = frame.f_code
            self.called.add(getattr(code, "co_qualname", code.co_name))
        elif event == "c_call":
            self.called.add(getattr(arg, "__qualname__", repr(arg)))

    def __enter__(self) -> None:
        sys.setprofile(self._profile)

    def __exit__(self, *exc: object) -> None:
        sys.setprofile(None)

    def blocking(self) -> set[str]:
        """The calls made that can block."""
        return {
            name for name in self.called if name in BLOCKING or name.endswith((".acquire", ".wait"))
        }


def _log_through_outage(
    url: str, spool: str, outage: float, budget: float, pause: float = 0.005
) -> tuple[Any, float, int]:
    """Log 8 values every ``pause`` seconds while the server is down for ``outage`` seconds.

    Every logging call is traced: the run fails if one of them made a call that can block.
    """
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
    trace = _CallTrace()
    while time.monotonic() - start < outage + 4.0:
        if not outage_started and time.monotonic() - start > 1.0:
            control.outage(outage)
            outage_started = True
        metrics = values(step, 8)
        before = time.perf_counter()
        with trace:
            run.log_metrics(metrics, step=step)
        slowest = max(slowest, time.perf_counter() - before)
        step += 1
        time.sleep(pause)
    assert "RunWriter.log_metrics" in trace.called
    assert not trace.blocking(), f"a logging call made blocking calls: {trace.blocking()}"
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
        # One step every 20 ms: the outage's length is what this test adds to the one above,
        # and 1,500 spooled steps prove as much as 6,000 while taking less time to redeliver.
        run, slowest, steps = _log_through_outage(
            url, spool_dir, outage=30.0, budget=5.0, pause=0.02
        )
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
        wait_for_outage(url)
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
        wait_for_outage(url)
        for step in range(1, 20):
            run.log_metrics(values(step, 8), step=step)
        run.end("SUCCEEDED")
        started = time.monotonic()
        run.close(timeout=10)
        assert time.monotonic() - started < 10.5
    command = f"deardiary-lightning sync {spool_dir} --to {url}"
    assert any(command in r.getMessage() for r in caplog.records)


def test_flush_waits_for_the_spool_to_drain_once_the_server_answers(
    deardiary_server_factory: Any, spool_dir: str
) -> None:
    server = deardiary_server_factory()
    run = open_run(
        server.url,
        project="drain",
        experiment="e",
        spool=spool_dir,
        flush_interval=0.05,
        retry=RetryPolicy(initial=0.02, maximum=0.1, budget=0.3, probe_interval=0.1),
    )
    server.begin_outage()
    for step in range(20):
        run.log_metrics(values(step, 8), step=step)
    assert run.flush(timeout=10)  # all spooled: the server is down
    assert not server_points(server, run.iteration_id)

    # The comparison of the spool with the server reads metrics, slowly.
    server.add_fault(FaultRule(kind="latency", seconds=1.0, methods=("GET",), path=r"^/metric/"))
    server.end_outage()
    deadline = time.monotonic() + 10
    while not server.stats["faults"]["latency"] and time.monotonic() < deadline:
        time.sleep(0.01)
    assert server.stats["faults"]["latency"], "the writer never started to drain its spool"

    # The server answers again: flush() now means delivered, not spooled.
    assert run.flush(timeout=20)
    assert server_points(server, run.iteration_id) == expected_points(20, 8)
    run.close()


def test_close_asks_once_more_whether_a_server_that_was_down_is_back(
    deardiary_server_factory: Any, spool_dir: str, caplog: Any
) -> None:
    caplog.set_level(logging.WARNING, logger="deardiary_lightning.delivery")
    server = deardiary_server_factory()
    run = open_run(
        server.url,
        project="back",
        experiment="e",
        spool=spool_dir,
        flush_interval=0.05,
        retry=RetryPolicy(initial=0.02, maximum=0.1, budget=0.3, probe_interval=5.0),
    )
    server.begin_outage()
    for step in range(20):
        run.log_metrics(values(step, 8), step=step)
    assert run.flush(timeout=10)  # all spooled: the server is down

    # The server listens again, but its probes keep failing until just before close().
    server.add_fault(FaultRule(kind="status", status=503, path=r"^/health"))
    server.end_outage()
    deadline = time.monotonic() + 10
    while not server.stats["faults"]["status"] and time.monotonic() < deadline:
        time.sleep(0.01)
    assert server.stats["faults"]["status"], "the writer never probed the server"
    run.end("SUCCEEDED")
    server.clear_faults()
    run.close(timeout=30)  # returns as soon as all is delivered

    assert server_points(server, run.iteration_id) == expected_points(20, 8)
    (row,) = server.query("SELECT status_id FROM iteration WHERE id = ?", (run.iteration_id,))
    assert row["status_id"] == 2
    assert not any("deardiary-lightning sync" in r.getMessage() for r in caplog.records)
