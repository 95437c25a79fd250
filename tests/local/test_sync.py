"""sync copies a local store exactly once: twice changes nothing, interrupted runs resume."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

import deardiary_lightning as dd
from deardiary_lightning import cli
from deardiary_lightning.backends.base import Backend
from deardiary_lightning.sync import SyncProgress, sync

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def server() -> Iterator[Any]:
    from tests.deardiary_server import DearDiaryTestServer

    with DearDiaryTestServer(auth=False, id_kind="int") as running:
        yield running


@pytest.fixture(params=["http-int", "http-uuid", "local"])
def target(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[dd.Client]:
    """A fresh target: the test server (integer or UUID ids), or a second local store."""
    if request.param.startswith("http"):
        from tests.deardiary_server import DearDiaryTestServer

        ids = request.param.split("-")[1]
        with (
            DearDiaryTestServer(auth=False, id_kind=ids) as running,
            dd.connect(running.url) as client,
        ):
            yield client
    else:
        with dd.connect(tmp_path / "target") as client:
            yield client


def populate(client: dd.Client, *, points: int = 60) -> dict[str, dd.Id]:
    """A small store with every kind of row, ended and running iterations, children."""
    project = client.create_project("vision")
    client.add_tag(project, "team-a", target="project")
    experiment = client.create_experiment(project, "resnet")
    client.add_tag(experiment, "sweep", target="experiment")
    first = client.create_iteration(experiment)
    client.create_parameter(first, "run", "first")
    client.create_parameter(first, "lr", 0.1)
    client.create_parameter(first, "lr", 0.2)
    for step in range(points):
        client.log_metrics(first, {"loss": 1.0 / (step + 1), "acc": step / points}, step=step)
    client.create_metric(first, "loss", 0.5, step=3)
    client.create_metric(first, "lr_auto", 1.0)
    client.create_metric(first, "lr_auto", 1.0)
    when = datetime(2024, 1, 2, 3, 4, 5, 678000)
    client.log_metrics(first, {"val": 0.25}, step=1000, recorded_at=when)
    client.add_tag(first, "baseline")
    child = client.create_iteration(experiment, parent_iteration_id=first)
    client.create_parameter(child, "run", "child")
    client.log_metrics(child, {"loss": 3.0, "acc": 0.1})
    client.end_iteration(child, "KILLED")
    client.end_iteration(first, "FAILED", error_message="CUDA out of memory")
    running = client.create_iteration(experiment)
    client.create_parameter(running, "run", "running")
    client.update_iteration(running, notes="still going")
    client.create_metric(running, "loss", 9.0, step=0)
    weights = client.create_resource(experiment, "weights.ckpt", os.urandom(300_000))
    notes = client.create_resource(experiment, "notes.txt", b"v1")
    client.update_resource(notes, description="second draft", data=b"v2")
    model = client.create_model(project, "resnet50", description="image model")
    version_1 = client.create_model_version(model, first, resource_id=weights)
    version_2 = client.create_model_version(model, child)
    client.update_model_version(version_1, stage="PRODUCTION")
    client.update_model_version(version_2, stage="PRODUCTION")
    other = client.create_project("nlp")
    finished = client.create_experiment(other, "bert")
    done = client.create_iteration(finished)
    client.create_parameter(done, "run", "bert")
    client.create_metric(done, "f1", 0.9, step=0)
    client.end_iteration(done, "SUCCEEDED")
    client.update_experiment(finished, status="FINISHED", end_date=datetime(2024, 2, 3, 4, 5))
    return {"first": first, "child": child, "running": running, "done": done}


def _run_name(client: dd.Client, iteration_id: dd.Id | None) -> str | None:
    if iteration_id is None:
        return None
    for parameter in client.get_parameters(iteration_id):
        if parameter.key == "run":
            return parameter.value
    return "?"


def snapshot(client: dd.Client) -> list[Any]:
    """Everything a store or server holds, without ids, in a comparable form."""
    out: list[Any] = []
    for project in sorted(client.get_projects(), key=lambda p: p.name):
        experiments = []
        for experiment in client.get_experiments(project.id):
            iterations = []
            for iteration in client.get_iterations(experiment.id):
                metrics = Counter(
                    (m.key, m.step, m.value, m.recorded_at)
                    for m in client.get_metrics(iteration.id)
                )
                iterations.append(
                    (
                        _run_name(client, iteration.id),
                        _run_name(client, iteration.parent_iteration_id),
                        iteration.status_id,
                        iteration.end_date,
                        iteration.error_message,
                        iteration.notes,
                        sorted((p.key, p.value) for p in client.get_parameters(iteration.id)),
                        sorted(metrics.items()),
                        sorted(t.value for t in client.get_tags(iteration.id)),
                    )
                )
            resources = sorted(
                (r.name, r.description, r.size_bytes, r.content_hash)
                for r in client.get_resources(experiment.id)
            )
            experiments.append(
                (
                    experiment.name,
                    experiment.status_id,
                    experiment.end_date,
                    sorted(iterations, key=repr),
                    resources,
                    sorted(t.value for t in client.get_tags(experiment.id, target="experiment")),
                )
            )
        models = []
        for model in client.get_models(project.id):
            versions = []
            for version in client.get_model_versions(model.id):
                resource = None
                if version.resource_id is not None:
                    resource = client.get_resource(version.resource_id).name  # type: ignore[union-attr]
                versions.append(
                    (
                        version.version,
                        version.stage_id,
                        _run_name(client, version.iteration_id),
                        resource,
                    )
                )
            models.append((model.name, model.description, versions))
        out.append(
            (
                project.name,
                sorted(experiments, key=repr),
                models,
                sorted(t.value for t in client.get_tags(project.id, target="project")),
            )
        )
    return out


def test_sync_copies_everything_and_twice_adds_nothing(tmp_path: Path, target: dd.Client) -> None:
    source = dd.connect(tmp_path / "source")
    ids = populate(source)
    seen: list[SyncProgress] = []

    report = sync(source, target, progress=lambda p: seen.append(SyncProgress(**vars(p))))
    assert snapshot(target) == snapshot(source)
    assert report.points_sent == len(source.get_metrics(ids["first"])) + 4
    assert report.created["iteration"] == 4 and report.created["project"] == 2
    assert seen[-1].points_done == seen[-1].points_total == report.points_sent
    assert seen[-1].entities_done == seen[-1].entities_total

    again = sync(source, target)
    assert again.nothing_new, str(again)
    assert again.points_skipped == report.points_sent
    assert snapshot(target) == snapshot(source)

    source.log_metrics(ids["running"], {"loss": 8.0, "acc": 0.3}, step=1)
    source.create_parameter(ids["running"], "late", "yes")
    source.end_iteration(ids["running"], "SUCCEEDED")
    third = sync(source, target)
    assert third.points_sent == 2 and third.created["parameter"] == 1
    assert snapshot(target) == snapshot(source)


class FlakyBackend:
    """Wraps a backend and fails the N-th write request in a chosen way.

    Modes: ``lost`` applies the request, then raises as if its answer was lost; ``refused``
    raises before sending; ``partial`` applies only the first half of a metric batch, then
    raises a 500 (the server's non-atomic batch).
    """

    WRITES = ("create_", "log_metrics", "update_", "add_tag")

    def __init__(self, inner: Backend, fail_at: int, mode: str) -> None:
        self.inner = inner
        self.url = inner.url
        self.fail_at = fail_at
        self.mode = mode
        self.writes = 0
        self.failed = False

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self.inner, name)
        if not name.startswith(self.WRITES):
            return attribute

        def call(*args: Any, **kwargs: Any) -> Any:
            self.writes += 1
            if self.failed or self.writes != self.fail_at:
                return attribute(*args, **kwargs)
            self.failed = True
            if self.mode == "refused":
                raise dd.ConnectError("injected: refused", method="POST", url=self.url)
            if self.mode == "partial" and name == "log_metrics":
                iteration, metrics = args[0], args[1]
                attribute(iteration, metrics[: max(1, len(metrics) // 2)], **kwargs)
                raise dd.ServerError(500, "SERVER_ERROR", "injected", method="POST", url=self.url)
            attribute(*args, **kwargs)
            raise dd.ResponseLostError("injected: answer lost", method="POST", url=self.url)

        return call


#: A full sync of ``populate(points=40)`` makes 78 write requests: fail each kind of them.
FAILURES = [("lost", n) for n in range(1, 79, 3)] + [
    ("lost", 78),
    ("refused", 5),
    ("refused", 30),
    ("refused", 60),
    ("partial", 10),
    ("partial", 30),
]


@pytest.mark.parametrize(("mode", "fail_at"), FAILURES)
def test_interrupted_sync_resumes_exactly(tmp_path: Path, mode: str, fail_at: int) -> None:
    from tests.deardiary_server import DearDiaryTestServer

    source = dd.connect(tmp_path / "source")
    populate(source, points=40)
    with DearDiaryTestServer(auth=False, id_kind="int") as server:
        flaky = FlakyBackend(dd.connect(server.url).backend, fail_at, mode)
        with pytest.raises(dd.DearDiaryError):
            sync(source, dd.Client(flaky), retries=0)  # type: ignore[arg-type]
        assert flaky.failed

        with dd.connect(server.url) as target:
            sync(source, target)
            assert snapshot(target) == snapshot(source)
            assert sync(source, target).nothing_new
            assert snapshot(target) == snapshot(source)


def test_retries_within_one_run(tmp_path: Path) -> None:
    source = dd.connect(tmp_path / "source")
    populate(source, points=30)
    for fail_at in (2, 9, 20, 44):
        target_store = dd.connect(tmp_path / f"target-{fail_at}")
        flaky = FlakyBackend(target_store.backend, fail_at, "lost" if fail_at % 2 else "partial")
        sync(source, dd.Client(flaky), retries=2, backoff=0.0)  # type: ignore[arg-type]
        assert flaky.failed
        assert snapshot(target_store) == snapshot(source)


def test_sync_chosen_iterations(tmp_path: Path) -> None:
    source = dd.connect(tmp_path / "source")
    ids = populate(source, points=10)
    target = dd.connect(tmp_path / "target")
    report = sync(source, target, iterations=[ids["child"]])
    projects = target.get_projects()
    assert [p.name for p in projects] == ["vision"]
    experiment = target.get_experiments(projects[0].id)[0]
    runs = sorted(_run_name(target, i.id) or "" for i in target.get_iterations(experiment.id))
    assert runs == ["child", "first"]
    assert report.created["iteration"] == 2
    with pytest.raises(ValueError, match="not in the local store"):
        sync(source, target, iterations=["missing-1"])


def test_cli_sync_with_progress(
    tmp_path: Path,
    server: Any,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    source_path = tmp_path / "source"
    populate(dd.connect(source_path), points=5)
    monkeypatch.setenv("DEARDIARY_TOKEN", "not-checked-without-auth")
    assert cli.main(["sync", str(source_path), "--to", server.url, "--project", "nlp"]) == 0
    captured = capsys.readouterr()
    assert "sync:" in captured.err and "points" in captured.err
    assert "not-checked-without-auth" not in captured.err + captured.out
    assert "created" in captured.out
    with dd.connect(server.url) as target:
        names = [p.name for p in target.get_projects()]
        assert names.count("nlp") == 1 and "vision" not in names


def test_cli_sync_reports_failure(tmp_path: Path) -> None:
    source_path = tmp_path / "source"
    populate(dd.connect(source_path), points=2)
    env = {**os.environ, "PYTHONPATH": str(REPO), "DEARDIARY_PASSWORD": "s3cret-pw"}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "deardiary_lightning.cli",
            "sync",
            str(source_path),
            "--to",
            "http://127.0.0.1:9",
            "--username",
            "alice",
            "--quiet",
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=60,
    )
    assert result.returncode == 1
    assert "run the same command again" in result.stderr
    assert "s3cret-pw" not in result.stderr + result.stdout


def test_sync_from_s3_store(request: pytest.FixtureRequest, tmp_path: Path) -> None:
    from tests.local.conftest import make_spec

    spec = make_spec("s3", tmp_path, request)
    source = spec.connect()
    populate(source, points=5)
    target = dd.connect(tmp_path / "target")
    sync(spec.url, target, storage_options=spec.storage_options)
    assert snapshot(target) == snapshot(source)
    assert sync(spec.url, target, storage_options=spec.storage_options).nothing_new


def test_killed_sync_process_resumes(tmp_path: Path) -> None:
    import signal
    import time

    from tests.deardiary_server import DearDiaryTestServer

    source_path = tmp_path / "source"
    source = dd.connect(source_path)
    populate(source, points=5)
    iteration = source.create_iteration(source.get_experiments(source.get_projects()[0].id)[0].id)
    for step in range(1500):
        source.log_metrics(iteration, {"long": float(step)}, step=step)
    source.end_iteration(iteration, "SUCCEEDED")

    with DearDiaryTestServer(auth=False, id_kind="int") as server:
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        command = [sys.executable, "-m", "deardiary_lightning.cli", "sync", str(source_path)]
        process = subprocess.Popen(
            [*command, "--to", server.url, "--quiet"],
            env=env,
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            landed = server.query("SELECT COUNT(*) AS n FROM metric")[0]["n"]
            if landed >= 300:
                break
            time.sleep(0.01)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
        landed = server.query("SELECT COUNT(*) AS n FROM metric")[0]["n"]
        assert 300 <= landed < len(source.get_metrics(iteration)), "kill came too late"

        with dd.connect(server.url) as target:
            report = sync(source_path, target)
            assert report.points_skipped >= 300
            assert snapshot(target) == snapshot(source)
            assert sync(source_path, target).nothing_new
