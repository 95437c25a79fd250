"""DDP: one iteration for all ranks, rank zero writes, every rank sees the same identity."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import deardiary_lightning as dd
from tests.lightning._models import parameters, steps

SCRIPT = Path(__file__).with_name("ddp_script.py")


@pytest.mark.parametrize("strategy", ["ddp", "ddp_spawn"])
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
    }
    params = parameters(client, iteration.id)
    assert params["run/key"] == [rank_zero["version"]]
    assert all(len(values) == 1 for values in params.values())
