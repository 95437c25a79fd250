"""On a local store the writer writes the steps of a pump cycle together, still exactly once."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest

import deardiary_lightning
from deardiary_lightning.backends.base import MetricPoint
from deardiary_lightning.backends.local import LocalBackend
from deardiary_lightning.client import Client
from deardiary_lightning.delivery import RetryPolicy, open_run
from deardiary_lightning.delivery import writer as writer_module
from deardiary_lightning.entities import Id
from deardiary_lightning.errors import ResponseLostError

from .conftest import client_points, expected_points, values


class _CountingStore(LocalBackend):
    """A local store that counts its multi-step writes and fails some of them.

    With ``flaky``, every third write lands and then reports a lost answer, and every fifth
    fails before writing anything.
    """

    def __init__(self, url: str, *, flaky: bool = False) -> None:
        super().__init__(url, storage_options={})
        self.flaky = flaky
        self.writes: list[int] = []
        self.batch_calls = 0

    def log_metric_points(self, iteration_id: Id, points: Sequence[MetricPoint]) -> list[Id]:
        self.writes.append(len(points))
        where = {"method": "POST", "url": self.url}
        if self.flaky and len(self.writes) % 5 == 0:
            raise ResponseLostError("the disk refused the write", **where)
        ids = super().log_metric_points(iteration_id, points)
        if self.flaky and len(self.writes) % 3 == 0:
            raise ResponseLostError("written, then the sync failed", **where)
        return ids

    def log_metrics(
        self, iteration_id: Id, metrics: Sequence[tuple[str, float]], **kwargs: object
    ) -> list[Id]:
        self.batch_calls += 1
        return super().log_metrics(iteration_id, metrics, **kwargs)  # type: ignore[arg-type]


def _open(
    monkeypatch: pytest.MonkeyPatch, store: LocalBackend, url: str
) -> writer_module.RunWriter:
    monkeypatch.setattr(writer_module, "connect", lambda *a, **k: Client(store))
    return open_run(
        url,
        project="p",
        experiment="e",
        flush_interval=0.05,
        retry=RetryPolicy(initial=0.01, maximum=0.05, budget=10.0),
    )


def test_steps_logged_between_two_cycles_share_one_write(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    url = str(tmp_path / "store")
    store = _CountingStore(url)
    run = _open(monkeypatch, store, url)
    for step in range(2000):
        run.log_metrics(values(step, 3), step=step)
    assert run.flush(timeout=30)
    run.close()

    assert sum(store.writes) == 2000 * 3
    assert len(store.writes) < 100
    assert store.batch_calls == 0
    rows = deardiary_lightning.connect(url).get_metrics(run.iteration_id)
    assert [(row.key, row.step, row.value) for row in rows] == [
        (f"m{k}", step, float(step * 10 + k)) for step in range(2000) for k in range(3)
    ]


def test_grouped_writes_that_fail_are_checked_and_completed_exactly_once(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    url = str(tmp_path / "store")
    store = _CountingStore(url, flaky=True)
    run = _open(monkeypatch, store, url)
    for step in range(600):
        run.log_metrics(values(step, 4), step=step)
        if step % 50 == 0:
            run.log_parameters({"phase": step})
    assert run.flush(timeout=60)
    run.close()

    assert len(store.writes) >= 5  # failures happened and were repaired
    fresh = deardiary_lightning.connect(url)
    assert client_points(fresh, run.iteration_id) == expected_points(600, 4)
    assert {(p.key, p.value) for p in fresh.get_parameters(run.iteration_id)} == {("phase", "550")}


def test_a_group_stays_near_its_point_limit(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    url = str(tmp_path / "store")
    store = _CountingStore(url)
    monkeypatch.setattr(writer_module, "GROUP_POINTS", 10)
    run = _open(monkeypatch, store, url)
    for step in range(100):
        run.log_metrics(values(step, 3), step=step)
    assert run.flush(timeout=30)
    run.close()

    assert max(store.writes) <= 12  # whole batches: at most four steps of three values
    assert len(store.writes) >= 25
    assert sum(store.writes) == 300
    fresh = deardiary_lightning.connect(url)
    assert client_points(fresh, run.iteration_id) == expected_points(100, 3)
