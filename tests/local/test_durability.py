"""Acknowledged writes survive kill -9, and two writer processes share a store safely."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import IO, Any

import pytest

import deardiary_lightning as dd
from tests.local.conftest import StoreSpec, make_spec

WRITER = Path(__file__).with_name("_writer.py")
REPO = Path(__file__).resolve().parents[2]


def _start_writer(
    spec: StoreSpec, iteration: dd.Id, label: str, count: int, pack_fanout: int | None = None
) -> subprocess.Popen[str]:
    options = dict(spec.storage_options)
    command = [
        sys.executable,
        str(WRITER),
        spec.url,
        json.dumps(options),
        str(iteration),
        label,
        str(count),
        *([] if pack_fanout is None else [str(pack_fanout)]),
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env, cwd=REPO)


def _acks(stream: IO[str], limit: int | None = None) -> tuple[dict[str, int], list[str]]:
    """Read acknowledgement lines: metric id -> step, and parameter ids."""
    metrics: dict[str, int] = {}
    parameters: list[str] = []
    steps = 0
    for line in stream:
        parts = line.split()
        if parts[0] == "ready":
            continue
        if parts[0] == "param":
            parameters.append(parts[1])
            continue
        for metric_id in parts[1:]:
            metrics[metric_id] = int(parts[0])
        steps += 1
        if limit is not None and steps >= limit:
            break
    return metrics, parameters


def _setup(spec: StoreSpec) -> tuple[dd.Client, dd.Id]:
    client = spec.connect()
    project = client.create_project("durability")
    iteration = client.create_iteration(client.create_experiment(project, "e"))
    return client, iteration


def test_kill_9_keeps_every_acknowledged_write(tmp_path: Path) -> None:
    spec = StoreSpec("file", str(tmp_path / "store"), {})
    client, iteration = _setup(spec)
    writer = _start_writer(spec, iteration, "w", 1_000_000)
    assert writer.stdout is not None
    try:
        acked, params = _acks(writer.stdout, limit=400)
    finally:
        os.kill(writer.pid, signal.SIGKILL)
        writer.wait()
    assert writer.returncode == -signal.SIGKILL
    assert len(acked) == 800

    reopened = dd.connect(spec.url)
    stored = {m.id: m for m in reopened.get_metrics(iteration)}
    for metric_id, step in acked.items():
        assert stored[metric_id].step == step
    assert len(stored) - len(acked) in (0, 2)  # at most the batch in flight at the kill
    stored_params = {p.id for p in reopened.get_parameters(iteration)}
    assert set(params) <= stored_params
    reopened.create_metric(iteration, "after", 1.0)
    assert len(dd.connect(spec.url).get_metrics(iteration)) == len(stored) + 1
    client.close()


@pytest.mark.parametrize("kind", ["file", "s3"])
def test_two_writer_processes(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    spec = make_spec(kind, tmp_path, request)
    client, iteration = _setup(spec)
    count = 300 if kind == "file" else 60
    writers = [_start_writer(spec, iteration, label, count) for label in ("one", "two")]
    results: list[tuple[dict[str, int], list[str]]] = []
    for writer in writers:
        assert writer.stdout is not None
        results.append(_acks(writer.stdout))
        assert writer.wait(timeout=120) == 0

    all_metric_ids = [m for acked, _ in results for m in acked]
    all_param_ids = [p for _, params in results for p in params]
    assert len(all_metric_ids) == len(set(all_metric_ids)) == 2 * 2 * count
    assert len(set(all_param_ids)) == len(all_param_ids)

    reopened = spec.connect()
    rows = reopened.get_metrics(iteration)
    assert len(rows) == 4 * count
    assert {m.id for m in rows} == set(all_metric_ids)
    per_key: Counter[Any] = Counter(m.key for m in rows)
    assert set(per_key.values()) == {count}
    assert [m.step for m in rows] == sorted(m.step for m in rows)
    assert {p.id for p in reopened.get_parameters(iteration)} == set(all_param_ids)
    assert len(client.get_metrics(iteration)) == 4 * count
    client.close()
