"""Train with two CPU processes (DDP over gloo); run by test_ddp.py as a script.

Usage: python ddp_script.py STORE OUT STRATEGY

Fits, then tests in a second stage (under ddp_spawn and ddp_fork, in new processes). Each
process writes what its logger reports at construction and after fit to OUT/main-<rank>.json
(one process under ddp_spawn and ddp_fork, one per rank under ddp), and every rank writes what
it reports when training starts to OUT/start-<rank>.json.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, Trainer

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from deardiary_lightning.lightning import DearDiaryLogger
from tests.lightning._models import TinyModel, loader, trainer_kwargs


def identity(logger: DearDiaryLogger) -> dict[str, Any]:
    return {
        "name": logger.name,
        "version": logger.version,
        "save_dir": logger.save_dir,
        "log_dir": logger.log_dir,
    }


class Report(Callback):
    def __init__(self, out: Path) -> None:
        self.out = out

    def on_train_start(self, trainer: Trainer, pl_module: Any) -> None:
        seen = identity(trainer.logger)  # type: ignore[arg-type]
        seen["checkpoint_dir"] = trainer.checkpoint_callback.dirpath  # type: ignore[union-attr]
        (self.out / f"start-{trainer.global_rank}.json").write_text(json.dumps(seen))


def main() -> None:
    store, out, strategy = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
    torch.set_num_threads(1)
    logger = DearDiaryLogger(url=store, project="p", experiment="ddp")
    seen: dict[str, Any] = {"built": identity(logger)}
    trainer = Trainer(
        logger=logger,
        callbacks=[Report(out)],
        **trainer_kwargs(max_epochs=2, strategy=strategy, devices=2),
    )
    model = TinyModel()
    trainer.fit(model, loader(), loader(20, seed=1))
    seen["after_fit"] = identity(logger)
    trainer.test(model, loader(20, seed=2))  # a second stage: the same iteration
    (out / f"main-{trainer.global_rank}.json").write_text(json.dumps(seen))
    if trainer.global_rank == 0:
        logger.end()


if __name__ == "__main__":
    main()
