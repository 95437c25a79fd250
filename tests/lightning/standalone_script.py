"""Use the logger with only the standalone ``pytorch_lightning`` package importable.

Run by test_standalone.py: ``import lightning`` is made to fail first, so the logger must fall
back to ``pytorch_lightning``. Prints the package the logger subclassed and the iteration id.
Usage: python standalone_script.py STORE
"""

from __future__ import annotations

import importlib.abc
import sys
from pathlib import Path
from typing import Any


class _NoUnifiedLightning(importlib.abc.MetaPathFinder):
    def find_spec(self, name: str, path: Any, target: Any = None) -> None:
        if name == "lightning" or name.startswith("lightning."):
            raise ModuleNotFoundError(f"No module named {name!r} (blocked for this test)")


sys.meta_path.insert(0, _NoUnifiedLightning())
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import pytorch_lightning as pl  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

from deardiary_lightning.lightning import DearDiaryCallback, DearDiaryLogger  # noqa: E402
from deardiary_lightning.lightning._compat import PACKAGE  # noqa: E402


class Model(pl.LightningModule):
    def __init__(self, lr: float = 0.1) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.layer = nn.Linear(4, 1)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = nn.functional.mse_loss(self.layer(x), y)
        self.log("loss", loss, on_step=True, on_epoch=True)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.hparams["lr"])


def main() -> None:
    torch.set_num_threads(1)
    assert "lightning" not in sys.modules
    data = DataLoader(TensorDataset(torch.randn(40, 4), torch.randn(40, 1)), batch_size=10)
    logger = DearDiaryLogger(url=sys.argv[1], project="p", experiment="standalone")
    trainer = pl.Trainer(
        logger=logger,
        callbacks=[DearDiaryCallback()],
        max_epochs=2,
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=1,
    )
    trainer.fit(Model(), data)
    logger.end()
    print(PACKAGE, logger.iteration_id, "lightning" in sys.modules)


if __name__ == "__main__":
    main()
