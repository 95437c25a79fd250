"""PyTorch Lightning integration: the logger, its callback and LightningCLI support.

- :class:`DearDiaryLogger`: hyperparameters, metrics, checkpoints and the run's status.
- :class:`DearDiaryCallback`: Trainer-aware extras (exact failure status, deleting rotated-out
  checkpoints, registering the best checkpoint as a model version).
- :class:`DearDiarySaveConfigCallback`: LightningCLI's config saved per run and recorded with
  it.
"""

from __future__ import annotations

from deardiary_lightning.lightning.callback import DearDiaryCallback
from deardiary_lightning.lightning.cli import DearDiarySaveConfigCallback
from deardiary_lightning.lightning.hparams import flatten_hparams
from deardiary_lightning.lightning.logger import DearDiaryLogger

__all__ = [
    "DearDiaryCallback",
    "DearDiaryLogger",
    "DearDiarySaveConfigCallback",
    "flatten_hparams",
]
