"""The local store follows the server's rules and errors, on disk, in memory and on S3."""

from __future__ import annotations

import hashlib
import io
import json
import os
from datetime import datetime
from pathlib import Path

import pytest

import deardiary_lightning as dd
from deardiary_lightning.backends.local import APP_NAME, LocalBackend
from deardiary_lightning.store import FORMAT_VERSION, StoreFormatError
from deardiary_lightning.store.layout import APPEND_FORMAT_VERSION
from tests.local.conftest import StoreSpec


def _run(client: dd.Client) -> tuple[dd.Id, dd.Id, dd.Id]:
    project = client.create_project("proj")
    experiment = client.create_experiment(project, "exp")
    return project, experiment, client.create_iteration(experiment)


def test_session_calls(client: dd.Client) -> None:
    health = client.health()
    assert health.app_name == APP_NAME
    assert health.server_time is not None
    user = client.whoami()
    assert user.is_admin and user.username == "default"
    auth = client.refresh_token()
    assert auth.user == user
    assert auth.expires_at > 4_000_000_000


def test_auto_step_and_order(client: dd.Client) -> None:
    _, _, iteration = _run(client)
    assert client.get_metric(client.create_metric(iteration, "loss", 1.0)).step == 0  # type: ignore[union-attr]
    assert client.get_metric(client.create_metric(iteration, "loss", 2.0)).step == 1  # type: ignore[union-attr]
    client.create_metric(iteration, "loss", 3.0, step=100)
    assert client.get_metric(client.create_metric(iteration, "loss", 4.0)).step == 101  # type: ignore[union-attr]
    client.create_metric(iteration, "acc", 0.5, step=-3)
    assert client.get_metric(client.create_metric(iteration, "acc", 0.6)).step == -2  # type: ignore[union-attr]
    ids = client.log_metrics(iteration, {"loss": 5.0, "new": 7.0})
    steps = {client.get_metric(i).key: client.get_metric(i).step for i in ids}  # type: ignore[union-attr]
    assert steps == {"loss": 102, "new": 0}

    client.create_metric(iteration, "tie", 1.0, step=1)
    client.create_metric(iteration, "tie", 2.0, step=1)
    rows = client.get_metrics(iteration)
    assert [m.step for m in rows] == sorted(m.step for m in rows)
    assert [m.value for m in rows if m.key == "tie"] == [1.0, 2.0]


def test_recorded_at_kept(client: dd.Client) -> None:
    _, _, iteration = _run(client)
    when = datetime(2024, 5, 6, 7, 8, 9, 123000)
    metric = client.create_metric(iteration, "x", 1.0, recorded_at=when)
    assert client.get_metric(metric).recorded_at == when  # type: ignore[union-attr]


def test_pagination(client: dd.Client) -> None:
    _, _, iteration = _run(client)
    client.log_metrics(iteration, {f"k{i:03d}": float(i) for i in range(230)}, step=0)
    page = client.get_metrics(iteration, dd.Pagination())
    assert (len(page.data), page.total, page.limit, page.offset) == (50, 230, 50, 0)
    page = client.get_metrics(iteration, dd.Pagination(limit=500, offset=-5))
    assert (len(page.data), page.limit, page.offset) == (200, 200, 0)
    page = client.get_metrics(iteration, dd.Pagination(limit=0))
    assert (page.data, page.total) == ([], 230)
    page = client.get_metrics(iteration, dd.Pagination(limit=-1, offset=225))
    assert (page.data, page.limit) == ([], 0)
    assert len(client.get_metrics(iteration)) == 230
    for index in range(60):
        client.create_parameter(iteration, f"p{index}", index)
    assert client.get_parameters(iteration, dd.Pagination()).total == 60
    assert len(client.get_parameters(iteration)) == 60


def test_end_lock(client: dd.Client) -> None:
    project, experiment, iteration = _run(client)
    parameter = client.create_parameter(iteration, "lr", 0.1)
    metric = client.create_metric(iteration, "loss", 1.0)
    client.end_iteration(iteration, "FAILED", error_message="boom")
    ended = client.get_iteration(iteration)
    assert ended is not None and ended.ended and ended.status == dd.IterationStatus.FAILED
    assert ended.error_message == "boom"

    writes = [
        lambda: client.create_parameter(iteration, "k", "v"),
        lambda: client.create_metric(iteration, "loss", 2.0),
        lambda: client.log_metrics(iteration, {"a": 1.0}),
        lambda: client.update_parameter(parameter, value="x"),
        lambda: client.update_metric(metric, value=3.0),
        lambda: client.update_iteration(iteration, notes="late"),
        lambda: client.add_tag(iteration, "late"),
    ]
    for write in writes:
        with pytest.raises(dd.UnprocessableError) as info:
            write()
        assert (info.value.status, info.value.code) == (422, "INVALID_PAYLOAD")
        assert info.value.url == client.url
    deletes = (lambda: client.delete_parameter(parameter), lambda: client.delete_metric(metric))
    for delete in deletes:
        with pytest.raises(dd.ServerError) as server_info:
            delete()
        assert (server_info.value.status, server_info.value.code) == (500, "SERVER_ERROR")
    assert len(client.get_metrics(iteration)) == 1

    child = client.create_iteration(experiment, parent_iteration_id=iteration)
    assert [i.id for i in client.get_child_iterations(iteration)] == [child]
    model = client.create_model(project, "m")
    assert client.create_model_version(model, iteration)


def test_missing_entities(client: dd.Client) -> None:
    project, experiment, iteration = _run(client)
    for getter in (
        client.get_project,
        client.get_experiment,
        client.get_iteration,
        client.get_parameter,
        client.get_metric,
        client.get_resource,
        client.get_model,
        client.get_model_version,
    ):
        assert getter("nope-1") is None
    assert client.read_resource_data("nope-1") is None
    assert client.get_experiments("nope-1") == []
    assert client.get_tags("nope-1") == []
    assert client.get_child_iterations("nope-1") == []

    creates = [
        lambda: client.create_experiment("nope-1", "e"),
        lambda: client.create_iteration("nope-1"),
        lambda: client.create_parameter("nope-1", "k", "v"),
        lambda: client.create_metric("nope-1", "k", 1.0),
        lambda: client.log_metrics("nope-1", {"k": 1.0}),
        lambda: client.create_resource("nope-1", "r", b"x"),
        lambda: client.add_tag("nope-1", "t"),
        lambda: client.create_model("nope-1", "m"),
        lambda: client.update_parameter("nope-1", value="v"),
        lambda: client.update_metric("nope-1", value=1.0),
        lambda: client.update_iteration("nope-1", notes="n"),
        lambda: client.update_resource("nope-1", name="n"),
        lambda: client.update_model("nope-1", name="n"),
        lambda: client.update_model_version("nope-1", stage="STAGING"),
        lambda: client.backend.update_experiment(
            "nope-1", status_id=1, name=None, description=None, end_date=None
        ),
    ]
    for create in creates:
        with pytest.raises(dd.UnprocessableError):
            create()
    for delete in (client.delete_parameter, client.delete_metric, client.delete_resource):
        with pytest.raises(dd.ServerError) as info:
            delete("nope-1")
        assert info.value.code == "SERVER_ERROR"
    with pytest.raises(dd.ServerError):
        client.backend.update_iteration(
            iteration, notes=None, end_date=None, status_id=None, error_message=None
        )
    del project, experiment


def test_experiment_status_rules(client: dd.Client) -> None:
    _, experiment, _ = _run(client)
    resource = client.create_resource(experiment, "early", b"abc")
    client.update_experiment(experiment, status="FINISHED", end_date=datetime(2024, 1, 2, 3, 4))
    stopped = client.get_experiment(experiment)
    assert stopped is not None and stopped.end_date == datetime(2024, 1, 2, 3, 4)
    with pytest.raises(dd.UnprocessableError):
        client.create_iteration(experiment)
    with pytest.raises(dd.UnprocessableError):
        client.create_resource(experiment, "late", b"abc")
    client.update_resource(resource, description="still allowed")
    with pytest.raises(dd.UnprocessableError):
        client.backend.update_experiment(
            experiment, status_id=7, name=None, description=None, end_date=None
        )
    client.update_experiment(experiment, status="IN_PROGRESS")
    reopened = client.get_experiment(experiment)
    assert reopened is not None and reopened.end_date is None
    assert client.create_iteration(experiment)


def test_parent_checks(client: dd.Client) -> None:
    project, experiment, iteration = _run(client)
    other = client.create_experiment(project, "other")
    with pytest.raises(dd.UnprocessableError):
        client.create_iteration(other, parent_iteration_id=iteration)
    with pytest.raises(dd.UnprocessableError):
        client.create_iteration(experiment, parent_iteration_id="nope-1")
    child = client.create_iteration(experiment, parent_iteration_id=iteration)
    grandchild = client.create_iteration(experiment, parent_iteration_id=child)
    assert [i.id for i in client.get_iterations(experiment)] == [iteration, child, grandchild]
    assert client.get_iteration(grandchild).parent_iteration_id == child  # type: ignore[union-attr]


def test_resources_streamed(client: dd.Client, tmp_path: Path) -> None:
    _, experiment, _ = _run(client)
    payload = os.urandom(3 * 1024 * 1024 + 17)
    source = tmp_path / "weights.ckpt"
    source.write_bytes(payload)
    resource_id = client.create_resource(experiment, source)
    resource = client.get_resource(resource_id)
    assert resource is not None and resource.name == "weights.ckpt"
    assert resource.size_bytes == len(payload)
    assert resource.content_hash == hashlib.sha256(payload).hexdigest()
    stream = client.backend.open_resource_data(resource_id)
    assert stream is not None
    with stream:
        first = stream.read(1024)
        assert first == payload[:1024]
    target = tmp_path / "copy.ckpt"
    assert client.download_resource(resource_id, target) == len(payload)
    assert target.read_bytes() == payload

    client.update_resource(resource_id, name="renamed", data=io.BytesIO(b"new bytes"))
    updated = client.get_resource(resource_id)
    assert updated is not None and updated.name == "renamed" and updated.updated_date
    assert updated.size_bytes == 9
    assert client.read_resource_data(resource_id) == b"new bytes"
    assert [r.id for r in client.get_resources(experiment)] == [resource_id]
    client.delete_resource(resource_id)
    assert client.get_resource(resource_id) is None
    assert client.read_resource_data(resource_id) is None
    with pytest.raises(dd.UnprocessableError):
        client.backend.create_resource(experiment, "", io.BytesIO(b"x"), 1)


def test_model_registry(client: dd.Client) -> None:
    project, experiment, iteration = _run(client)
    resource = client.create_resource(experiment, "w", b"w")
    model = client.create_model(project, "net", description="a net")
    fresh = client.get_model(model)
    assert fresh is not None and fresh.updated_date is not None
    with pytest.raises(dd.ConflictError):
        client.create_model(project, "net")
    other_model = client.create_model(project, "other")
    versions = [client.create_model_version(model, iteration, resource_id=resource) for _ in "ab"]
    numbers = [client.get_model_version(v).version for v in versions]  # type: ignore[union-attr]
    assert numbers == [1, 2]
    client.update_model_version(versions[0], stage="PRODUCTION")
    client.update_model_version(versions[1], stage=dd.ModelStage.PRODUCTION)
    stages = [v.stage for v in client.get_model_versions(model)]
    assert stages == [dd.ModelStage.ARCHIVED, dd.ModelStage.PRODUCTION]
    with pytest.raises(dd.UnprocessableError):
        client.update_model(model, name="renamed")
    with pytest.raises(dd.ServerError):
        client.update_model(other_model, name="net")
    client.update_model(other_model, name="free")
    with pytest.raises(dd.ServerError):
        client.delete_resource(resource)

    elsewhere = client.create_project("elsewhere")
    far = client.create_iteration(client.create_experiment(elsewhere, "e"))
    with pytest.raises(dd.UnprocessableError):
        client.create_model_version(model, far)
    with pytest.raises(dd.UnprocessableError):
        client.backend.update_model_version(
            versions[0], stage_id=9, description=None, resource_id=None
        )


def test_tags(client: dd.Client) -> None:
    project, experiment, iteration = _run(client)
    first = client.add_tag(iteration, "baseline")
    second = client.add_tag(experiment, "baseline", target="experiment")
    assert first != second
    with pytest.raises(dd.ConflictError) as info:
        client.add_tag(iteration, "baseline")
    assert (info.value.status, info.value.code) == (409, "CONFLICT")
    client.add_tag(project, "p", target="project")
    iteration_tags = client.get_tags(iteration)
    experiment_tags = client.get_tags(experiment, target="experiment")
    assert [t.value for t in iteration_tags] == ["baseline"]
    assert iteration_tags[0].id == experiment_tags[0].id
    assert [t.value for t in client.get_tags(project, target="project")] == ["p"]
    with pytest.raises(dd.ServerError):
        client.backend.add_tag("iteration", iteration, "")


def test_parameters_updates_and_deletes(client: dd.Client) -> None:
    _, _, iteration = _run(client)
    first = client.create_parameter(iteration, "lr", 0.1)
    client.create_parameter(iteration, "lr", 0.2)
    assert [p.value for p in client.get_parameters(iteration)] == ["0.1", "0.2"]
    client.update_parameter(first, value=True)
    assert client.get_parameter(first).value == "true"  # type: ignore[union-attr]
    client.delete_parameter(first)
    assert [p.value for p in client.get_parameters(iteration)] == ["0.2"]
    metric = client.create_metric(iteration, "x", 1.0, step=5)
    client.update_metric(metric, key="y", step=7)
    assert client.get_metric(client.create_metric(iteration, "y", 2.0)).step == 8  # type: ignore[union-attr]
    assert client.get_metric(client.create_metric(iteration, "x", 2.0)).step == 0  # type: ignore[union-attr]
    client.delete_metric(metric)
    assert client.get_metric(metric) is None


def test_reopen_and_second_writer(store: StoreSpec) -> None:
    first = store.connect()
    project, experiment, iteration = _run(first)
    first.log_metrics(iteration, {"a": 1.0, "b": 2.0}, step=0)
    first.create_parameter(iteration, "lr", 0.01)

    second = store.connect()
    assert [p.id for p in second.get_projects()] == [project]
    assert len(second.get_metrics(iteration)) == 2
    second.log_metrics(iteration, {"a": 3.0})
    assert second.get_metric(second.create_metric(iteration, "b", 1.0)).step == 1  # type: ignore[union-attr]
    assert len(first.get_metrics(iteration)) == 4
    first.end_iteration(iteration, "SUCCEEDED")
    assert second.get_iteration(iteration).ended  # type: ignore[union-attr]

    third = store.connect()
    ids = {m.id for m in third.get_metrics(iteration)}
    assert len(ids) == 4
    assert third.get_iteration(iteration).status == dd.IterationStatus.SUCCEEDED  # type: ignore[union-attr]
    assert third.get_experiments(project)[0].id == experiment
    assert isinstance(first.backend, LocalBackend) and isinstance(second.backend, LocalBackend)
    assert first.backend.writer_id != second.backend.writer_id
    for client in (first, second, third):
        client.close()


def test_writes_never_rewrite_objects(store: StoreSpec) -> None:
    client = store.connect()
    _, _, iteration = _run(client)
    backend = client.backend
    assert isinstance(backend, LocalBackend)
    fs, root = backend.location.fs, backend.location.root

    def snapshot() -> dict[str, bytes]:
        fs.invalidate_cache(root)
        return {p: fs.cat_file(p) for p in fs.find(f"{root}/log")}

    for step in range(20):
        client.log_metrics(iteration, {"a": float(step)}, step=step)
    before = snapshot()
    for step in range(20, 40):
        client.log_metrics(iteration, {"a": float(step)}, step=step)
    after = snapshot()
    for path, data in before.items():
        assert after[path].startswith(data)
        if backend.location.mode == "put":
            assert after[path] == data
    client.close()


def test_error_carries_store_url(client: dd.Client) -> None:
    with pytest.raises(dd.UnprocessableError) as info:
        client.create_iteration("nope-1")
    error = info.value
    assert (error.status, error.code, error.method) == (422, "INVALID_PAYLOAD", "POST")
    assert error.url == client.url and "nope-1" in error.message


def test_default_store_created_on_first_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    client = dd.connect()
    assert client.get_projects() == []
    assert not (tmp_path / "deardiary").exists()
    project = client.create_project("first")
    marker = json.loads((tmp_path / "deardiary" / "deardiary-store.json").read_text())
    assert marker["version"] == APPEND_FORMAT_VERSION == 1  # local disks: readable by 1.x
    assert dd.connect("./deardiary").get_project(project) is not None
    assert dd.connect(f"file://{tmp_path / 'deardiary'}").get_project(project) is not None


def test_newer_format_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "store"
    dd.connect(root).create_project("p")
    marker_path = root / "deardiary-store.json"
    marker = json.loads(marker_path.read_text())
    marker["version"] = FORMAT_VERSION + 1
    marker_path.write_text(json.dumps(marker))
    with pytest.raises(StoreFormatError, match="upgrade"):
        dd.connect(root)
    marker_path.write_text("not json")
    with pytest.raises(StoreFormatError, match="not valid JSON"):
        dd.connect(root)


def test_crash_leftovers_still_open(tmp_path: Path) -> None:
    root = tmp_path / "store"
    client = dd.connect(root)
    _, experiment, iteration = _run(client)
    client.log_metrics(iteration, {"a": 1.0, "b": 2.0}, step=0)
    client.close()
    segment = next((root / "log").glob("*/*.jsonl"))
    with segment.open("ab") as out:
        out.write(b'{"op":"metrics","iteration_id":"x","points":[["half')
    (root / "log" / segment.parent.name / ".00000001.tmp").write_bytes(b"garbage")
    (root / "blobs").mkdir()
    (root / "blobs" / ".half-written.tmp").write_bytes(b"partial")

    reopened = dd.connect(root)
    assert len(reopened.get_metrics(iteration)) == 2
    assert reopened.get_experiment(experiment) is not None
    reopened.create_metric(iteration, "a", 3.0)
    assert len(dd.connect(root).get_metrics(iteration)) == 3


def test_records_readable_with_plain_json(tmp_path: Path) -> None:
    root = tmp_path / "store"
    client = dd.connect(root)
    _, _, iteration = _run(client)
    client.log_metrics(iteration, {"loss": 0.5, "acc": 0.9}, step=3)
    lines = [
        json.loads(line)
        for path in sorted((root / "log").glob("*/*.jsonl"))
        for line in path.read_text().splitlines()
    ]
    batches = [r for r in lines if r["op"] == "metrics"]
    assert batches[0]["iteration_id"] == iteration
    assert sorted((p[1], p[2], p[3]) for p in batches[0]["points"]) == [
        ("acc", 0.9, 3),
        ("loss", 0.5, 3),
    ]
    kinds = [r["kind"] for r in lines if r["op"] == "create"]
    assert kinds == ["project", "experiment", "iteration"]
