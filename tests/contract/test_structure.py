"""Contract: session, projects, experiments, iterations and tags behave alike on every backend."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

import deardiary_lightning as dd
from tests.contract.conftest import Run


def test_health_and_whoami(client: dd.Client) -> None:
    health = client.health()
    assert health.app_name
    assert isinstance(health.server_time, datetime)
    user = client.whoami()
    assert user.username
    assert user.is_admin


def test_projects(client: dd.Client) -> None:
    project_id = client.create_project("alpha")
    project = client.get_project(project_id)
    assert project is not None
    assert project.id == project_id
    assert project.name == "alpha"
    assert project.description == ""
    assert isinstance(project.created_date, datetime)
    assert project_id in [p.id for p in client.get_projects()]


def test_missing_entities_read_as_none(run: Run) -> None:
    client = run.client
    missing = _missing_id(run)
    assert client.get_project(missing) is None
    assert client.get_experiment(missing) is None
    assert client.get_iteration(missing) is None
    assert client.get_parameter(missing) is None
    assert client.get_metric(missing) is None
    assert client.get_resource(missing) is None
    assert client.read_resource_data(missing) is None
    assert client.get_model(missing) is None
    assert client.get_model_version(missing) is None


def test_empty_names_are_refused_before_sending(client: dd.Client) -> None:
    with pytest.raises(ValueError, match="empty"):
        client.create_project("")
    with pytest.raises(TypeError):
        client.create_project(3)  # type: ignore[arg-type]


def test_experiments(run: Run) -> None:
    client = run.client
    experiment = client.get_experiment(run.experiment_id)
    assert experiment is not None
    assert experiment.project_id == run.project_id
    assert experiment.status is dd.ExperimentStatus.IN_PROGRESS
    assert experiment.end_date is None

    second = client.create_experiment(run.project_id, "second")
    assert {e.id for e in client.get_experiments(run.project_id)} == {run.experiment_id, second}
    page = client.get_experiments(run.project_id, dd.Pagination(limit=1, offset=1))
    assert page.total == 2
    assert page.limit == 1
    assert page.offset == 1
    assert len(page.data) == 1


def test_update_experiment_keeps_status_when_renaming(run: Run) -> None:
    client = run.client
    client.update_experiment(run.experiment_id, name="renamed", description="about")
    experiment = client.get_experiment(run.experiment_id)
    assert experiment is not None
    assert (experiment.name, experiment.description) == ("renamed", "about")
    assert experiment.status is dd.ExperimentStatus.IN_PROGRESS

    ended = datetime(2026, 1, 2, 3, 4, 5, 678000)
    client.update_experiment(run.experiment_id, status="finished", end_date=ended)
    experiment = client.get_experiment(run.experiment_id)
    assert experiment is not None
    assert experiment.status is dd.ExperimentStatus.FINISHED
    assert experiment.end_date == ended


def test_update_missing_experiment(run: Run) -> None:
    with pytest.raises(dd.NotFoundError):
        run.client.update_experiment(_missing_id(run), name="x")
    with pytest.raises(dd.UnprocessableError):
        run.client.update_experiment(_missing_id(run), status=dd.ExperimentStatus.STOPPED)


def test_bad_enum_values_name_the_allowed_ones(run: Run) -> None:
    with pytest.raises(ValueError, match="SUCCEEDED"):
        run.client.end_iteration(run.iteration_id, "done")
    with pytest.raises(ValueError, match="IN_PROGRESS"):
        run.client.update_experiment(run.experiment_id, status=7)


def test_new_iterations_need_an_experiment_in_progress(run: Run) -> None:
    client = run.client
    client.update_experiment(run.experiment_id, status=dd.ExperimentStatus.STOPPED)
    with pytest.raises(dd.UnprocessableError) as info:
        client.create_iteration(run.experiment_id)
    assert info.value.status == 422
    assert info.value.code == "INVALID_PAYLOAD"
    # Running iterations stay writable when the experiment stops.
    client.create_parameter(run.iteration_id, "still", "writable")


def test_iterations_and_children(run: Run) -> None:
    client = run.client
    iteration = client.get_iteration(run.iteration_id)
    assert iteration is not None
    assert iteration.experiment_id == run.experiment_id
    assert iteration.status is dd.IterationStatus.RUNNING
    assert not iteration.ended
    assert iteration.parent_iteration_id is None

    child_a = client.create_iteration(run.experiment_id, parent_iteration_id=run.iteration_id)
    child_b = client.create_iteration(run.experiment_id, parent_iteration_id=run.iteration_id)
    children = client.get_child_iterations(run.iteration_id)
    assert [c.id for c in children] == [child_a, child_b]
    assert all(c.parent_iteration_id == run.iteration_id for c in children)
    assert {i.id for i in client.get_iterations(run.experiment_id)} == {
        run.iteration_id,
        child_a,
        child_b,
    }
    page = client.get_iterations(run.experiment_id, dd.Pagination(limit=2))
    assert (page.total, len(page.data)) == (3, 2)


def test_parent_must_exist_in_the_same_experiment(run: Run) -> None:
    client = run.client
    other_experiment = client.create_experiment(run.project_id, "other")
    foreign = client.create_iteration(other_experiment)
    with pytest.raises(dd.UnprocessableError):
        client.create_iteration(run.experiment_id, parent_iteration_id=foreign)
    with pytest.raises(dd.UnprocessableError):
        client.create_iteration(run.experiment_id, parent_iteration_id=_missing_id(run))


def test_update_and_end_iteration(run: Run) -> None:
    client = run.client
    client.update_iteration(run.iteration_id, notes="first try")
    with pytest.raises(ValueError, match="at least one"):
        client.update_iteration(run.iteration_id)
    client.end_iteration(run.iteration_id, "failed", error_message="diverged")

    iteration = client.get_iteration(run.iteration_id)
    assert iteration is not None
    assert iteration.notes == "first try"
    assert iteration.status is dd.IterationStatus.FAILED
    assert iteration.error_message == "diverged"
    assert iteration.ended


def test_the_end_lock(run: Run) -> None:
    client = run.client
    parameter_id = client.create_parameter(run.iteration_id, "lr", 0.1)
    metric_id = client.create_metric(run.iteration_id, "loss", 1.0)
    client.end_iteration(run.iteration_id, dd.IterationStatus.SUCCEEDED)

    refused = [
        lambda: client.update_iteration(run.iteration_id, notes="late"),
        lambda: client.end_iteration(run.iteration_id, "KILLED"),
        lambda: client.create_parameter(run.iteration_id, "late", "x"),
        lambda: client.update_parameter(parameter_id, value="0.2"),
        lambda: client.create_metric(run.iteration_id, "loss", 0.5),
        lambda: client.log_metrics(run.iteration_id, {"loss": 0.5}),
        lambda: client.update_metric(metric_id, value=0.5),
        lambda: client.add_tag(run.iteration_id, "late"),
    ]
    for call in refused:
        with pytest.raises(dd.UnprocessableError):
            call()
    # Deletes under the lock answer 500 on the server, not 422.
    with pytest.raises(dd.ServerError):
        client.delete_parameter(parameter_id)
    with pytest.raises(dd.ServerError):
        client.delete_metric(metric_id)

    # What the lock still allows: children under the ended run, reads.
    child = client.create_iteration(run.experiment_id, parent_iteration_id=run.iteration_id)
    assert client.get_iteration(child) is not None
    assert [m.value for m in client.get_metrics(run.iteration_id)] == [1.0]


def test_aware_datetimes_are_converted_to_the_server_clock(run: Run) -> None:
    client = run.client
    offset = client.backend.server_utc_offset()
    when = datetime(2026, 5, 6, 7, 8, 9, 120000, tzinfo=timezone.utc)
    client.end_iteration(run.iteration_id, "SUCCEEDED", end_date=when)
    iteration = client.get_iteration(run.iteration_id)
    assert iteration is not None
    assert iteration.end_date == when.replace(tzinfo=None) + offset


def test_tags(run: Run) -> None:
    client = run.client
    client.add_tag(run.iteration_id, "baseline")
    client.add_tag(run.iteration_id, "cpu")
    assert sorted(t.value for t in client.get_tags(run.iteration_id)) == ["baseline", "cpu"]
    with pytest.raises(dd.ConflictError):
        client.add_tag(run.iteration_id, "cpu")
    client.add_tag(run.experiment_id, "shared", target="experiment")
    client.add_tag(run.project_id, "shared", target="project")
    project_tags = client.get_tags(run.project_id, target="project")
    experiment_tags = client.get_tags(run.experiment_id, target="experiment")
    assert [t.id for t in project_tags] == [t.id for t in experiment_tags]
    with pytest.raises(ValueError, match="target"):
        client.get_tags(run.iteration_id, target="model")


def test_listing_a_missing_parent_is_empty(run: Run) -> None:
    assert run.client.get_parameters(_missing_id(run)) == []
    assert run.client.get_metrics(_missing_id(run)) == []


def _missing_id(run: Run) -> dd.Id:
    """An id of the right kind that no entity has."""
    if run.kind.startswith("http-int"):
        return 987_654_321
    return "00000000-0000-0000-0000-000000000000"


def test_server_clock_offset_is_a_whole_quarter_hour(client: dd.Client) -> None:
    offset = client.backend.server_utc_offset()
    assert offset.total_seconds() % 900 == 0
    assert abs(offset) <= timedelta(hours=14)
