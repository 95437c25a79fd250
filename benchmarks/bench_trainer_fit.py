"""What a logger costs the training loop: ``Trainer.fit`` logging every step, side by side.

Runs, in one process and interleaved, the same ``Trainer.fit`` of a tiny model that logs three
step-level values at every step (plus two epoch-level ones), with:

- no logger (the baseline),
- ``DearDiaryLogger`` to a DearDiary test server in its own process (HTTP on 127.0.0.1),
- ``DearDiaryLogger`` to the local store (a directory),
- ``CSVLogger``, ``TensorBoardLogger``,
- ``MLFlowLogger`` with a file store, and with an ``mlflow server`` on 127.0.0.1 (subprocess).

For each it reports the median over the repeats of:

- ``fit s``: the wall time of ``trainer.fit``;
- ``loop overhead/step``: what the logger adds to the training loop, per logged step:
  ``(fit - finalize) - (baseline fit)``, divided by the logged steps, where the baseline is a
  no-logger fit run right before it (pairs cancel the drift of a shared machine);
- ``in log call``: the median time spent inside the logger's ``log_metrics`` plus ``save``,
  per logged step (what the training thread waits for at each step);
- ``finalize s``: the time of ``finalize`` at the end of ``fit`` (Lightning calls it inside
  ``fit``): flushing files, or for DearDiary waiting until the destination has every value.

Usage::

    python benchmarks/bench_trainer_fit.py                 # everything, about 6 minutes
    python benchmarks/bench_trainer_fit.py --steps 500 --repeats 1 --only csv deardiary-local
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import torch
from lightning.pytorch import LightningModule, Trainer
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

BATCH = 8
# Below this share of all cores in use, the machine counts as idle between fits.
IDLE_CPU_PERCENT = 20.0


class TinyModel(LightningModule):
    """One linear layer; three step-level values and two epoch-level values per step."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(8, 1)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        out = self.layer(x)
        loss = nn.functional.mse_loss(out, y)
        self.log("loss", loss, on_step=True, on_epoch=True)
        self.log("mae", (out - y).abs().mean(), on_step=True, on_epoch=True)
        self.log("lr", 0.01, on_step=True, on_epoch=False)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01)


def data(batches: int) -> DataLoader[Any]:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(batches * BATCH, 8, generator=generator)
    return DataLoader(TensorDataset(x, x.sum(1, keepdim=True)), batch_size=BATCH)


@dataclass
class Timed:
    """Wall time inside a logger's ``log_metrics`` and ``save`` (per step) and ``finalize``."""

    calls: list[float] = field(default_factory=list)
    finalizing: float = 0.0
    _current: float = 0.0

    def wrap(self, logger: Any) -> None:
        log_metrics, save, finalize = logger.log_metrics, logger.save, logger.finalize

        def timed_finalize(status: str) -> None:
            start = time.perf_counter()
            finalize(status)
            self.finalizing += time.perf_counter() - start

        def timed_log(*args: Any, **kwargs: Any) -> None:
            start = time.perf_counter()
            log_metrics(*args, **kwargs)
            self._current += time.perf_counter() - start

        def timed_save() -> None:
            start = time.perf_counter()
            save()
            self.calls.append(self._current + time.perf_counter() - start)
            self._current = 0.0

        logger.log_metrics, logger.save = timed_log, timed_save
        logger.finalize = timed_finalize


@dataclass
class Case:
    """One logger configuration: builds a fresh logger in a directory, and ends it."""

    name: str
    make: Callable[[Path], Any]
    end: Callable[[Any], None] = lambda logger: None
    fits: list[float] = field(default_factory=list)
    loops: list[float] = field(default_factory=list)
    finals: list[float] = field(default_factory=list)
    in_call: list[float] = field(default_factory=list)
    overheads: list[float] = field(default_factory=list)


def settle(limit: float = 30.0) -> None:
    """Wait, at most ``limit`` seconds, until the machine is idle.

    A server still starting up or catching up after the previous case would otherwise slow
    down the next fit (a first baseline fit ran at a third of its speed beside a booting
    ``mlflow server``).
    """
    deadline = time.monotonic() + limit
    while psutil.cpu_percent(interval=0.5) > IDLE_CPU_PERCENT and time.monotonic() < deadline:
        pass


def run_fit(case: Case, steps: int, epochs: int, workdir: Path) -> None:
    torch.manual_seed(0)
    logger = case.make(workdir)
    timer = Timed()
    if logger is not None:
        timer.wrap(logger)
    trainer = Trainer(
        max_epochs=epochs,
        logger=logger if logger is not None else False,
        log_every_n_steps=1,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        devices=1,
    )
    loader = data(steps // epochs)
    start = time.perf_counter()
    trainer.fit(TinyModel(), loader)
    elapsed = time.perf_counter() - start
    case.fits.append(elapsed)
    case.loops.append(elapsed - timer.finalizing)
    case.finals.append(timer.finalizing)
    if timer.calls:
        case.in_call.append(statistics.median(timer.calls))
    if logger is not None:
        case.end(logger)


def build_cases(stack: contextlib.ExitStack, root: Path, only: set[str] | None) -> list[Case]:
    from lightning.pytorch.loggers import CSVLogger, MLFlowLogger, TensorBoardLogger

    from deardiary_lightning.lightning import DearDiaryLogger

    def wanted(name: str) -> bool:
        return only is None or name in only

    def end_deardiary(logger: DearDiaryLogger) -> None:
        logger.end()

    cases = [Case("no logger", lambda d: None)]
    if wanted("deardiary-http"):
        from tests.deardiary_server import server_in_subprocess

        server = stack.enter_context(server_in_subprocess(auth=False))
        cases.append(
            Case(
                "DearDiaryLogger (HTTP)",
                lambda d: DearDiaryLogger(
                    url=server, store=str(d / "spool"), save_dir=str(d), log_environment=False
                ),
                end_deardiary,
            )
        )
    if wanted("deardiary-local"):
        cases.append(
            Case(
                "DearDiaryLogger (local)",
                lambda d: DearDiaryLogger(
                    url=str(d / "store"), save_dir=str(d), log_environment=False
                ),
                end_deardiary,
            )
        )
    if wanted("csv"):
        cases.append(Case("CSVLogger", lambda d: CSVLogger(str(d))))
    if wanted("tensorboard"):
        cases.append(Case("TensorBoardLogger", lambda d: TensorBoardLogger(str(d))))
    if wanted("mlflow-file"):
        cases.append(
            Case("MLFlowLogger (file)", lambda d: MLFlowLogger(tracking_uri=f"file:{d / 'mlruns'}"))
        )
    if wanted("mlflow-server"):
        from benchmarks._servers import mlflow_server

        tracking = stack.enter_context(mlflow_server(root))
        cases.append(Case("MLFlowLogger (server)", lambda d: MLFlowLogger(tracking_uri=tracking)))
    return cases


def main() -> None:
    parser = argparse.ArgumentParser(description="Trainer.fit overhead of loggers")
    parser.add_argument("--steps", type=int, default=1500, help="logged steps per fit")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--only",
        nargs="*",
        help="deardiary-http deardiary-local csv tensorboard mlflow-file mlflow-server",
    )
    args = parser.parse_args()

    warnings.filterwarnings("ignore")
    logging.getLogger("lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    logging.getLogger("mlflow").setLevel(logging.ERROR)
    os.environ.setdefault("MLFLOW_ENABLE_ASYNC_LOGGING", "false")
    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")  # the file store is what we compare
    torch.set_num_threads(1)

    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        root = Path(tmp)
        cases = build_cases(stack, root, set(args.only) if args.only else None)
        warm = Case("warm-up", lambda d: None)
        run_fit(warm, min(args.steps, 200), 1, root)

        baseline = cases[0]
        for repeat in range(args.repeats):
            for index, case in enumerate(cases[1:], start=1):
                for which in (baseline, case):
                    settle()
                    workdir = root / f"r{repeat}-c{index}-{which is case}"
                    workdir.mkdir()
                    run_fit(which, args.steps, args.epochs, workdir)
                case.overheads.append(case.loops[-1] - baseline.loops[-1])
            print(f"repeat {repeat + 1}/{args.repeats} done", file=sys.stderr)

    print(
        f"\nTrainer.fit, {args.steps} logged steps ({args.epochs} epochs), 3 step-level + 2 "
        f"epoch-level values per step; median of {args.repeats} repeats\n"
    )
    header = ("logger", "fit s", "loop overhead/step", "in log call", "finalize s")
    print("| {:<24} | {:>6} | {:>18} | {:>11} | {:>10} |".format(*header))
    print(f"|{'-' * 26}|{'-' * 8}|{'-' * 20}|{'-' * 13}|{'-' * 12}|")
    for case in cases:
        fit = statistics.median(case.fits)
        call = f"{statistics.median(case.in_call) * 1e6:.0f} µs" if case.in_call else "-"
        extra = "-"
        if case.overheads:
            extra = f"{statistics.median(case.overheads) / args.steps * 1e6:.0f} µs"
        final = f"{statistics.median(case.finals):.2f}"
        print(f"| {case.name:<24} | {fit:6.2f} | {extra:>18} | {call:>11} | {final:>10} |")


if __name__ == "__main__":
    main()
