"""The same logger under Lightning Fabric (``fabric.log_dict`` sends no step)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch
from lightning.fabric import Fabric

import deardiary_lightning as dd
from deardiary_lightning.lightning import DearDiaryLogger
from tests.lightning._models import TinyModel, loader, parameters, series


def test_fabric_training_loop(destination):
    logger = DearDiaryLogger(**destination.logger_args(experiment="fabric"))
    fabric = Fabric(accelerator="cpu", devices=1, loggers=[logger])
    fabric.launch()
    model = TinyModel()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    model, optimizer = fabric.setup(model, optimizer)
    fabric.logger.log_hyperparams({"lr": 0.05, "model": {"hidden": 8}})

    losses = []
    for epoch in range(2):
        for batch in fabric.setup_dataloaders(loader()):
            loss = model._loss(batch)
            optimizer.zero_grad()
            fabric.backward(loss)
            optimizer.step()
            fabric.log_dict({"loss": loss})  # no step: each key takes its next one
            losses.append(loss.item())
        fabric.log("epoch_loss", sum(losses[-4:]) / 4, step=epoch)
    fabric.log_dict({"epoch": 5.0})  # without a Trainer "epoch" is an ordinary key
    logger.end()

    client = destination.client()
    iteration = client.get_iteration(logger.iteration_id)
    assert iteration is not None and iteration.status is dd.IterationStatus.SUCCEEDED
    found = series(client, iteration.id)
    assert found["loss"] == [(i, value) for i, value in enumerate(losses)]
    assert [s for s, _ in found["epoch_loss"]] == [0, 1]
    assert found["epoch"] == [(0, 5.0)]
    params = parameters(client, iteration.id)
    assert params["lr"] == ["0.05"] and params["model/hidden"] == ["8"]


def test_fabric_ddp_ranks_share_one_identity_and_one_iteration(tmp_path: Path):
    store, out = tmp_path / "store", tmp_path / "out"
    out.mkdir()
    done = subprocess.run(
        [
            sys.executable,
            str(Path(__file__).with_name("fabric_ddp_script.py")),
            str(store),
            str(out),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr[-3000:]

    seen = [json.loads((out / f"fabric-{rank}.json").read_text()) for rank in (0, 1)]
    assert seen[0] == seen[1]
    assert seen[0]["version"].startswith("run-")
    client = dd.connect(str(store))
    (project,) = client.get_projects()
    (experiment,) = client.get_experiments(project.id)
    (iteration,) = client.get_iterations(experiment.id)
    assert iteration.status is dd.IterationStatus.SUCCEEDED
    assert parameters(client, iteration.id)["run/key"] == [seen[0]["version"]]
    assert [step for step, _ in series(client, iteration.id)["loss"]] == [0, 1]  # 2 batches each
