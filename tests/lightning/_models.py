"""Tiny Lightning models and data for the logger tests (a few batches, CPU, one thread)."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import torch
from lightning.pytorch import LightningDataModule, LightningModule
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import deardiary_lightning as dd

#: Batches per training epoch with the default data (40 samples, batches of 10).
BATCHES = 4


def loader(samples: int = 40, batch_size: int = 10, seed: int = 0) -> DataLoader[Any]:
    """A deterministic regression data set."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(samples, 4, generator=generator)
    y = x.sum(dim=1, keepdim=True)
    return DataLoader(TensorDataset(x, y), batch_size=batch_size)


class TinyModel(LightningModule):
    """A two-layer regressor logging step- and epoch-level values in every stage."""

    def __init__(self, lr: float = 0.05, hidden: int = 8, fail_at_step: int = -1) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(nn.Linear(4, hidden), nn.ReLU(), nn.Linear(hidden, 1))
        self.fail_at_step = fail_at_step
        self.interrupt_at_step = -1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)  # type: ignore[no-any-return]

    def _loss(self, batch: Any) -> torch.Tensor:
        x, y = batch
        return nn.functional.mse_loss(self(x), y)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        if self.global_step == self.fail_at_step:
            raise ValueError(f"boom at step {self.global_step}")
        if self.global_step == self.interrupt_at_step:
            raise KeyboardInterrupt
        loss = self._loss(batch)
        self.log("loss", loss, on_step=True, on_epoch=True)
        self.log("train_mae", loss.sqrt(), on_step=False, on_epoch=True)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        loss = self._loss(batch)
        self.log("val_loss", loss)
        self.log("val_batch_loss", loss, on_step=True, on_epoch=False)

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self.log("test_loss", self._loss(batch))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.hparams["lr"])


class TinyData(LightningDataModule):
    """The same data as a datamodule (for LightningCLI)."""

    def __init__(self, samples: int = 40, batch_size: int = 10) -> None:
        super().__init__()
        self.samples = samples
        self.batch_size = batch_size

    def train_dataloader(self) -> DataLoader[Any]:
        return loader(self.samples, self.batch_size, seed=0)

    def val_dataloader(self) -> DataLoader[Any]:
        return loader(self.samples // 2, self.batch_size, seed=1)

    def test_dataloader(self) -> DataLoader[Any]:
        return loader(self.samples // 2, self.batch_size, seed=2)


def trainer_kwargs(**overrides: Any) -> dict[str, Any]:
    """Quiet, fast Trainer settings; every step logged."""
    kwargs: dict[str, Any] = {
        "max_epochs": 3,
        "accelerator": "cpu",
        "devices": 1,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "log_every_n_steps": 1,
        "num_sanity_val_steps": 0,
    }
    kwargs.update(overrides)
    return kwargs


def series(client: dd.Client, iteration_id: dd.Id) -> dict[str, list[tuple[int, float]]]:
    """Every metric series of an iteration, key to ``(step, value)`` sorted by step."""
    found: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for point in client.get_metrics(iteration_id):
        found[point.key].append((point.step, point.value))
    return {key: sorted(points) for key, points in found.items()}


def steps(client: dd.Client, iteration_id: dd.Id) -> dict[str, list[int]]:
    """Every metric series of an iteration, key to its sorted steps."""
    return {key: [s for s, _ in points] for key, points in series(client, iteration_id).items()}


def parameters(client: dd.Client, iteration_id: dd.Id) -> dict[str, list[str]]:
    """Every parameter of an iteration, key to its values (one each unless duplicated)."""
    found: dict[str, list[str]] = defaultdict(list)
    for row in client.get_parameters(iteration_id):
        found[row.key].append(row.value)
    return dict(found)
