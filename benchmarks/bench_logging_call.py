"""The cost of one ``log_metrics`` call of 8 floats for the training loop, and delivery speed.

Run from the repository root::

    python benchmarks/bench_logging_call.py [--steps 2000] [--mlflow-server-steps 300]

Compared side by side, in one run, on this machine:

- the run writer over HTTP, against the DearDiary test server in its own process;
- the run writer on the local store (a temporary directory);
- Lightning's ``CSVLogger``;
- Lightning's ``MLFlowLogger`` with a file store, and against an ``mlflow server`` on 127.0.0.1
  (sqlite backend) in its own process.

Two measurements per logger:

- **call cost**: a loop that stands in for training (each step sleeps 1 ms, as a loop waiting on
  an accelerator would) logs 8 floats per step; every call is timed with ``perf_counter_ns``;
  p50 and p99 are reported. Background delivery runs during this loop, so its interference (the
  GIL) is part of the measurement.
- **throughput**: a burst of steps logged as fast as possible, then the logger's own flush
  (``flush``/``save``/``finalize``); points per second from the first call until the data is
  delivered (for the synchronous loggers, until the last call returned and the flush ended).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

KEYS = [f"metric_{k}" for k in range(8)]
STEP_SLEEP = 0.001


@dataclass
class Result:
    """One row of the table."""

    name: str
    steps: int
    p50_us: float
    p99_us: float
    points_per_s: float


def _values(step: int) -> dict[str, float]:
    return {key: step * 0.001 + k for k, key in enumerate(KEYS)}


def _percentile(samples: list[int], q: float) -> float:
    ordered = sorted(samples)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index] / 1000.0


def measure(
    name: str,
    make: Callable[[], Any],
    log: Callable[[Any, dict[str, float], int], None],
    finish: Callable[[Any], None],
    steps: int,
) -> Result:
    """Time every call in a paced loop, then a burst until delivered."""
    logger = make()
    samples: list[int] = []
    for step in range(steps):
        metrics = _values(step)
        start = time.perf_counter_ns()
        log(logger, metrics, step)
        samples.append(time.perf_counter_ns() - start)
        time.sleep(STEP_SLEEP)
    finish(logger)

    logger = make()
    started = time.perf_counter()
    for step in range(steps):
        log(logger, _values(step), step)
    finish(logger)
    elapsed = time.perf_counter() - started
    return Result(
        name,
        steps,
        _percentile(samples, 0.50),
        _percentile(samples, 0.99),
        steps * len(KEYS) / elapsed,
    )


# -- the contenders ---------------------------------------------------------------------------


def bench_writer(name: str, url: str, spool: str, steps: int) -> Result:
    from deardiary_lightning.delivery import open_run

    counter = iter(range(1_000_000))

    def make() -> Any:
        return open_run(url, project="bench", experiment=f"run-{next(counter)}", spool=spool)

    def log(run: Any, metrics: dict[str, float], step: int) -> None:
        run.log_metrics(metrics, step=step)

    def finish(run: Any) -> None:
        if not run.flush(timeout=300):
            raise RuntimeError(f"{name}: delivery did not finish")
        run.close()

    return measure(name, make, log, finish, steps)


def bench_csv(directory: str, steps: int) -> Result:
    from lightning.pytorch.loggers import CSVLogger

    def make() -> Any:
        return CSVLogger(save_dir=directory, name="bench")

    def log(logger: Any, metrics: dict[str, float], step: int) -> None:
        logger.log_metrics(metrics, step=step)

    def finish(logger: Any) -> None:
        logger.finalize("success")

    return measure("Lightning CSVLogger", make, log, finish, steps)


def bench_mlflow(name: str, tracking_uri: str, steps: int) -> Result:
    from lightning.pytorch.loggers import MLFlowLogger

    counter = iter(range(1_000_000))

    def make() -> Any:
        logger = MLFlowLogger(experiment_name=f"bench-{next(counter)}", tracking_uri=tracking_uri)
        _ = logger.experiment  # create the run before timing, as a Trainer does
        _ = logger.run_id
        return logger

    def log(logger: Any, metrics: dict[str, float], step: int) -> None:
        logger.log_metrics(metrics, step=step)

    def finish(logger: Any) -> None:
        logger.finalize("success")

    return measure(name, make, log, finish, steps)


# -- servers ----------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--steps", type=int, default=2000, help="steps per measurement")
    parser.add_argument(
        "--mlflow-steps", type=int, default=500, help="steps for MLFlowLogger (file store)"
    )
    parser.add_argument(
        "--mlflow-server-steps", type=int, default=300, help="steps for MLFlowLogger (server)"
    )
    parser.add_argument("--skip-mlflow-server", action="store_true")
    args = parser.parse_args()

    warnings.filterwarnings("ignore")
    os.environ.setdefault("MLFLOW_ENABLE_ASYNC_LOGGING", "false")
    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")  # the file store the issue asks for
    from benchmarks._servers import mlflow_server
    from tests.deardiary_server import server_in_subprocess

    results: list[Result] = []
    work = tempfile.mkdtemp(prefix="deardiary-bench-")
    try:
        with server_in_subprocess() as url:
            results.append(
                bench_writer("RunWriter, HTTP (server process)", url, f"{work}/spool", args.steps)
            )
        results.append(
            bench_writer("RunWriter, local store", f"{work}/store", f"{work}/spool2", args.steps)
        )
        results.append(bench_csv(f"{work}/csv", args.steps))
        results.append(
            bench_mlflow("MLFlowLogger, file store", f"file:{work}/mlruns", args.mlflow_steps)
        )
        if not args.skip_mlflow_server:
            with mlflow_server(work) as mlflow_url:
                results.append(
                    bench_mlflow(
                        "MLFlowLogger, mlflow server", mlflow_url, args.mlflow_server_steps
                    )
                )
    finally:
        shutil.rmtree(work, ignore_errors=True)

    csv_p50 = next(r.p50_us for r in results if r.name.startswith("Lightning CSV"))
    print()
    print(
        f"log_metrics of {len(KEYS)} floats per call; paced loop sleeps {STEP_SLEEP * 1e3:.0f} ms"
    )
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs")
    print()
    header = f"| {'logger':<34} | {'steps':>5} | {'p50 µs':>8} | {'p99 µs':>9} | {'points/s':>9} |"
    print(header)
    print("|" + "|".join("-" * (len(cell)) for cell in header.split("|")[1:-1]) + "|")
    for r in results:
        print(
            f"| {r.name:<34} | {r.steps:>5} | {r.p50_us:>8.1f} | {r.p99_us:>9.1f} | "
            f"{r.points_per_s:>9.0f} |"
        )
    writer_rows = [r for r in results if r.name.startswith("RunWriter")]
    print()
    for r in writer_rows:
        verdict = "meets" if r.p50_us <= csv_p50 and r.p99_us <= 50 else "misses"
        print(
            f"{r.name}: p50 {r.p50_us:.1f} µs vs CSVLogger {csv_p50:.1f} µs, p99 {r.p99_us:.1f} µs "
            f"(target p50 <= CSVLogger, p99 <= 50 µs): {verdict}"
        )


if __name__ == "__main__":
    main()
