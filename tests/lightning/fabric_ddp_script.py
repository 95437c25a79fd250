"""Fabric with two CPU processes (DDP over gloo); run by test_fabric.py as a script.

Usage: python fabric_ddp_script.py STORE OUT

Every rank writes what its logger reports to OUT/fabric-<rank>.json; rank zero logs a few
values and ends the run.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from lightning.fabric import Fabric

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from deardiary_lightning.lightning import DearDiaryLogger
from tests.lightning._models import TinyModel, loader


def main() -> None:
    store, out = sys.argv[1], Path(sys.argv[2])
    torch.set_num_threads(1)
    logger = DearDiaryLogger(url=store, project="p", experiment="fabric-ddp")
    fabric = Fabric(accelerator="cpu", devices=2, strategy="ddp", loggers=[logger])
    fabric.launch()
    model = TinyModel()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    model, optimizer = fabric.setup(model, optimizer)
    for batch in fabric.setup_dataloaders(loader()):
        x, y = batch
        loss = torch.nn.functional.mse_loss(model(x), y)
        optimizer.zero_grad()
        fabric.backward(loss)
        optimizer.step()
        fabric.log_dict({"loss": loss})
    seen = {"version": logger.version, "log_dir": logger.log_dir, "name": logger.name}
    (out / f"fabric-{fabric.global_rank}.json").write_text(json.dumps(seen))
    fabric.barrier()
    if fabric.global_rank == 0:
        logger.end()


if __name__ == "__main__":
    main()
