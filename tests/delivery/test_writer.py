"""The run writer's contract: ordering, batching, upserts, partial batches, end and close."""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

import deardiary_lightning
from deardiary_lightning.backends.local import LocalBackend
from deardiary_lightning.client import Client
from deardiary_lightning.delivery import RetryPolicy, open_run
from deardiary_lightning.delivery import writer as writer_module
from deardiary_lightning.entities import Id
from deardiary_lightning.errors import ResponseLostError, ServerError
from tests.deardiary_server import FaultRule

from .conftest import client_points, expected_points, server_points, values


class _FlakyStore(LocalBackend):
    """A local store that fails metric batches the way a server can: some rows written, then
    an error (500 from a non-atomic batch), or everything written and the answer lost."""

    def __init__(self, url: str) -> None:
        super().__init__(url, storage_options={})
        self.calls = 0

    def log_metrics(
        self,
        iteration_id: Id,
        metrics: Sequence[tuple[str, float]],
        *,
        step: int | None,
        recorded_at: datetime | None,
    ) -> list[Id]:
        self.calls += 1
        where = {"method": "POST", "url": "http://flaky/metric/iteration/batch"}
        if self.calls % 7 == 3 and len(metrics) > 2:
            super().log_metrics(iteration_id, metrics[:3], step=step, recorded_at=recorded_at)
            raise ServerError(500, "SERVER_ERROR", "Failed to create metric", **where)
        if self.calls % 7 == 5:
            super().log_metrics(iteration_id, metrics, step=step, recorded_at=recorded_at)
            raise ResponseLostError("connection dropped after the write", **where)
        return super().log_metrics(iteration_id, metrics, step=step, recorded_at=recorded_at)


def test_partly_written_batches_are_completed_without_duplicates(
    monkeypatch: pytest.MonkeyPatch, spool_dir: str
) -> None:
    store = _FlakyStore("memory://flaky-server")
    monkeypatch.setattr(writer_module, "connect", lambda *a, **k: Client(store))
    run = open_run(
        "http://flaky.invalid",
        project="p",
        experiment="e",
        spool=spool_dir,
        flush_interval=0.02,
        retry=RetryPolicy(initial=0.01, maximum=0.05, budget=10.0),
    )
    for step in range(300):
        run.log_metrics(values(step, 8), step=step)
    assert run.flush(timeout=60)
    run.close()
    assert client_points(Client(store), run.iteration_id) == expected_points(300, 8)
    assert store.calls > 300  # failures happened and were repaired


def test_calls_of_one_step_share_a_batch_and_auto_steps_follow_each_key(tmp_path: Path) -> None:
    url = str(tmp_path / "store")
    run = open_run(url, project="p", experiment="e", flush_interval=10.0)
    run.log_metrics({"train_loss": 1.0}, step=5)
    run.log_metrics({"val_loss": 2.0}, step=5)
    run.log_metrics({"a": 1.0, "b": 1.0})
    run.log_metrics({"a": 2.0})
    run.log_metrics({"a": 3.0, "b": 2.0})
    run.log_metrics({"train_loss": 0.5}, step=5)  # same key again at the same step: kept, after
    assert run.flush(timeout=10)
    run.close()

    rows = deardiary_lightning.connect(url).get_metrics(run.iteration_id)
    series: dict[str, list[tuple[int, float]]] = {}
    for row in rows:
        series.setdefault(row.key, []).append((row.step, row.value))
    assert series["a"] == [(0, 1.0), (1, 2.0), (2, 3.0)]
    assert series["b"] == [(0, 1.0), (1, 2.0)]
    assert series["train_loss"] == [(5, 1.0), (5, 0.5)]
    assert series["val_loss"] == [(5, 2.0)]
    at_step_5 = {(r.key, r.recorded_at) for r in rows if r.step == 5 and r.value != 0.5}
    assert len({when for _, when in at_step_5}) == 1  # one batch for both calls


def test_parameters_are_upserted_by_key(tmp_path: Path) -> None:
    url = str(tmp_path / "store")
    run = open_run(url, project="p", experiment="e", tags=["baseline"], notes="first try")
    run.log_parameters({"lr": 0.1, "batch": 32})
    run.log_parameters({"lr": 0.1})
    run.log_parameters({"lr": 0.01})
    run.add_tag("baseline")
    assert run.flush(timeout=10)
    run.close()
    client = deardiary_lightning.connect(url)
    params = sorted((p.key, p.value) for p in client.get_parameters(run.iteration_id))
    assert params == [("batch", "32"), ("lr", "0.01")]
    assert [t.value for t in client.get_tags(run.iteration_id)] == ["baseline"]
    assert client.get_iteration(run.iteration_id).notes == "first try"


def test_end_comes_after_all_data_and_locks_the_writer(tmp_path: Path) -> None:
    url = str(tmp_path / "store")
    run = open_run(url, project="p", experiment="e")
    for step in range(100):
        run.log_metrics(values(step, 4), step=step)
    run.end("FAILED", error_message="diverged")
    run.end("SUCCEEDED")  # a second end does nothing
    with pytest.raises(RuntimeError, match="ended"):
        run.log_metrics({"late": 1.0}, step=0)
    run.close()
    run.close()
    client = deardiary_lightning.connect(url)
    iteration = client.get_iteration(run.iteration_id)
    assert iteration.status.name == "FAILED" and iteration.error_message == "diverged"
    assert client_points(client, run.iteration_id) == expected_points(100, 4)


def test_resumed_iteration_continues_its_steps(tmp_path: Path) -> None:
    url = str(tmp_path / "store")
    first = open_run(url, project="p", experiment="e")
    first.log_metrics({"loss": 1.0})
    first.log_metrics({"loss": 0.9})
    first.log_parameters({"lr": 0.1})
    first.close()
    again = open_run(url, project="p", experiment="e", iteration_id=first.iteration_id)
    again.log_metrics({"loss": 0.8})
    again.log_parameters({"lr": 0.1})
    again.close()
    client = deardiary_lightning.connect(url)
    assert [(m.step, m.value) for m in client.get_metrics(first.iteration_id)] == [
        (0, 1.0),
        (1, 0.9),
        (2, 0.8),
    ]
    assert len(client.get_parameters(first.iteration_id)) == 1


def test_close_is_bounded_and_shows_progress_with_a_stuck_server(
    deardiary_server_factory: Any, spool_dir: str, capsys: Any
) -> None:
    server = deardiary_server_factory()
    run = open_run(server.url, project="p", experiment="e", spool=spool_dir)
    stall = 4.0  # longer than close() may take
    server.add_fault(FaultRule(kind="latency", seconds=stall, path=r"/batch$"))
    for step in range(20):
        run.log_metrics(values(step, 8), step=step)
    started = time.monotonic()
    run.close(timeout=2.0)
    took = time.monotonic() - started
    assert took < 3.5
    assert "deardiary: delivering" in capsys.readouterr().err
    server.clear_faults()
    # Let the stalled requests finish on the server (they started once logging began).
    time.sleep(max(0.0, started + stall + 1.0 - time.monotonic()))
    landed = server_points(server, run.iteration_id)
    spool = deardiary_lightning.connect(spool_dir)
    (project,) = spool.get_projects()
    (experiment,) = spool.get_experiments(project.id)
    (mirror,) = spool.get_iterations(experiment.id)
    spooled = client_points(spool, mirror.id)
    assert set(expected_points(20, 8)) <= set(landed) | set(spooled)


def test_uploads_land_once_through_dropped_answers(
    deardiary_server_factory: Any, spool_dir: str, tmp_path: Path
) -> None:
    server = deardiary_server_factory(seed=3)
    server.add_fault(FaultRule(kind="drop_after", count=1, path=r"^/resource/experiment/"))
    server.add_fault(FaultRule(kind="drop_after", count=1, path=r"^/modelversion/model/"))
    checkpoint = tmp_path / "epoch=0.ckpt"
    checkpoint.write_bytes(b"weights" * 10000)
    run = open_run(
        server.url,
        project="p",
        experiment="e",
        spool=spool_dir,
        retry=RetryPolicy(initial=0.01, maximum=0.1, budget=10.0),
    )
    upload = run.upload_resource(checkpoint)
    version = run.register_model_version("classifier", upload, description="best")
    resource_id = upload.result(timeout=30)
    version_id = version.result(timeout=30)
    run.close()
    resources = server.query("SELECT id, name FROM resource")
    assert [(r["id"], r["name"]) for r in resources] == [(resource_id, "epoch=0.ckpt")]
    versions = server.query("SELECT id, resource_id FROM model_version")
    assert [(v["id"], v["resource_id"]) for v in versions] == [(version_id, resource_id)]
    assert server.stats["faults"]["drop_after"] == 2
