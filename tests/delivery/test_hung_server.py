"""A server that accepts connections and never answers cannot keep the process alive."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

import deardiary_lightning
from deardiary_lightning.delivery import open_run
from tests.deardiary_server import FaultRule, RemoteServer, spawn

from .conftest import client_points, expected_points, values

REPO = Path(__file__).resolve().parents[2]

#: The writer's close_timeout in the child process, in seconds.
CLOSE_TIMEOUT = 1.5

#: What the end of the process may add to it: the threads' stop grace, the spool writes and the
#: interpreter's own shutdown (none of them waits on the server).
MARGIN = 1.5

#: Far beyond both the close timeout and the HTTP read timeout (30 s): no request ever returns.
HANG = 600.0


@pytest.mark.parametrize("mode", ["close", "exit"])
def test_close_returns_in_time_when_the_server_never_answers(spool_dir: str, mode: str) -> None:
    url, server = spawn()
    try:
        writer = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.delivery._hung_writer",
                url,
                spool_dir,
                str(CLOSE_TIMEOUT),
                mode,
            ],
            cwd=REPO,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert writer.stdin is not None and writer.stdout is not None
        assert writer.stdout.readline().split()[0] == "ITERATION"
        RemoteServer(url).add_fault(FaultRule(kind="latency", seconds=HANG))
        started = time.monotonic()
        writer.stdin.write("go\n")
        writer.stdin.flush()
        try:
            out, err = writer.communicate(timeout=CLOSE_TIMEOUT + 30)
        except subprocess.TimeoutExpired:
            writer.kill()
            writer.communicate()
            pytest.fail("the writer process hung on a server that never answers")
        took = time.monotonic() - started
    finally:
        server.kill()
        server.wait()
        if server.stdout is not None:
            server.stdout.close()

    assert writer.returncode == 0, err
    assert "LOGGED" in out
    assert took < CLOSE_TIMEOUT + MARGIN, f"the process took {took:.1f} s to end"
    assert "deardiary: delivering" in err  # the progress line of the bounded wait
    assert f"deardiary-lightning sync {spool_dir} --to {url}" in err

    # Nothing is lost: every point is in the spool, once, for the sync command to upload.
    spool = deardiary_lightning.connect(spool_dir)
    (project,) = spool.get_projects()
    (experiment,) = spool.get_experiments(project.id)
    (mirror,) = spool.get_iterations(experiment.id)
    assert client_points(spool, mirror.id) == expected_points(50, 8)
    assert [(p.key, p.value) for p in spool.get_parameters(mirror.id)] == [("seed", "7")]


def test_resuming_against_a_hung_server_keeps_close_bounded_and_loses_nothing(
    spool_dir: str,
) -> None:
    url, server = spawn()
    try:
        first = open_run(url, project="hung", experiment="resume", spool=spool_dir)
        first.log_metrics({"loss": 1.0})
        first.log_parameters({"lr": 0.1})
        assert first.flush(timeout=10)
        first.close()

        # Reading the iteration's metrics (what a resumed writer does first) never answers.
        RemoteServer(url).add_fault(
            FaultRule(kind="latency", seconds=HANG, methods=("GET",), path=r"^/metric/")
        )
        run = open_run(
            url,
            project="hung",
            experiment="resume",
            iteration_id=first.iteration_id,
            spool=spool_dir,
            flush_interval=0.05,
        )
        for step in range(20):
            run.log_metrics(values(step, 8), step=step)
        run.log_parameters({"lr": 0.2})
        started = time.monotonic()
        run.close(timeout=CLOSE_TIMEOUT)
        took = time.monotonic() - started
    finally:
        server.kill()
        server.wait()
        if server.stdout is not None:
            server.stdout.close()

    assert took < CLOSE_TIMEOUT + MARGIN, f"close() took {took:.1f} s"
    spool = deardiary_lightning.connect(spool_dir)
    (project,) = spool.get_projects()
    (experiment,) = spool.get_experiments(project.id)
    (mirror,) = spool.get_iterations(experiment.id)
    assert client_points(spool, mirror.id) == expected_points(20, 8)
    assert [(p.key, p.value) for p in spool.get_parameters(mirror.id)] == [("lr", "0.2")]
