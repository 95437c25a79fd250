"""Sweep the learning rate: one parent iteration, each trial recorded as its child.

Run it from the repository root::

    python examples/sweep.py

The parent iteration holds the sweep's settings, each trial's final validation accuracy (as the
series ``trial_val_acc``, one step per trial) and the best trial; every trial is a full run of
its own (hyperparameters, metrics, status) created with ``parent_iteration_id``.
"""

from __future__ import annotations

import argparse

import torch
from digits import DigitsData, DigitsMLP
from lightning.pytorch import Trainer, seed_everything

import deardiary_lightning as dd
from deardiary_lightning.lightning import DearDiaryLogger


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lrs", type=float, nargs="+", default=[1e-3, 3e-3, 1e-2])
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(2)

    parent = DearDiaryLogger(
        project="digits", experiment="lr-sweep", tags=["sweep"], notes="learning-rate sweep"
    )
    parent.log_hyperparams({"sweep": {"lrs": args.lrs, "epochs": args.epochs}})

    results: list[tuple[float, float, dd.Id | None]] = []
    for index, lr in enumerate(args.lrs):
        seed_everything(index, verbose=False)
        with DearDiaryLogger(
            project="digits",
            experiment="lr-sweep",
            parent_iteration_id=parent.iteration_id,
            tags=["trial"],
            log_environment=False,
        ) as trial:
            trainer = Trainer(
                max_epochs=args.epochs,
                logger=trial,
                enable_checkpointing=False,
                enable_progress_bar=False,
                enable_model_summary=False,
                log_every_n_steps=5,
            )
            trainer.fit(DigitsMLP(lr=lr), DigitsData())
            accuracy = float(trainer.callback_metrics["val_acc"])
        results.append((accuracy, lr, trial.iteration_id))
        parent.log_metrics({"trial_val_acc": accuracy}, step=index)
        print(f"trial {index}: lr={lr:g} val_acc={accuracy:.3f} iteration {trial.iteration_id!r}")

    best_accuracy, best_lr, best_iteration = max(results, key=lambda r: r[0])
    parent.log_hyperparams({"best": {"lr": best_lr, "iteration": best_iteration}})
    parent.end()

    print(f"best: lr={best_lr:g} (val_acc {best_accuracy:.3f}, iteration {best_iteration!r})")
    if parent.iteration_id is not None and not parent.url.startswith("http"):
        with dd.connect(parent.url) as client:
            children = client.get_child_iterations(parent.iteration_id)
        print(f"parent iteration {parent.iteration_id!r} has {len(children)} trials")


if __name__ == "__main__":
    main()
