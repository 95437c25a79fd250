"""A training script that ends in a chosen way; run by test_lifecycle.py.

Usage: python lifecycle_script.py STORE MODE, with MODE one of:

- ``exit``: fit, then leave normally (the iteration ends at interpreter exit);
- ``raise``: fit, then fail outside the Trainer with an uncaught exception;
- ``sigterm``: receive SIGTERM during the fourth training step.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, Trainer

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from deardiary_lightning.lightning import DearDiaryLogger
from tests.lightning._models import TinyModel, loader, trainer_kwargs


class TerminateAt(Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer: Trainer, pl_module: Any, batch: Any, idx: int) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGTERM)


def main() -> None:
    store, mode = sys.argv[1], sys.argv[2]
    torch.set_num_threads(1)
    logger = DearDiaryLogger(url=store, project="p", experiment="life")
    callbacks = [TerminateAt(3)] if mode == "sigterm" else []
    trainer = Trainer(logger=logger, callbacks=callbacks, **trainer_kwargs(max_epochs=2))
    trainer.fit(TinyModel(), loader(), loader(20, seed=1))
    print("iteration", logger.iteration_id, flush=True)
    if mode == "raise":
        raise RuntimeError("evaluation after training failed")


if __name__ == "__main__":
    main()
