"""The interface every backend implements: DearDiary's operations, one page or row at a time.

A backend is the part of the client that moves data: :class:`~.http.HTTPBackend` talks to a
DearDiary server, :class:`~.local.LocalBackend` keeps the same data in an fsspec store. The
public :class:`~deardiary_lightning.client.Client` sits on top: it validates arguments (finite
metric values, non-empty parameter text, non-empty keys), turns values into their wire form,
reads whole lists page by page and returns ``None`` for missing entities. Backends therefore
receive clean arguments and implement the server's rules and errors:

- missing entities on ``get_*``: return ``None``;
- refusals raise the :mod:`~deardiary_lightning.errors` class and code the server would use:
  :class:`~deardiary_lightning.errors.UnprocessableError` (422 ``INVALID_PAYLOAD``) for an ended
  iteration, an experiment that is not IN_PROGRESS, a missing parent or target of an update;
  :class:`~deardiary_lightning.errors.ConflictError` (409 ``CONFLICT``) for uniqueness;
  :class:`~deardiary_lightning.errors.ServerError` (500 ``SERVER_ERROR``) where the server
  answers that (deleting a missing row, deleting a row of an ended iteration);
- pages: ``limit`` clamped to 0..200, negative ``offset`` read as 0, ``total`` of all rows;
  metrics ordered by step, then creation order.

Date-times passed in are naive and already in the store's convention; aware ones are converted
by the client before they reach a backend.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import BinaryIO, Protocol

from deardiary_lightning.entities import (
    AuthInfo,
    Experiment,
    Health,
    Id,
    Iteration,
    Metric,
    Model,
    ModelVersion,
    PaginatedResponse,
    Pagination,
    Parameter,
    Project,
    Resource,
    Tag,
    User,
)

__all__ = [
    "Backend",
    "MetricPoint",
    "ReadableStream",
    "TagTarget",
    "group_points",
    "local_utc_offset",
]

#: One metric point for :meth:`Backend.log_metric_points`: key, value, step, recorded_at.
MetricPoint = tuple[str, float, int, datetime]

#: Kinds of entity a tag can be attached to.
TagTarget = str  # "project" | "experiment" | "iteration"


class ReadableStream(Protocol):
    """A binary stream to read resource bytes from, in chunks."""

    def read(self, size: int = -1, /) -> bytes:
        """Return up to ``size`` bytes; ``b""`` at the end."""

    def close(self) -> None:
        """Release the stream."""


def local_utc_offset() -> timedelta:
    """Return this machine's current offset from UTC."""
    offset = datetime.now().astimezone().utcoffset()
    return offset if offset is not None else timedelta(0)


class Backend(abc.ABC):
    """Abstract base of the HTTP and local-store backends.

    Subclasses implement every abstract method with the semantics of the DearDiary server
    described in the module docstring.
    """

    #: Where the backend writes, without credentials (for messages and reprs).
    url: str

    #: Whether :meth:`log_metric_points` writes points of many steps in one durable write
    #: (rather than one batch per step).
    points_in_one_write: bool = False

    # -- session ------------------------------------------------------------------------------

    @abc.abstractmethod
    def health(self) -> Health:
        """Probe the backend; raises :class:`~deardiary_lightning.errors.TransportError`."""

    @abc.abstractmethod
    def whoami(self) -> User:
        """Return the signed-in user (the default admin without auth)."""

    @abc.abstractmethod
    def refresh_token(self) -> AuthInfo:
        """Exchange the current token for a fresh one and start using it."""

    def close(self) -> None:  # noqa: B027 - optional hook, nothing to release by default
        """Release connections and file handles."""

    def server_utc_offset(self) -> timedelta:
        """Return the offset from UTC of the clock the backend stores naive date-times in.

        The default is this machine's local offset (what a local store uses). The HTTP backend
        measures the server's offset from ``GET /health``.
        """
        return local_utc_offset()

    # -- projects -----------------------------------------------------------------------------

    @abc.abstractmethod
    def create_project(self, name: str) -> Id:
        """Create a project and return its id."""

    @abc.abstractmethod
    def get_project(self, project_id: Id) -> Project | None:
        """Return a project, or ``None``."""

    @abc.abstractmethod
    def list_projects(self) -> list[Project]:
        """Return every project the caller may read (not paged)."""

    # -- experiments --------------------------------------------------------------------------

    @abc.abstractmethod
    def create_experiment(self, project_id: Id, name: str) -> Id:
        """Create an IN_PROGRESS experiment and return its id."""

    @abc.abstractmethod
    def get_experiment(self, experiment_id: Id) -> Experiment | None:
        """Return an experiment, or ``None``."""

    @abc.abstractmethod
    def list_experiments(self, project_id: Id, page: Pagination) -> PaginatedResponse[Experiment]:
        """Return one page of the experiments of a project."""

    @abc.abstractmethod
    def update_experiment(
        self,
        experiment_id: Id,
        *,
        status_id: int,
        name: str | None,
        description: str | None,
        end_date: datetime | None,
    ) -> None:
        """Update an experiment; ``status_id`` is always required, ``None`` leaves a field."""

    # -- iterations ---------------------------------------------------------------------------

    @abc.abstractmethod
    def create_iteration(self, experiment_id: Id, parent_iteration_id: Id | None) -> Id:
        """Create a RUNNING iteration (optionally a child) and return its id."""

    @abc.abstractmethod
    def get_iteration(self, iteration_id: Id) -> Iteration | None:
        """Return an iteration, or ``None``."""

    @abc.abstractmethod
    def list_iterations(self, experiment_id: Id, page: Pagination) -> PaginatedResponse[Iteration]:
        """Return one page of the iterations of an experiment, children included."""

    @abc.abstractmethod
    def list_child_iterations(self, iteration_id: Id) -> list[Iteration]:
        """Return the direct children of an iteration (not paged)."""

    @abc.abstractmethod
    def update_iteration(
        self,
        iteration_id: Id,
        *,
        notes: str | None,
        end_date: datetime | None,
        status_id: int | None,
        error_message: str | None,
    ) -> None:
        """Update an iteration; at least one field is not ``None`` (the client checks)."""

    # -- tags ---------------------------------------------------------------------------------

    @abc.abstractmethod
    def add_tag(self, target: TagTarget, target_id: Id, value: str) -> Id:
        """Attach a tag to a project, experiment or iteration; return the association id."""

    @abc.abstractmethod
    def list_tags(self, target: TagTarget, target_id: Id) -> list[Tag]:
        """Return the tags attached to a project, experiment or iteration."""

    # -- parameters ---------------------------------------------------------------------------

    @abc.abstractmethod
    def create_parameter(self, iteration_id: Id, key: str, value: str) -> Id:
        """Create a parameter (non-empty key and text value) and return its id."""

    @abc.abstractmethod
    def get_parameter(self, parameter_id: Id) -> Parameter | None:
        """Return a parameter, or ``None``."""

    @abc.abstractmethod
    def list_parameters(self, iteration_id: Id, page: Pagination) -> PaginatedResponse[Parameter]:
        """Return one page of the parameters of an iteration."""

    @abc.abstractmethod
    def update_parameter(self, parameter_id: Id, *, key: str | None, value: str | None) -> None:
        """Update a parameter; at least one field is not ``None``."""

    @abc.abstractmethod
    def delete_parameter(self, parameter_id: Id) -> None:
        """Delete a parameter."""

    # -- metrics ------------------------------------------------------------------------------

    @abc.abstractmethod
    def create_metric(
        self,
        iteration_id: Id,
        key: str,
        value: float,
        *,
        step: int | None,
        recorded_at: datetime | None,
    ) -> Id:
        """Create one metric point; ``step=None`` means max step of the key + 1 (or 0)."""

    @abc.abstractmethod
    def log_metrics(
        self,
        iteration_id: Id,
        metrics: Sequence[tuple[str, float]],
        *,
        step: int | None,
        recorded_at: datetime | None,
    ) -> list[Id]:
        """Create several points in one batch; the keys are distinct (the client collapses).

        Returns:
            The new ids, in no particular order (the server's batch route does not keep the
            request order).
        """

    def log_metric_points(self, iteration_id: Id, points: Sequence[MetricPoint]) -> list[Id]:
        """Create points of several steps, in order; the same key at most once per step.

        Consecutive points sharing a step and a ``recorded_at`` form one batch. This default
        sends one :meth:`log_metrics` batch after another (one request each on a server, so a
        failure may leave the first batches written); backends with
        :attr:`points_in_one_write` write them all in one durable write.

        Returns:
            The new ids (in no particular order).
        """
        ids: list[Id] = []
        for step, when, items in group_points(points):
            ids.extend(self.log_metrics(iteration_id, items, step=step, recorded_at=when))
        return ids

    @abc.abstractmethod
    def get_metric(self, metric_id: Id) -> Metric | None:
        """Return a metric point, or ``None``."""

    @abc.abstractmethod
    def list_metrics(self, iteration_id: Id, page: Pagination) -> PaginatedResponse[Metric]:
        """Return one page of the metric points of an iteration, by step then creation."""

    @abc.abstractmethod
    def update_metric(
        self,
        metric_id: Id,
        *,
        key: str | None,
        value: float | None,
        step: int | None,
        recorded_at: datetime | None,
    ) -> None:
        """Update a metric point; at least one field is not ``None``."""

    @abc.abstractmethod
    def delete_metric(self, metric_id: Id) -> None:
        """Delete a metric point."""

    # -- resources ----------------------------------------------------------------------------

    @abc.abstractmethod
    def create_resource(self, experiment_id: Id, name: str, data: BinaryIO, size: int | None) -> Id:
        """Store an artifact, reading ``data`` in chunks (never whole into memory).

        Args:
            experiment_id: The experiment, which must be IN_PROGRESS.
            name: The non-empty resource name.
            data: A binary stream positioned at the start of the bytes.
            size: How many bytes the stream holds, if known.

        Returns:
            The new resource id.
        """

    @abc.abstractmethod
    def get_resource(self, resource_id: Id) -> Resource | None:
        """Return a resource's metadata, or ``None``."""

    @abc.abstractmethod
    def list_resources(self, experiment_id: Id, page: Pagination) -> PaginatedResponse[Resource]:
        """Return one page of the resources of an experiment."""

    @abc.abstractmethod
    def update_resource(
        self,
        resource_id: Id,
        *,
        name: str | None,
        description: str | None,
        data: BinaryIO | None,
        size: int | None,
    ) -> None:
        """Update a resource's name, description and/or bytes (streamed like a create)."""

    @abc.abstractmethod
    def delete_resource(self, resource_id: Id) -> None:
        """Delete a resource and its bytes."""

    @abc.abstractmethod
    def open_resource_data(self, resource_id: Id) -> ReadableStream | None:
        """Open the bytes of a resource for streaming reads, or return ``None`` if missing.

        The caller reads the stream in chunks and closes it.
        """

    # -- model registry -----------------------------------------------------------------------

    @abc.abstractmethod
    def create_model(self, project_id: Id, name: str, description: str | None) -> Id:
        """Register a model name in a project and return its id."""

    @abc.abstractmethod
    def get_model(self, model_id: Id) -> Model | None:
        """Return a model, or ``None``."""

    @abc.abstractmethod
    def list_models(self, project_id: Id, page: Pagination) -> PaginatedResponse[Model]:
        """Return one page of the models of a project."""

    @abc.abstractmethod
    def update_model(self, model_id: Id, *, name: str | None, description: str | None) -> None:
        """Rename or describe a model."""

    @abc.abstractmethod
    def create_model_version(
        self,
        model_id: Id,
        iteration_id: Id,
        resource_id: Id | None,
        description: str | None,
    ) -> Id:
        """Register a new version (number = highest + 1) and return its id."""

    @abc.abstractmethod
    def get_model_version(self, version_id: Id) -> ModelVersion | None:
        """Return a model version, or ``None``."""

    @abc.abstractmethod
    def list_model_versions(
        self, model_id: Id, page: Pagination
    ) -> PaginatedResponse[ModelVersion]:
        """Return one page of the versions of a model, by version number."""

    @abc.abstractmethod
    def update_model_version(
        self,
        version_id: Id,
        *,
        stage_id: int | None,
        description: str | None,
        resource_id: Id | None,
    ) -> None:
        """Change a version's stage, description or resource."""


def group_points(
    points: Sequence[MetricPoint],
) -> list[tuple[int, datetime, list[tuple[str, float]]]]:
    """Split points into runs of one step and one ``recorded_at``, keeping their order."""
    groups: list[tuple[int, datetime, list[tuple[str, float]]]] = []
    for key, value, step, when in points:
        if groups and groups[-1][0] == step and groups[-1][1] == when:
            groups[-1][2].append((key, value))
        else:
            groups.append((step, when, [(key, value)]))
    return groups
