"""A training script that ends in a chosen way; run by test_lifecycle.py.

Usage: python lifecycle_script.py STORE MODE, with MODE one of:

- ``exit``: fit, then leave normally (the iteration ends at interpreter exit);
- ``raise``: fit, then fail outside the Trainer with an uncaught exception;
- ``sigterm``: receive SIGTERM during the fourth training step;
- ``sigterm-checkpoints``: save checkpoints (``log_checkpoints=True``), then receive SIGTERM
  during the second epoch;
- ``sigterm-stuck``: receive SIGTERM, then stay busy in that training step far longer than the
  SIGTERM grace period (shortened here to a few seconds);
- ``sigterm-after-fit``: receive SIGTERM in ``on_fit_end``, after the training loop is over;
- ``ddp-sigterm``: as ``sigterm-checkpoints``, under DDP with two processes (rank zero receives
  the signal and Lightning passes it to the other rank, as a cluster scheduler's would).

The script prints ``iteration <id>`` when ``fit`` returns, and ``save <path>`` for each
checkpoint file the Trainer writes (so the test can compare the uploads with the files).
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from deardiary_lightning.delivery import shutdown
from deardiary_lightning.lightning import DearDiaryLogger
from tests.lightning._models import TinyModel, loader, trainer_kwargs


class TerminateAt(Callback):
    def __init__(self, step: int, busy: float = 0.0) -> None:
        self.step = step
        self.busy = busy

    def on_train_batch_start(self, trainer: Trainer, pl_module: Any, batch: Any, idx: int) -> None:
        if trainer.global_step == self.step and trainer.global_rank == 0:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(self.busy)


class TerminateAfterFit(Callback):
    def on_fit_end(self, trainer: Trainer, pl_module: Any) -> None:
        os.kill(os.getpid(), signal.SIGTERM)


class ReportSaves(ModelCheckpoint):
    def _save_checkpoint(self, trainer: Trainer, filepath: str) -> None:
        super()._save_checkpoint(trainer, filepath)
        print("save", os.path.abspath(filepath), flush=True)


def main() -> None:
    store, mode = sys.argv[1], sys.argv[2]
    torch.set_num_threads(1)
    checkpoints = mode in ("sigterm-checkpoints", "sigterm-after-fit", "ddp-sigterm")
    wait = 2.0 if mode == "sigterm-stuck" else 10.0
    logger = DearDiaryLogger(
        url=store, project="p", experiment="life", log_checkpoints=checkpoints, close_timeout=wait
    )
    callbacks: list[Callback] = []
    if mode == "sigterm":
        callbacks.append(TerminateAt(3))
    elif mode == "sigterm-checkpoints":
        callbacks.append(TerminateAt(6))  # epoch 1; epoch 0's checkpoint is saved at step 4
    elif mode == "ddp-sigterm":
        callbacks.append(TerminateAt(3))  # epoch 1: two steps per epoch and rank
    elif mode == "sigterm-stuck":
        shutdown.LOOP_GRACE = 1.0
        callbacks.append(TerminateAt(3, busy=300.0))
    elif mode == "sigterm-after-fit":
        callbacks.append(TerminateAfterFit())
    if checkpoints:
        callbacks.append(ReportSaves(monitor="val_loss", save_top_k=1, save_last=True))
    distributed = {"strategy": "ddp", "devices": 2} if mode == "ddp-sigterm" else {}
    trainer = Trainer(
        logger=logger, callbacks=callbacks, **trainer_kwargs(max_epochs=2, **distributed)
    )
    trainer.fit(TinyModel(), loader(), loader(20, seed=1))
    print("iteration", logger.iteration_id, flush=True)
    if mode == "raise":
        raise RuntimeError("evaluation after training failed")


if __name__ == "__main__":
    main()
