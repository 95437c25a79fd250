"""PyTorch Lightning integration: the logger, its callback and LightningCLI support.

- :class:`DearDiaryLogger`: hyperparameters, metrics, checkpoints and the run's status.
- :class:`DearDiaryCallback`: Trainer-aware extras (exact failure status, deleting rotated-out
  checkpoints, registering the best checkpoint as a model version).
- :class:`DearDiarySaveConfigCallback`: LightningCLI's config saved per run and recorded with
  it (imported on first use: it needs ``jsonargparse``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from deardiary_lightning.lightning.callback import DearDiaryCallback
from deardiary_lightning.lightning.hparams import flatten_hparams
from deardiary_lightning.lightning.logger import DearDiaryLogger

if TYPE_CHECKING:
    from deardiary_lightning.lightning.cli import DearDiarySaveConfigCallback

__all__ = [
    "DearDiaryCallback",
    "DearDiaryLogger",
    "DearDiarySaveConfigCallback",
    "flatten_hparams",
]


def __getattr__(name: str) -> Any:
    if name == "DearDiarySaveConfigCallback":
        from deardiary_lightning.lightning.cli import DearDiarySaveConfigCallback

        return DearDiarySaveConfigCallback
    msg = f"module {__name__!r} has no attribute {name!r}"
    raise AttributeError(msg)
