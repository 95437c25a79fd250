"""When a script's iteration ends, and with which status: exit, uncaught error, SIGTERM."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

import deardiary_lightning as dd
from tests.lightning._models import steps

SCRIPT = Path(__file__).with_name("lifecycle_script.py")


def run_script(tmp_path: Path, mode: str) -> tuple[subprocess.CompletedProcess[str], dd.Iteration]:
    store = tmp_path / "store"
    done = subprocess.run(
        [sys.executable, str(SCRIPT), str(store), mode],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    client = dd.connect(str(store))
    (project,) = client.get_projects()
    (experiment,) = client.get_experiments(project.id)
    (iteration,) = client.get_iterations(experiment.id)
    return done, iteration


@pytest.mark.parametrize(
    ("mode", "status", "returncode"),
    [
        ("exit", dd.IterationStatus.SUCCEEDED, 0),
        ("raise", dd.IterationStatus.FAILED, 1),
        ("sigterm", dd.IterationStatus.KILLED, -signal.SIGTERM),
    ],
)
def test_how_a_script_ends_decides_the_status(tmp_path: Path, mode, status, returncode):
    done, iteration = run_script(tmp_path, mode)
    assert done.returncode == returncode, done.stderr[-2000:]
    assert iteration.status is status and iteration.ended

    found = steps(dd.connect(str(tmp_path / "store")), iteration.id)
    if mode == "sigterm":
        assert found["loss_step"] == [0, 1, 2]
        assert "SIGTERM" in iteration.error_message
    else:
        assert found["loss_epoch"] == [0, 1]
    if mode == "raise":
        assert "RuntimeError: evaluation after training failed" in iteration.error_message
        assert "Traceback" in iteration.error_message
