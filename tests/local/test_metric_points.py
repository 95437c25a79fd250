"""Points of many steps in one durable write, and no second copy when a failed write is redone."""

from __future__ import annotations

import os
from collections import Counter
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

import deardiary_lightning as dd
from deardiary_lightning.backends.base import MetricPoint
from deardiary_lightning.backends.local import LocalBackend
from deardiary_lightning.errors import ResponseLostError, UnprocessableError
from tests.local.conftest import StoreSpec

START = datetime(2026, 1, 2, 3, 4, 5, 6000)


def _points(steps: range) -> list[MetricPoint]:
    """Three keys per step, each step with its own time."""
    return [
        (key, step * 10.0 + index, step, START + timedelta(milliseconds=step))
        for step in steps
        for index, key in enumerate(("loss", "acc", "lr"))
    ]


def _run(client: dd.Client) -> dd.Id:
    project = client.create_project("points")
    experiment = client.create_experiment(project, "e")
    return client.create_iteration(experiment)


def _commits(backend: LocalBackend) -> list[int]:
    """Record how many records each durable write of ``backend`` carries."""
    sizes: list[int] = []
    commit = backend._commit

    def counted(method: str, records: list[dict[str, Any]]) -> None:
        sizes.append(len(records))
        commit(method, records)

    backend._commit = counted  # type: ignore[method-assign]
    return sizes


def test_points_of_many_steps_take_one_write_and_read_back(store: StoreSpec) -> None:
    client = store.connect()
    iteration = _run(client)
    backend = client.backend
    assert isinstance(backend, LocalBackend) and backend.points_in_one_write
    sizes = _commits(backend)

    ids = backend.log_metric_points(iteration, _points(range(50)))

    assert sizes == [50]
    assert len(set(ids)) == 150
    client.close()

    fresh = store.connect()
    rows = fresh.get_metrics(iteration)
    assert [(row.key, row.value, row.step) for row in rows] == [
        (key, value, step) for key, value, step, _ in _points(range(50))
    ]
    assert [row.recorded_at for row in rows] == [when for *_, when in _points(range(50))]
    fresh.close()


def test_points_follow_the_rules_of_a_batch(tmp_path: Path) -> None:
    client = dd.connect(str(tmp_path / "store"))
    iteration = _run(client)
    backend = client.backend

    with pytest.raises(UnprocessableError):
        backend.log_metric_points(iteration, [("", 1.0, 0, START)])
    client.end_iteration(iteration, "SUCCEEDED")
    with pytest.raises(UnprocessableError):
        backend.log_metric_points(iteration, _points(range(2)))

    assert client.get_metrics(iteration) == []
    client.close()


def test_a_failed_write_done_again_leaves_one_copy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The records reach the file but the sync fails: the rewrite reuses their ids."""
    url = str(tmp_path / "store")
    client = dd.connect(url)
    iteration = _run(client)
    backend = client.backend
    real_sync = getattr(os, "fdatasync", os.fsync)
    failures = [OSError(5, "Input/output error")]

    def flaky_sync(fd: int) -> None:
        if failures:
            raise failures.pop()
        real_sync(fd)

    monkeypatch.setattr(os, "fdatasync", flaky_sync, raising=False)
    monkeypatch.setattr(os, "fsync", flaky_sync)
    points = _points(range(20))

    with pytest.raises(ResponseLostError):
        backend.log_metric_points(iteration, points)
    assert client.get_metrics(iteration) == []
    backend.log_metric_points(iteration, points)
    client.close()

    fresh = dd.connect(url)
    rows = fresh.get_metrics(iteration)
    fresh.close()
    assert Counter((row.key, row.step) for row in rows) == Counter(
        (key, step) for key, _, step, _ in points
    )
    assert len(rows) == len(points)


def test_the_same_point_twice_in_one_call_gives_two_rows_even_when_written_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = str(tmp_path / "store")
    client = dd.connect(url)
    iteration = _run(client)
    later = START + timedelta(seconds=1)
    points = [("loss", 1.0, 0, START), ("acc", 0.5, 0, later), ("loss", 2.0, 0, START)]
    real_sync = getattr(os, "fdatasync", os.fsync)
    failures = [OSError(5, "Input/output error")]

    def flaky_sync(fd: int) -> None:
        if failures:
            raise failures.pop()
        real_sync(fd)

    monkeypatch.setattr(os, "fdatasync", flaky_sync, raising=False)
    monkeypatch.setattr(os, "fsync", flaky_sync)

    with pytest.raises(ResponseLostError):
        client.backend.log_metric_points(iteration, points)
    ids = client.backend.log_metric_points(iteration, points)
    client.close()

    assert len(set(ids)) == 3
    fresh = dd.connect(url)
    rows = fresh.get_metrics(iteration)
    fresh.close()
    assert sorted((row.key, row.value) for row in rows) == [
        ("acc", 0.5),
        ("loss", 1.0),
        ("loss", 2.0),
    ]
