"""Train a small MLP on scikit-learn's digits and record the run in DearDiary.

Run it from the repository root::

    python examples/train_digits.py

Without configuration the run goes to the local store ``./deardiary``; set ``DEARDIARY_URL``
(and ``DEARDIARY_USERNAME``/``DEARDIARY_PASSWORD``) to send it to a DearDiary server instead.
The script prints where the run went and how to read it back.
"""

from __future__ import annotations

import argparse

import torch
from digits import DigitsData, DigitsMLP
from lightning.pytorch import Trainer, seed_everything
from lightning.pytorch.callbacks import ModelCheckpoint

import deardiary_lightning as dd
from deardiary_lightning.lightning import DearDiaryCallback, DearDiaryLogger


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--project", default="digits")
    parser.add_argument("--experiment", default="mlp")
    args = parser.parse_args()

    seed_everything(0, verbose=False)
    torch.set_num_threads(2)
    logger = DearDiaryLogger(
        project=args.project,
        experiment=args.experiment,
        tags=["example", "digits"],
        log_checkpoints=True,
    )
    trainer = Trainer(
        max_epochs=args.epochs,
        logger=logger,
        callbacks=[
            ModelCheckpoint(monitor="val_acc", mode="max", save_last=True),
            DearDiaryCallback(register_model="digits-mlp"),
        ],
        log_every_n_steps=5,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    model = DigitsMLP(hidden=args.hidden, lr=args.lr)
    data = DigitsData()
    trainer.fit(model, data)
    trainer.test(model, data, verbose=False)
    logger.end()

    accuracy = float(trainer.callback_metrics["test_acc"])
    print(f"test accuracy: {accuracy:.3f}")
    print(
        f"run recorded at {logger.url}: project {args.project!r}, experiment "
        f"{args.experiment!r}, iteration {logger.iteration_id!r}"
    )
    client = dd.connect(logger.url) if not logger.url.startswith("http") else None
    if client is not None:
        points = client.get_metrics(logger.iteration_id)
        print(f"{len(points)} metric points, e.g. val_acc by epoch:")
        for point in points:
            if point.key == "val_acc":
                print(f"  epoch {point.step}: {point.value:.3f}")
        client.close()
    print(
        "read it back in Python: deardiary_lightning.connect("
        f"{logger.url!r}).get_metrics({logger.iteration_id!r})"
    )


if __name__ == "__main__":
    main()
