"""Local store throughput: appending a 100k-point run, reading it back, syncing it to a server.

Usage::

    python benchmarks/bench_local_store.py [--points 100000] [--keys 8]

A run logs ``points / keys`` steps of ``keys`` metrics each through ``Client.log_metrics`` (what
the Lightning logger's writer does), on the file store (every call durable: appended and
``fdatasync``-ed) and on the memory store. For scale, Lightning's CSVLogger logs the same values
in the same process (it keeps rows in memory and writes the file at the end, so it promises no
durability per call). Then the run is read back by a fresh process-level client, and synced to
the test suite's DearDiary-compatible server started in its own process.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import deardiary_lightning as dd  # noqa: E402
from deardiary_lightning.sync import sync  # noqa: E402


def _append(client: dd.Client, steps: int, keys: list[str]) -> tuple[dd.Id, list[float]]:
    """Log a run; return its iteration id and the duration of every call, in seconds."""
    project = client.create_project("bench")
    iteration = client.create_iteration(client.create_experiment(project, "append"))
    timings = []
    clock = time.perf_counter
    for step in range(steps):
        values = {key: step * 0.001 + index for index, key in enumerate(keys)}
        start = clock()
        client.log_metrics(iteration, values, step=step)
        timings.append(clock() - start)
    return iteration, timings


def _csv_logger(steps: int, keys: list[str], directory: Path) -> list[float]:
    """Log the same values with Lightning's CSVLogger; return per-call durations."""
    from lightning.pytorch.loggers import CSVLogger

    logger = CSVLogger(str(directory), name="bench")
    timings = []
    clock = time.perf_counter
    for step in range(steps):
        values = {key: step * 0.001 + index for index, key in enumerate(keys)}
        start = clock()
        logger.log_metrics(values, step=step)
        timings.append(clock() - start)
    start = clock()
    logger.save()
    logger.finalize("success")
    timings[-1] += clock() - start
    return timings


def _row(name: str, points: int, timings: list[float]) -> str:
    total = sum(timings)
    ordered = sorted(timings)
    p50 = statistics.median(ordered) * 1e6
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1e6
    return f"{name:<34} {points / total:>12,.0f} {p50:>10.1f} {p99:>10.1f} {total:>9.2f}"


def _timed(fn: Callable[[], object]) -> tuple[float, object]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def main() -> None:
    """Run the benchmark and print the tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=100_000)
    parser.add_argument("--keys", type=int, default=8)
    parser.add_argument("--no-sync", action="store_true", help="skip the sync to a server")
    args = parser.parse_args()
    keys = [f"metric_{i}" for i in range(args.keys)]
    steps = args.points // args.keys
    points = steps * args.keys
    workdir = Path(tempfile.mkdtemp(prefix="bench-local-store-"))

    print(f"append: {points:,} points, {steps:,} calls of {args.keys} keys")
    print(f"{'writer':<34} {'points/s':>12} {'p50 us':>10} {'p99 us':>10} {'total s':>9}")
    store = workdir / "store"
    file_client = dd.connect(store)
    iteration, timings = _append(file_client, steps, keys)
    print(_row("local store, file (fdatasync)", points, timings))
    memory_client = dd.connect(f"memory://bench-{uuid.uuid4().hex}")
    _, memory_timings = _append(memory_client, steps, keys)
    print(_row("local store, memory://", points, memory_timings))
    print(_row("lightning CSVLogger (no fsync)", points, _csv_logger(steps, keys, workdir)))

    print()
    print(f"{'read back (new client)':<34} {'seconds':>12} {'points/s':>10}")
    opened, reader = _timed(lambda: dd.connect(store))
    assert isinstance(reader, dd.Client)
    print(f"{'open store (replay the log)':<34} {opened:>12.2f} {points / opened:>10,.0f}")
    read, rows = _timed(lambda: reader.get_metrics(iteration))
    assert isinstance(rows, list) and len(rows) == points
    print(f"{'get_metrics (all pages)':<34} {read:>12.2f} {points / read:>10,.0f}")

    if args.no_sync:
        return
    from tests.deardiary_server import spawn

    url, process = spawn(auth=False, id_kind="int", data_dir=workdir / "server")
    try:
        with dd.connect(url) as target:
            print()
            print(f"{'sync to the test server':<34} {'seconds':>12} {'points/s':>10}")
            elapsed, report = _timed(lambda: sync(store, target))
            print(f"{'first sync (everything)':<34} {elapsed:>12.2f} {points / elapsed:>10,.0f}")
            again, second = _timed(lambda: sync(store, target))
            print(f"{'second sync (nothing new)':<34} {again:>12.2f} {'-':>10}")
            print(f"  {report}")
            print(f"  {second}")
    finally:
        process.terminate()
        process.wait(timeout=30)


if __name__ == "__main__":
    main()
