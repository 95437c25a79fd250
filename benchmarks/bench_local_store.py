"""Local store throughput: appending a 100k-point run, reading it back, syncing it to a server.

Usage::

    python benchmarks/bench_local_store.py [--points 100000] [--keys 8]

A run logs ``points / keys`` steps of ``keys`` metrics each through ``Client.log_metrics`` (what
the Lightning logger's writer does), on the file store (every call durable: appended and
``fdatasync``-ed) and on the memory store. For scale, Lightning's CSVLogger logs the same values
in the same process (it keeps rows in memory and writes the file at the end, so it promises no
durability per call). Then the run is read back by a fresh process-level client, and synced to
the test suite's DearDiary-compatible server started in its own process.

Last, a smaller run (``--s3-points``, 8,000 by default so that this part stays under a minute)
goes to S3 (moto's server on 127.0.0.1, in this process) twice: once without packs, one object
per write as format 1 stores it, and once with packs, closed normally and cut off as by
``kill -9``. Each is read back by a fresh client, counting the objects it fetched.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

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


def _s3_readback(points: int, keys: list[str]) -> None:
    """Write a run to moto's S3 with and without packs; time reading it back."""
    from deardiary_lightning.backends.local import LocalBackend
    from deardiary_lightning.store import log as store_log
    from tests.support import local_s3, s3_options

    with local_s3("bench") as endpoint:
        _s3_cases(points, keys, s3_options(endpoint), LocalBackend, store_log)


def _s3_cases(
    points: int, keys: list[str], options: dict[str, Any], backend_type: Any, store_log: Any
) -> None:
    """Time the S3 layouts against one endpoint."""
    LocalBackend = backend_type
    steps = points // len(keys)
    default_fanout = store_log.PACK_FANOUT
    cases = [("no packs (format 1)", 0, True), ("packs, closed", default_fanout, True)]
    cases.append(("packs, writer killed", default_fanout, False))
    print()
    print(f"s3 read back (moto): {steps * len(keys):,} points, {steps:,} calls of {len(keys)} keys")
    header = f"{'layout':<34} {'write s':>9} {'objects':>9} {'fetched':>9} {'open s':>9}"
    print(header + f" {'read s':>9}")
    try:
        for name, fanout, close in cases:
            store_log.PACK_FANOUT = fanout
            url = f"s3://bench/{uuid.uuid4().hex}"
            writer = dd.connect(url, storage_options=options)
            start = time.perf_counter()
            iteration, _ = _append(writer, steps, keys)
            if close:
                writer.close()
            written = time.perf_counter() - start
            backend = writer.backend
            assert isinstance(backend, LocalBackend)
            backend.location.fs.invalidate_cache()
            objects = len(backend.location.fs.find(backend.location.path("log")))
            opened, reader = _timed(partial(dd.connect, url, storage_options=options))
            assert isinstance(reader, dd.Client) and isinstance(reader.backend, LocalBackend)
            fetched = reader.backend._reader.objects_read
            read, rows = _timed(partial(reader.get_metrics, iteration))
            assert isinstance(rows, list) and len(rows) == steps * len(keys)
            print(
                f"{name:<34} {written:>9.2f} {objects:>9,} {fetched:>9,} {opened:>9.2f} "
                f"{read:>9.2f}"
            )
    finally:
        store_log.PACK_FANOUT = default_fanout


def main() -> None:
    """Run the benchmark and print the tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=100_000)
    parser.add_argument("--keys", type=int, default=8)
    parser.add_argument("--no-sync", action="store_true", help="skip the sync to a server")
    parser.add_argument("--s3-points", type=int, default=8_000, help="0 skips the S3 part")
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

    if args.s3_points:
        _s3_readback(args.s3_points, keys)
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
