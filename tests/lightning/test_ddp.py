"""DDP: one iteration for all ranks, rank zero writes, every rank sees the same identity."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

import deardiary_lightning as dd
from tests.lightning._models import parameters, steps

SCRIPT = Path(__file__).with_name("ddp_script.py")


@pytest.mark.parametrize("strategy", ["ddp", "ddp_spawn", "ddp_fork"])
def test_two_processes_write_one_iteration(strategy: str, tmp_path: Path):
    store, out = tmp_path / "store", tmp_path / "out"
    out.mkdir()
    done = subprocess.run(
        [sys.executable, str(SCRIPT), str(store), str(out), strategy],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr[-3000:]

    starts = [json.loads((out / f"start-{r}.json").read_text()) for r in (0, 1)]
    mains = [json.loads(p.read_text()) for p in sorted(out.glob("main-*.json"))]
    assert len(mains) == (2 if strategy == "ddp" else 1)
    rank_zero = mains[0]["built"]
    assert starts[0] == starts[1]
    assert {k: starts[0][k] for k in rank_zero} == rank_zero
    assert starts[0]["checkpoint_dir"] == rank_zero["log_dir"] + "/checkpoints"
    assert all(main["after_fit"] == rank_zero for main in mains)

    client = dd.connect(str(store))
    (project,) = client.get_projects()
    (experiment,) = client.get_experiments(project.id)
    (iteration,) = client.get_iterations(experiment.id)
    assert iteration.status is dd.IterationStatus.SUCCEEDED
    assert steps(client, iteration.id) == {
        "loss_step": [0, 1, 2, 3],  # 2 batches per rank and epoch
        "epoch": [0, 1, 2, 3],
        "loss_epoch": [0, 1],
        "train_mae": [0, 1],
        "val_loss": [0, 1],
        "val_batch_loss": [0, 1],  # 1 validation batch per rank and epoch
        # The test stage, after fit, in the same iteration. Its step is the epoch Lightning
        # reports there: ddp_spawn and ddp_fork run each stage in new processes, started from
        # the main process, whose Trainer is still at epoch 0.
        "test_loss": [2] if strategy == "ddp" else [0],
    }
    params = parameters(client, iteration.id)
    assert params["run/key"] == [rank_zero["version"]]
    assert all(len(values) == 1 for values in params.values())


def test_a_forked_process_continues_the_run_with_a_writer_of_its_own(tmp_path: Path):
    from deardiary_lightning.delivery import shutdown
    from deardiary_lightning.lightning import DearDiaryLogger

    logger = DearDiaryLogger(
        url=str(tmp_path / "store"), project="p", experiment="fork", log_environment=False
    )
    logger.log_metrics({"a": 1.0}, step=0)
    opened = logger.iteration_id

    pid = os.fork()
    if pid == 0:  # the child: everything it checks becomes its exit code
        code = 1
        try:
            logger.log_metrics({"b": 2.0}, step=0)
            same_run = logger.iteration_id == opened and not logger.ended
            logger.finalize("success")  # delivers; the parent owns the end of the run
            started = time.monotonic()
            shutdown._close_all()  # the parent's writer is not this process's to wait for
            code = 0 if same_run and time.monotonic() - started < 5 else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0

    logger.log_metrics({"a": 3.0}, step=1)
    logger.end()
    client = dd.connect(str(tmp_path / "store"))
    (project,) = client.get_projects()
    (experiment,) = client.get_experiments(project.id)
    (iteration,) = client.get_iterations(experiment.id)
    assert iteration.id == opened and iteration.status is dd.IterationStatus.SUCCEEDED
    assert steps(client, iteration.id) == {"a": [0, 1], "b": [0]}
    assert parameters(client, iteration.id) == {"run/key": [logger.run_key]}


def test_a_fork_outside_a_process_launcher_leaves_the_run_unopened(tmp_path: Path):
    from lightning.pytorch import Trainer

    from deardiary_lightning.lightning import DearDiaryLogger

    store = tmp_path / "store"
    logger = DearDiaryLogger(url=str(store), project="p", experiment="fork")
    trainer = Trainer(logger=logger, enable_progress_bar=False, enable_model_summary=False)

    def launch(trainer: Trainer) -> int:  # named like a launcher's method, in no launcher file
        return os.fork()

    pid = launch(trainer)
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)

    assert logger.iteration_id is None and not store.exists()
