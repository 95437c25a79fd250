"""When a script's iteration ends, and with which status: exit, uncaught error, SIGTERM."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
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


def uploads(tmp_path: Path, iteration: dd.Iteration) -> dict[str, bytes]:
    """The iteration's resources, name to bytes."""
    client = dd.connect(str(tmp_path / "store"))
    found: dict[str, bytes] = {}
    for resource in client.get_resources(iteration.experiment_id):
        data = client.read_resource_data(resource.id)
        assert data is not None
        found[resource.name] = data
    return found


def saved_files(done: subprocess.CompletedProcess[str]) -> list[Path]:
    """The checkpoint files the script reported saving, in order."""
    return [Path(line.split(" ", 1)[1]) for line in done.stdout.splitlines() if line[:5] == "save "]


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
        # The step running when the signal came is finished and logged: Lightning stops after it.
        assert found["loss_step"] == [0, 1, 2, 3]
        assert "SIGTERM" in iteration.error_message
    else:
        assert found["loss_epoch"] == [0, 1]
    if mode == "raise":
        assert "RuntimeError: evaluation after training failed" in iteration.error_message
        assert "Traceback" in iteration.error_message


def test_sigterm_during_fit_uploads_the_best_and_last_checkpoints(tmp_path: Path):
    done, iteration = run_script(tmp_path, "sigterm-checkpoints")
    assert done.returncode == -signal.SIGTERM, done.stderr[-2000:]
    assert iteration.status is dd.IterationStatus.KILLED and iteration.ended
    assert "SIGTERM" in iteration.error_message
    assert "iteration" not in done.stdout.split()  # fit did not return

    files = saved_files(done)
    assert [f.name for f in files] == ["epoch=0-step=4.ckpt", "last.ckpt"]
    found = uploads(tmp_path, iteration)
    assert sorted(found) == [
        f"iteration={iteration.id}-epoch=0-step=4-last.ckpt",
        f"iteration={iteration.id}-epoch=0-step=4.ckpt",
    ]
    assert found[f"iteration={iteration.id}-epoch=0-step=4-last.ckpt"] == files[1].read_bytes()
    assert found[f"iteration={iteration.id}-epoch=0-step=4.ckpt"] == files[0].read_bytes()
    # Everything trained before the stop is there, up to the step the signal interrupted.
    assert steps(dd.connect(str(tmp_path / "store")), iteration.id)["loss_step"] == list(range(7))


def test_sigterm_under_ddp_ends_the_one_iteration_killed_with_checkpoints(tmp_path: Path):
    done, iteration = run_script(tmp_path, "ddp-sigterm")  # one iteration for both ranks
    assert done.returncode == -signal.SIGTERM, done.stderr[-2000:]
    assert iteration.status is dd.IterationStatus.KILLED and iteration.ended
    assert "SIGTERM" in iteration.error_message
    assert "iteration" not in done.stdout.split()  # fit did not return on either rank

    files = {f.name: f for f in saved_files(done)}  # both ranks report each save
    found = uploads(tmp_path, iteration)
    assert sorted(found) == [
        f"iteration={iteration.id}-epoch=1-step=4-last.ckpt",
        f"iteration={iteration.id}-epoch=1-step=4.ckpt",
    ]
    assert found[f"iteration={iteration.id}-epoch=1-step=4-last.ckpt"] == (
        files["last.ckpt"].read_bytes()
    )
    logged = steps(dd.connect(str(tmp_path / "store")), iteration.id)
    assert logged["loss_step"] == [0, 1, 2, 3]


def test_sigterm_after_the_training_loop_still_ends_killed_with_checkpoints(tmp_path: Path):
    done, iteration = run_script(tmp_path, "sigterm-after-fit")
    assert done.returncode == -signal.SIGTERM, done.stderr[-2000:]
    assert iteration.status is dd.IterationStatus.KILLED
    assert "SIGTERM" in iteration.error_message
    # Outside the training loop Lightning does not watch for SIGTERM: the process stops at once.
    assert "iteration" not in done.stdout.split()
    files = saved_files(done)
    assert [f.name for f in files][-2:] == ["epoch=1-step=8.ckpt", "last.ckpt"]
    found = uploads(tmp_path, iteration)
    assert sorted(found) == [
        f"iteration={iteration.id}-epoch=1-step=8-last.ckpt",
        f"iteration={iteration.id}-epoch=1-step=8.ckpt",
    ]
    assert found[f"iteration={iteration.id}-epoch=1-step=8-last.ckpt"] == files[-1].read_bytes()


def test_a_training_step_that_outlasts_the_grace_period_is_stopped(tmp_path: Path):
    start = time.monotonic()
    done, iteration = run_script(tmp_path, "sigterm-stuck")
    took = time.monotonic() - start
    assert done.returncode == -signal.SIGTERM, done.stderr[-2000:]
    assert iteration.status is dd.IterationStatus.KILLED
    assert "SIGTERM" in iteration.error_message
    assert "grace period" in done.stderr
    assert took < 60  # the step would have been busy for 300 s; the grace is 1 s + close 2 s
    assert steps(dd.connect(str(tmp_path / "store")), iteration.id)["loss_step"] == [0, 1, 2]
