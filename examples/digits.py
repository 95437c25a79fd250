"""The digits task shared by the examples: scikit-learn's bundled 8x8 digits and a small MLP.

Nothing is downloaded: ``load_digits`` ships with scikit-learn (1797 images, 10 classes).
"""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch import LightningDataModule, LightningModule
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import DataLoader, TensorDataset, random_split


class DigitsData(LightningDataModule):
    """Digits split 70/15/15 into train, validation and test sets (a fixed split).

    Args:
        batch_size: Samples per batch.
        seed: Seed of the split.
    """

    def __init__(self, batch_size: int = 64, seed: int = 0) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.batch_size = batch_size
        self.seed = seed

    def setup(self, stage: str) -> None:
        digits = load_digits()
        x = torch.tensor(digits.data, dtype=torch.float32) / 16.0
        y = torch.tensor(digits.target, dtype=torch.long)
        full = TensorDataset(x, y)
        sizes = [int(0.7 * len(full)), int(0.15 * len(full))]
        sizes.append(len(full) - sum(sizes))
        generator = torch.Generator().manual_seed(self.seed)
        self.train, self.val, self.test = random_split(full, sizes, generator=generator)

    def train_dataloader(self) -> DataLoader[Any]:
        return DataLoader(self.train, batch_size=self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader[Any]:
        return DataLoader(self.val, batch_size=256)

    def test_dataloader(self) -> DataLoader[Any]:
        return DataLoader(self.test, batch_size=256)


class DigitsMLP(LightningModule):
    """A two-layer perceptron for 8x8 digits.

    Args:
        hidden: Width of the hidden layer.
        lr: Learning rate of Adam.
        dropout: Dropout before the output layer.
    """

    def __init__(self, hidden: int = 64, lr: float = 3e-3, dropout: float = 0.1) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(
            nn.Linear(64, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, 10)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)  # type: ignore[no-any-return]

    def _step(self, batch: Any, stage: str) -> torch.Tensor:
        x, y = batch
        logits = self(x)
        loss = nn.functional.cross_entropy(logits, y)
        accuracy = (logits.argmax(dim=1) == y).float().mean()
        on_step = stage == "train"
        self.log(f"{stage}_loss", loss, on_step=on_step, on_epoch=True, prog_bar=True)
        self.log(f"{stage}_acc", accuracy, on_step=False, on_epoch=True, prog_bar=True)
        return loss

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._step(batch, "test")

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.hparams["lr"])
