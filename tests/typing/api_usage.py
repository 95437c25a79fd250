"""Type-checked (never run): the public API used the way users write it."""

from __future__ import annotations

from pathlib import Path

import deardiary_lightning as dd


def use_the_api(url: str, checkpoint: Path) -> list[float]:
    client: dd.Client = dd.connect(url, username="me", password="pw")
    project: dd.Id = client.create_project("demo")
    experiment = client.create_experiment(project, "baseline")
    iteration = client.create_iteration(experiment)
    client.create_parameter(iteration, "lr", 0.1)
    ids: list[dd.Id] = client.log_metrics(iteration, {"loss": 0.5, "acc": 0.9}, step=0)
    page: dd.PaginatedResponse[dd.Metric] = client.get_metrics(iteration, dd.Pagination(10, 0))
    everything: list[dd.Metric] = client.get_metrics(iteration)
    resource = client.create_resource(experiment, checkpoint)
    data: bytes | None = client.read_resource_data(resource)
    client.end_iteration(iteration, dd.IterationStatus.SUCCEEDED)
    maybe: dd.Iteration | None = client.get_iteration(iteration)
    assert ids and page.total >= 0 and data is not None and maybe is not None
    try:
        client.delete_metric(ids[0])
    except dd.ServerError as error:
        print(error.status, error.code)
    return [m.value for m in everything]
