"""Contract: parameters, metrics and resources behave alike on every backend."""

from __future__ import annotations

import hashlib
import io
import math
from datetime import datetime
from pathlib import Path

import pytest

import deardiary_lightning as dd
from tests.contract.conftest import Run

# -- parameters ---------------------------------------------------------------------------------


def test_parameter_values_are_stored_as_text(run: Run) -> None:
    client = run.client
    values = {"name": "resnet", "layers": 18, "lr": 0.1, "tiny": 1e-05, "flag": True, "off": False}
    ids = {
        key: client.create_parameter(run.iteration_id, key, value) for key, value in values.items()
    }
    stored = {p.key: p.value for p in client.get_parameters(run.iteration_id)}
    assert stored == {
        "name": "resnet",
        "layers": "18",
        "lr": "0.1",
        "tiny": "1e-05",
        "flag": "true",
        "off": "false",
    }
    parameter = client.get_parameter(ids["lr"])
    assert parameter is not None
    assert (parameter.key, parameter.value, parameter.iteration_id) == (
        "lr",
        "0.1",
        run.iteration_id,
    )


def test_bad_parameters_are_refused_before_sending(run: Run) -> None:
    client = run.client
    with pytest.raises(ValueError, match="empty"):
        client.create_parameter(run.iteration_id, "k", "")
    with pytest.raises(ValueError, match="empty"):
        client.create_parameter(run.iteration_id, "", "v")
    with pytest.raises(TypeError, match="str, int, float or bool"):
        client.create_parameter(run.iteration_id, "k", None)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="strings"):
        client.create_parameter(run.iteration_id, 3, "v")  # type: ignore[arg-type]
    assert client.get_parameters(run.iteration_id) == []


def test_update_and_delete_parameter(run: Run) -> None:
    client = run.client
    parameter_id = client.create_parameter(run.iteration_id, "lr", 0.1)
    client.update_parameter(parameter_id, value=0.01)
    client.update_parameter(parameter_id, key="learning_rate")
    parameter = client.get_parameter(parameter_id)
    assert parameter is not None
    assert (parameter.key, parameter.value) == ("learning_rate", "0.01")
    with pytest.raises(ValueError):
        client.update_parameter(parameter_id)
    client.delete_parameter(parameter_id)
    assert client.get_parameter(parameter_id) is None
    with pytest.raises(dd.ServerError) as info:
        client.delete_parameter(parameter_id)
    assert info.value.code == "SERVER_ERROR"
    with pytest.raises(dd.UnprocessableError):
        client.update_parameter(parameter_id, value="1")


def test_get_parameters_returns_every_row_not_only_the_first_page(run: Run) -> None:
    client = run.client
    for i in range(230):
        client.create_parameter(run.iteration_id, f"p{i:03d}", i)
    rows = client.get_parameters(run.iteration_id)
    assert sorted(p.key for p in rows) == [f"p{i:03d}" for i in range(230)]
    page = client.get_parameters(run.iteration_id, dd.Pagination(limit=50, offset=200))
    assert (page.total, page.limit, page.offset, len(page.data)) == (230, 50, 200, 30)
    first = client.get_parameters(run.iteration_id, dd.Pagination())
    assert (first.limit, len(first.data)) == (50, 50)
    clamped = client.get_parameters(run.iteration_id, dd.Pagination(limit=1000, offset=-5))
    assert (clamped.limit, clamped.offset, len(clamped.data)) == (200, 0, 200)
    counted = client.get_parameters(run.iteration_id, dd.Pagination(limit=0))
    assert (counted.total, counted.data) == (230, [])


# -- metrics ------------------------------------------------------------------------------------


def test_automatic_steps_count_per_key_from_zero(run: Run) -> None:
    client = run.client
    for value in (3.0, 2.0, 1.0):
        client.create_metric(run.iteration_id, "loss", value)
    client.create_metric(run.iteration_id, "acc", 0.5)
    client.create_metric(run.iteration_id, "loss", 0.5, step=100)
    client.create_metric(run.iteration_id, "loss", 0.25)
    series = [(m.key, m.step, m.value) for m in client.get_metrics(run.iteration_id)]
    assert sorted(p for p in series if p[0] == "loss") == [
        ("loss", 0, 3.0),
        ("loss", 1, 2.0),
        ("loss", 2, 1.0),
        ("loss", 100, 0.5),
        ("loss", 101, 0.25),
    ]
    assert ("acc", 0, 0.5) in series


def test_metrics_come_back_ordered_by_step(run: Run) -> None:
    client = run.client
    for step in (5, 1, 4, 0, 3, 2):
        client.create_metric(run.iteration_id, "x", float(step), step=step)
    assert [m.step for m in client.get_metrics(run.iteration_id)] == [0, 1, 2, 3, 4, 5]
    page = client.get_metrics(run.iteration_id, dd.Pagination(limit=2, offset=2))
    assert [m.step for m in page.data] == [2, 3]


def test_create_metric_returns_a_readable_id(run: Run) -> None:
    client = run.client
    recorded = datetime(2026, 6, 23, 13, 14, 6, 500000)
    metric_id = client.create_metric(run.iteration_id, "loss", 0.125, step=7, recorded_at=recorded)
    metric = client.get_metric(metric_id)
    assert metric is not None
    assert (metric.key, metric.value, metric.step) == ("loss", 0.125, 7)
    assert metric.recorded_at == recorded
    assert metric.iteration_id == run.iteration_id


def test_log_metrics_batch(run: Run) -> None:
    client = run.client
    values = {f"k{i}": 10 + i / 8 for i in range(12)}
    ids = client.log_metrics(run.iteration_id, values, step=3)
    assert len(ids) == len(set(ids)) == 12
    stored = {client.get_metric(i).key for i in ids}  # type: ignore[union-attr]
    assert stored == set(values)
    rows = client.get_metrics(run.iteration_id)
    assert {(m.key, m.value, m.step) for m in rows} == {(k, v, 3) for k, v in values.items()}

    client.log_metrics(run.iteration_id, [("k0", 9.0), ("new", 1.0)])
    steps = {m.key: m.step for m in client.get_metrics(run.iteration_id) if m.value in (9.0, 1.0)}
    assert steps == {"k0": 4, "new": 0}
    assert client.log_metrics(run.iteration_id, {}) == []


def test_log_metrics_refuses_repeated_keys_instead_of_losing_one(run: Run) -> None:
    with pytest.raises(ValueError, match="twice"):
        run.client.log_metrics(run.iteration_id, [("loss", 1.0), ("loss", 2.0)], step=0)
    assert run.client.get_metrics(run.iteration_id) == []


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_values_are_refused_and_nothing_is_sent(run: Run, bad: float) -> None:
    client = run.client
    with pytest.raises(ValueError, match="not finite"):
        client.create_metric(run.iteration_id, "loss", bad)
    with pytest.raises(ValueError, match="not finite"):
        client.log_metrics(run.iteration_id, {"ok": 1.0, "loss": bad}, step=0)
    metric_id = client.create_metric(run.iteration_id, "ok", 1.0)
    with pytest.raises(ValueError, match="not finite"):
        client.update_metric(metric_id, value=bad)
    assert [(m.key, m.value) for m in client.get_metrics(run.iteration_id)] == [("ok", 1.0)]


def test_non_numeric_metric_values_are_refused(run: Run) -> None:
    with pytest.raises(TypeError, match="not a real number"):
        run.client.create_metric(run.iteration_id, "loss", "0.5")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="not an integer"):
        run.client.create_metric(run.iteration_id, "loss", 0.5, step=1.5)  # type: ignore[arg-type]


def test_update_and_delete_metric(run: Run) -> None:
    client = run.client
    metric_id = client.create_metric(run.iteration_id, "loss", 1.0, step=0)
    when = datetime(2026, 1, 1, 0, 0, 0, 120000)
    client.update_metric(metric_id, key="val_loss", value=2.0, step=9, recorded_at=when)
    metric = client.get_metric(metric_id)
    assert metric is not None
    assert (metric.key, metric.value, metric.step, metric.recorded_at) == ("val_loss", 2.0, 9, when)
    client.delete_metric(metric_id)
    assert client.get_metric(metric_id) is None
    with pytest.raises(dd.ServerError):
        client.delete_metric(metric_id)
    with pytest.raises(dd.UnprocessableError):
        client.update_metric(metric_id, value=1.0)


def test_get_metrics_reads_past_the_largest_page(run: Run) -> None:
    client = run.client
    for step in range(0, 450, 50):
        client.log_metrics(
            run.iteration_id, {f"m{i}": float(step + i) for i in range(50)}, step=step
        )
    rows = client.get_metrics(run.iteration_id)
    assert len(rows) == 450
    assert [m.step for m in rows] == sorted(m.step for m in rows)


# -- resources ----------------------------------------------------------------------------------


def test_resource_from_bytes(run: Run) -> None:
    client = run.client
    blob = bytes(range(256)) * 1000
    resource_id = client.create_resource(run.experiment_id, "weights.bin", blob)
    resource = client.get_resource(resource_id)
    assert resource is not None
    assert resource.name == "weights.bin"
    assert resource.experiment_id == run.experiment_id
    assert resource.size_bytes == len(blob)
    assert resource.content_hash == hashlib.sha256(blob).hexdigest()
    assert resource.data is None
    assert client.read_resource_data(resource_id) == blob


def test_resource_from_file_object_and_path(run: Run, tmp_path: Path) -> None:
    client = run.client
    from_stream = client.create_resource(run.experiment_id, "stream.bin", io.BytesIO(b"abc" * 100))
    path = tmp_path / "epoch=3-step=120.ckpt"
    path.write_bytes(b"checkpoint bytes")
    from_path = client.create_resource(run.experiment_id, path)
    with path.open("rb") as handle:
        from_handle = client.create_resource(run.experiment_id, "handle.ckpt", handle)

    assert client.read_resource_data(from_stream) == b"abc" * 100
    by_path = client.get_resource(from_path)
    assert by_path is not None
    assert by_path.name == "epoch=3-step=120.ckpt"
    assert client.read_resource_data(from_handle) == b"checkpoint bytes"
    assert {r.id for r in client.get_resources(run.experiment_id)} == {
        from_stream,
        from_path,
        from_handle,
    }
    page = client.get_resources(run.experiment_id, dd.Pagination(limit=2))
    assert (page.total, len(page.data)) == (3, 2)


def test_download_resource_to_a_file(run: Run, tmp_path: Path) -> None:
    client = run.client
    blob = b"0123456789" * 300_000
    resource_id = client.create_resource(run.experiment_id, "big.bin", blob)
    target = tmp_path / "out.bin"
    assert client.download_resource(resource_id, target) == len(blob)
    assert target.read_bytes() == blob
    sink = io.BytesIO()
    assert client.download_resource(resource_id, sink) == len(blob)
    assert sink.getvalue() == blob
    assert client.download_resource(_missing(run), tmp_path / "none.bin") is None
    assert not (tmp_path / "none.bin").exists()


def test_update_and_delete_resource(run: Run, tmp_path: Path) -> None:
    client = run.client
    resource_id = client.create_resource(run.experiment_id, "a.txt", b"old")
    client.update_resource(resource_id, name="b.txt", description="notes")
    client.update_resource(resource_id, data=b"new bytes")
    resource = client.get_resource(resource_id)
    assert resource is not None
    assert (resource.name, resource.description, resource.size_bytes) == ("b.txt", "notes", 9)
    assert resource.content_hash == hashlib.sha256(b"new bytes").hexdigest()
    assert resource.updated_date is not None
    assert client.read_resource_data(resource_id) == b"new bytes"

    path = tmp_path / "c.bin"
    path.write_bytes(b"from a path")
    client.update_resource(resource_id, data=path)
    assert client.read_resource_data(resource_id) == b"from a path"

    client.delete_resource(resource_id)
    assert client.get_resource(resource_id) is None
    with pytest.raises(dd.ServerError):
        client.delete_resource(resource_id)
    with pytest.raises(dd.UnprocessableError):
        client.update_resource(resource_id, name="gone")


def test_uploads_need_an_experiment_in_progress(run: Run) -> None:
    client = run.client
    kept = client.create_resource(run.experiment_id, "kept.bin", b"1")
    client.update_experiment(run.experiment_id, status=dd.ExperimentStatus.FINISHED)
    with pytest.raises(dd.UnprocessableError):
        client.create_resource(run.experiment_id, "late.bin", b"2")
    client.update_resource(kept, description="updates are still allowed")
    with pytest.raises(dd.UnprocessableError):
        client.create_resource(_missing(run), "x.bin", b"3")


def _missing(run: Run) -> dd.Id:
    if run.kind.startswith("http-int"):
        return 987_654_321
    return "00000000-0000-0000-0000-000000000000"


# -- model registry -----------------------------------------------------------------------------


def test_models_and_versions(run: Run) -> None:
    client = run.client
    model_id = client.create_model(run.project_id, "digits-mlp", description="tiny")
    with pytest.raises(dd.ConflictError):
        client.create_model(run.project_id, "digits-mlp")
    model = client.get_model(model_id)
    assert model is not None
    assert (model.name, model.description, model.project_id) == (
        "digits-mlp",
        "tiny",
        run.project_id,
    )
    assert [m.id for m in client.get_models(run.project_id)] == [model_id]
    client.update_model(model_id, description="small")

    weights = client.create_resource(run.experiment_id, "best.ckpt", b"w")
    first = client.create_model_version(model_id, run.iteration_id, resource_id=weights)
    second = client.create_model_version(model_id, run.iteration_id, description="again")
    versions = client.get_model_versions(model_id)
    assert [(v.id, v.version) for v in versions] == [(first, 1), (second, 2)]
    assert versions[0].resource_id == weights
    assert versions[0].stage is dd.ModelStage.NO_STAGE

    client.update_model_version(first, stage="production")
    client.update_model_version(second, stage=dd.ModelStage.PRODUCTION)
    stages = {v.id: v.stage for v in client.get_model_versions(model_id)}
    assert stages == {first: dd.ModelStage.ARCHIVED, second: dd.ModelStage.PRODUCTION}
    page = client.get_model_versions(model_id, dd.Pagination(limit=1, offset=1))
    assert [v.version for v in page.data] == [2]
    with pytest.raises(dd.UnprocessableError):
        client.create_model_version(model_id, _missing(run))
