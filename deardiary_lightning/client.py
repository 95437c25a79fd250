"""The DearDiary client: the logged-data API over any backend, and :func:`connect`.

:class:`Client` is what users call. It checks arguments on the calling side (finite metric
values, non-empty keys, parameter values as text), reads whole lists page by page, converts
time-zone-aware date-times to the server's clock and then hands clean requests to a
:class:`~deardiary_lightning.backends.base.Backend`: the HTTP API of a DearDiary server, or the
local store.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import datetime, timezone
from pathlib import Path
from types import TracebackType
from typing import IO, Any, BinaryIO, TypeVar, Union, overload

from deardiary_lightning.backends.base import Backend, ReadableStream
from deardiary_lightning.entities import (
    AuthInfo,
    Experiment,
    ExperimentStatus,
    Health,
    Id,
    Iteration,
    IterationStatus,
    Metric,
    Model,
    ModelStage,
    ModelVersion,
    PaginatedResponse,
    Pagination,
    Parameter,
    Project,
    Resource,
    Tag,
    User,
)
from deardiary_lightning.errors import NotFoundError
from deardiary_lightning.wire import check_finite, check_key, parameter_text, to_server_clock

__all__ = ["Client", "connect"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: Largest page the server serves; whole-list reads use it to make as few requests as possible.
MAX_PAGE = 200

#: Chunk size for streaming resource bytes.
CHUNK_SIZE = 1024 * 1024

#: What ``create_resource`` and ``update_resource`` accept as bytes.
ResourceData = Union[bytes, bytearray, memoryview, BinaryIO, IO[bytes]]

_TAG_TARGETS = ("project", "experiment", "iteration")


def connect(
    url: str | os.PathLike[str] | None = None,
    *,
    username: str | None = None,
    password: str | None = None,
    token: str | None = None,
    timeout: float = 30.0,
    storage_options: Mapping[str, Any] | None = None,
) -> Client:
    """Open a client on a DearDiary server or on a local store.

    Args:
        url: ``http://`` or ``https://`` for a DearDiary server; a path, ``file://``,
            ``memory://``, ``s3://`` or any fsspec URL for a local store. ``None`` uses the
            embedded default store, ``./deardiary``.
        username: Sign in with ``POST /auth`` (with ``password``).
        password: The password for ``username``.
        token: Use this bearer token instead of signing in.
        timeout: Seconds to wait for a server's answer.
        storage_options: Extra fsspec options for a local store (credentials of an object store,
            for example).

    Returns:
        A :class:`Client`.

    Raises:
        ValueError: Credentials were given in an incomplete form.
        AuthenticationError: The server refused the credentials.
        TransportError: The server could not be reached while signing in.
    """
    target = "./deardiary" if url is None else os.fspath(url)
    if (username is None) != (password is None):
        msg = "give both username and password to sign in, or neither (a token also works)"
        raise ValueError(msg)

    if target.startswith(("http://", "https://")):
        from deardiary_lightning.backends.http import HTTPBackend

        backend: Backend = HTTPBackend(
            target, username=username, password=password, token=token, timeout=timeout
        )
    else:
        from deardiary_lightning.backends.local import LocalBackend

        backend = LocalBackend(target, storage_options=dict(storage_options or {}))
    return Client(backend)


class Client:
    """DearDiary's logged-data API: projects, experiments, iterations, parameters, metrics,
    resources, tags and the model registry.

    Create it with :func:`connect`. Every ``get_<entity>`` returns ``None`` when the entity does
    not exist; every other failure raises a :class:`~deardiary_lightning.errors.DearDiaryError`.
    Ids are opaque (``int`` or ``str``, as the server makes them). List methods without a
    ``page`` return every row, reading the server's pages one after the other.

    Args:
        backend: Where the data goes (see :func:`connect`).
    """

    def __init__(self, backend: Backend) -> None:
        self.backend = backend

    def __repr__(self) -> str:
        return f"Client({self.backend.url!r})"

    @property
    def url(self) -> str:
        """Where this client writes, without credentials."""
        return self.backend.url

    def close(self) -> None:
        """Release the backend's connections and files."""
        self.backend.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- session ------------------------------------------------------------------------------

    def health(self) -> Health:
        """Probe the server (or store).

        Returns:
            The server's name, version and clock.

        Raises:
            TransportError: The server cannot be reached.
        """
        return self.backend.health()

    def whoami(self) -> User:
        """Return the signed-in user (the default admin when the server runs without auth)."""
        return self.backend.whoami()

    def refresh_token(self) -> AuthInfo:
        """Replace the token with a fresh one (24 hours) and return its details.

        Raises:
            TokenExpiredError: The token has already expired; connect again with the password.
        """
        return self.backend.refresh_token()

    # -- projects -----------------------------------------------------------------------------

    def create_project(self, name: str) -> Id:
        """Create a project.

        Args:
            name: A non-empty name (names are not unique).

        Returns:
            The new project's id.
        """
        return self.backend.create_project(_check_name("project", name))

    def get_project(self, project_id: Id) -> Project | None:
        """Return a project, or ``None`` if it does not exist."""
        return self.backend.get_project(project_id)

    def get_projects(self) -> list[Project]:
        """Return every project the caller may read."""
        return self.backend.list_projects()

    # -- experiments --------------------------------------------------------------------------

    def create_experiment(self, project_id: Id, name: str) -> Id:
        """Create an experiment (IN_PROGRESS) in a project.

        Args:
            project_id: The project.
            name: A non-empty name (names are not unique).

        Returns:
            The new experiment's id.

        Raises:
            UnprocessableError: The project does not exist.
        """
        return self.backend.create_experiment(project_id, _check_name("experiment", name))

    def get_experiment(self, experiment_id: Id) -> Experiment | None:
        """Return an experiment, or ``None`` if it does not exist."""
        return self.backend.get_experiment(experiment_id)

    @overload
    def get_experiments(self, project_id: Id) -> list[Experiment]: ...

    @overload
    def get_experiments(
        self, project_id: Id, page: Pagination
    ) -> PaginatedResponse[Experiment]: ...

    def get_experiments(
        self, project_id: Id, page: Pagination | None = None
    ) -> list[Experiment] | PaginatedResponse[Experiment]:
        """Return the experiments of a project: all of them, or one page.

        Args:
            project_id: The project.
            page: A page to read; without it every row is returned.
        """
        return self._list(lambda p: self.backend.list_experiments(project_id, p), page)

    def update_experiment(
        self,
        experiment_id: Id,
        *,
        status: ExperimentStatus | int | str | None = None,
        name: str | None = None,
        description: str | None = None,
        end_date: datetime | None = None,
    ) -> None:
        """Change an experiment's status, name, description or end date.

        The server needs the status on every update; when ``status`` is not given the current
        one is read and sent back unchanged.

        Args:
            experiment_id: The experiment.
            status: The new status (member, wire value or name).
            name: A new non-empty name.
            description: A new description.
            end_date: The end date to record (the server does not fill it when stopping).

        Raises:
            UnprocessableError: The experiment does not exist.
        """
        if status is None:
            current = self.backend.get_experiment(experiment_id)
            if current is None:
                raise _missing("experiment", experiment_id, self.url)
            status_id = current.status_id
        else:
            status_id = _enum_value(ExperimentStatus, status)
        if name is not None:
            _check_name("experiment", name)
        self.backend.update_experiment(
            experiment_id,
            status_id=status_id,
            name=name,
            description=description,
            end_date=self._server_time(end_date),
        )

    # -- iterations ---------------------------------------------------------------------------

    def create_iteration(self, experiment_id: Id, *, parent_iteration_id: Id | None = None) -> Id:
        """Start a run (RUNNING) in an experiment.

        Args:
            experiment_id: The experiment, which must be IN_PROGRESS.
            parent_iteration_id: Make the new iteration a child of this one (same experiment).

        Returns:
            The new iteration's id.

        Raises:
            UnprocessableError: The experiment is missing or not IN_PROGRESS, or the parent is
                missing or belongs to another experiment.
        """
        return self.backend.create_iteration(experiment_id, parent_iteration_id)

    def get_iteration(self, iteration_id: Id) -> Iteration | None:
        """Return an iteration, or ``None`` if it does not exist."""
        return self.backend.get_iteration(iteration_id)

    @overload
    def get_iterations(self, experiment_id: Id) -> list[Iteration]: ...

    @overload
    def get_iterations(
        self, experiment_id: Id, page: Pagination
    ) -> PaginatedResponse[Iteration]: ...

    def get_iterations(
        self, experiment_id: Id, page: Pagination | None = None
    ) -> list[Iteration] | PaginatedResponse[Iteration]:
        """Return the iterations of an experiment (children included): all, or one page."""
        return self._list(lambda p: self.backend.list_iterations(experiment_id, p), page)

    def get_child_iterations(self, iteration_id: Id) -> list[Iteration]:
        """Return the direct children of an iteration."""
        return self.backend.list_child_iterations(iteration_id)

    def update_iteration(
        self,
        iteration_id: Id,
        *,
        notes: str | None = None,
        end_date: datetime | None = None,
        status: IterationStatus | int | str | None = None,
        error_message: str | None = None,
    ) -> None:
        """Change an iteration's notes, status, error text or end date.

        Setting ``end_date`` ends the iteration for good: afterwards nothing can be written to
        it. Prefer :meth:`end_iteration`, which sets status and end date together.

        Raises:
            ValueError: No field was given (the server would answer 500).
            UnprocessableError: The iteration is missing or already ended.
        """
        if notes is None and end_date is None and status is None and error_message is None:
            msg = "update_iteration needs at least one of notes, end_date, status, error_message"
            raise ValueError(msg)
        self.backend.update_iteration(
            iteration_id,
            notes=notes,
            end_date=self._server_time(end_date),
            status_id=None if status is None else _enum_value(IterationStatus, status),
            error_message=error_message,
        )

    def end_iteration(
        self,
        iteration_id: Id,
        status: IterationStatus | int | str,
        *,
        error_message: str | None = None,
        end_date: datetime | None = None,
    ) -> None:
        """End a run: set its final status and end date in one update.

        Args:
            iteration_id: The iteration.
            status: ``SUCCEEDED``, ``FAILED`` or ``KILLED`` (member, wire value or name).
            error_message: Text to record, typically for a failure.
            end_date: When the run ended; now by default.

        Raises:
            UnprocessableError: The iteration is missing or already ended.
        """
        when = end_date if end_date is not None else datetime.now(timezone.utc)
        self.update_iteration(
            iteration_id, status=status, end_date=when, error_message=error_message
        )

    # -- tags ---------------------------------------------------------------------------------

    def add_tag(self, target_id: Id, value: str, *, target: str = "iteration") -> Id:
        """Attach a tag to an iteration (or to a project or an experiment).

        Args:
            target_id: The id of the iteration, project or experiment.
            value: The tag text, non-empty.
            target: ``"iteration"``, ``"experiment"`` or ``"project"``.

        Returns:
            The id of the association (not of the tag).

        Raises:
            ConflictError: The tag is already attached there.
            UnprocessableError: The target is missing, or is an ended iteration.
        """
        return self.backend.add_tag(_check_target(target), target_id, _check_name("tag", value))

    def get_tags(self, target_id: Id, *, target: str = "iteration") -> list[Tag]:
        """Return the tags attached to an iteration (or a project or an experiment)."""
        return self.backend.list_tags(_check_target(target), target_id)

    # -- parameters ---------------------------------------------------------------------------

    def get_parameter(self, parameter_id: Id) -> Parameter | None:
        """Return a parameter, or ``None`` if it does not exist."""
        return self.backend.get_parameter(parameter_id)

    @overload
    def get_parameters(self, iteration_id: Id) -> list[Parameter]: ...

    @overload
    def get_parameters(
        self, iteration_id: Id, page: Pagination
    ) -> PaginatedResponse[Parameter]: ...

    def get_parameters(
        self, iteration_id: Id, page: Pagination | None = None
    ) -> list[Parameter] | PaginatedResponse[Parameter]:
        """Return the parameters of an iteration: all of them, or one page.

        Args:
            iteration_id: The iteration.
            page: A page to read; without it every row is returned (not only the first 50).
        """
        return self._list(lambda p: self.backend.list_parameters(iteration_id, p), page)

    def create_parameter(self, iteration_id: Id, key: str, value: str | int | float) -> Id:
        """Record a parameter of an iteration.

        Args:
            iteration_id: The iteration, which must not have ended.
            key: A non-empty key. Keys are not unique: the same key twice makes two rows.
            value: ``str``, ``int``, ``float`` or ``bool``; stored as text (``True`` as
                ``"true"``, numbers in their shortest exact form).

        Returns:
            The new parameter's id.

        Raises:
            TypeError: The key or value has an unsupported type.
            ValueError: The key or the value's text is empty.
            UnprocessableError: The iteration is missing or ended.
        """
        check_key("parameter", key)
        return self.backend.create_parameter(iteration_id, key, parameter_text(key, value))

    def update_parameter(
        self,
        parameter_id: Id,
        *,
        key: str | None = None,
        value: str | int | float | None = None,
    ) -> None:
        """Change a parameter's key or value.

        Raises:
            ValueError: Neither was given, or one is empty.
            UnprocessableError: The parameter is missing or its iteration has ended.
        """
        if key is None and value is None:
            msg = "update_parameter needs key or value"
            raise ValueError(msg)
        if key is not None:
            check_key("parameter", key)
        text = None if value is None else parameter_text(key or str(parameter_id), value)
        self.backend.update_parameter(parameter_id, key=key, value=text)

    def delete_parameter(self, parameter_id: Id) -> None:
        """Delete a parameter.

        Raises:
            ServerError: The parameter is missing or its iteration has ended (the server
                answers 500 ``SERVER_ERROR`` in both cases).
        """
        self.backend.delete_parameter(parameter_id)

    # -- metrics ------------------------------------------------------------------------------

    def get_metric(self, metric_id: Id) -> Metric | None:
        """Return a metric point, or ``None`` if it does not exist."""
        return self.backend.get_metric(metric_id)

    @overload
    def get_metrics(self, iteration_id: Id) -> list[Metric]: ...

    @overload
    def get_metrics(self, iteration_id: Id, page: Pagination) -> PaginatedResponse[Metric]: ...

    def get_metrics(
        self, iteration_id: Id, page: Pagination | None = None
    ) -> list[Metric] | PaginatedResponse[Metric]:
        """Return the metric points of an iteration, by step: all of them, or one page."""
        return self._list(lambda p: self.backend.list_metrics(iteration_id, p), page)

    def create_metric(
        self,
        iteration_id: Id,
        key: str,
        value: float,
        *,
        step: int | None = None,
        recorded_at: datetime | None = None,
    ) -> Id:
        """Record one metric point.

        Args:
            iteration_id: The iteration, which must not have ended.
            key: A non-empty key.
            value: A finite real number.
            step: Position in the series; by default the key's largest step plus one (0 for a
                new key).
            recorded_at: When the value was measured; the server's clock by default.

        Returns:
            The new point's id.

        Raises:
            TypeError: ``value`` is not a real number.
            ValueError: ``value`` is NaN or infinite, or the key is empty.
            UnprocessableError: The iteration is missing or ended.
        """
        check_key("metric", key)
        number = check_finite(key, value)
        return self.backend.create_metric(
            iteration_id,
            key,
            number,
            step=_check_step(step),
            recorded_at=self._server_time(recorded_at),
        )

    def log_metrics(
        self,
        iteration_id: Id,
        metrics: Mapping[str, float] | Iterable[tuple[str, float]],
        *,
        step: int | None = None,
        recorded_at: datetime | None = None,
    ) -> list[Id]:
        """Record several metric points in one request.

        Every value is checked before anything is sent, so a bad value leaves the batch
        unsent rather than half written (the server's batch is not atomic).

        Args:
            iteration_id: The iteration, which must not have ended.
            metrics: Key to value. Each key at most once: the server would keep only the last
                value of a repeated key.
            step: One step for every point; by default each key takes its own next step.
            recorded_at: One time for every point; the server's clock by default.

        Returns:
            The ids of the new points, in no particular order (the server does not keep the
            order of the request).

        Raises:
            TypeError: A value is not a real number or a key is not a string.
            ValueError: A value is NaN or infinite, a key is empty or repeated.
            UnprocessableError: The iteration is missing or ended.
        """
        items = list(metrics.items()) if isinstance(metrics, Mapping) else list(metrics)
        clean: list[tuple[str, float]] = []
        seen: set[str] = set()
        for key, value in items:
            check_key("metric", key)
            if key in seen:
                msg = (
                    f"metric {key!r} appears twice in one batch; the server keeps one value per "
                    "key and batch: log the other value in another call"
                )
                raise ValueError(msg)
            seen.add(key)
            clean.append((key, check_finite(key, value)))
        if not clean:
            return []
        return self.backend.log_metrics(
            iteration_id,
            clean,
            step=_check_step(step),
            recorded_at=self._server_time(recorded_at),
        )

    def update_metric(
        self,
        metric_id: Id,
        *,
        key: str | None = None,
        value: float | None = None,
        step: int | None = None,
        recorded_at: datetime | None = None,
    ) -> None:
        """Change a metric point's key, value, step or time.

        Raises:
            ValueError: Nothing was given, or the value is not finite.
            UnprocessableError: The point is missing or its iteration has ended.
        """
        if key is None and value is None and step is None and recorded_at is None:
            msg = "update_metric needs at least one of key, value, step, recorded_at"
            raise ValueError(msg)
        if key is not None:
            check_key("metric", key)
        self.backend.update_metric(
            metric_id,
            key=key,
            value=None if value is None else check_finite(key or str(metric_id), value),
            step=_check_step(step),
            recorded_at=self._server_time(recorded_at),
        )

    def delete_metric(self, metric_id: Id) -> None:
        """Delete a metric point.

        Raises:
            ServerError: The point is missing or its iteration has ended.
        """
        self.backend.delete_metric(metric_id)

    # -- resources ----------------------------------------------------------------------------

    def get_resource(self, resource_id: Id) -> Resource | None:
        """Return a resource's metadata (its ``data`` is ``None``), or ``None`` if missing."""
        return self.backend.get_resource(resource_id)

    @overload
    def get_resources(self, experiment_id: Id) -> list[Resource]: ...

    @overload
    def get_resources(self, experiment_id: Id, page: Pagination) -> PaginatedResponse[Resource]: ...

    def get_resources(
        self, experiment_id: Id, page: Pagination | None = None
    ) -> list[Resource] | PaginatedResponse[Resource]:
        """Return the resources of an experiment: all of them, or one page."""
        return self._list(lambda p: self.backend.list_resources(experiment_id, p), page)

    def create_resource(
        self,
        experiment_id: Id,
        name: str | os.PathLike[str],
        data: ResourceData | None = None,
    ) -> Id:
        """Upload an artifact to an experiment, streamed.

        Two forms: ``create_resource(experiment_id, name, data)`` with ``data`` as bytes or a
        binary file object, and ``create_resource(experiment_id, path)``, which uploads the file
        under its base name. Files are read in chunks, never whole into memory.

        Args:
            experiment_id: The experiment, which must be IN_PROGRESS.
            name: The resource name, or (without ``data``) the path of a file to upload.
            data: The bytes or an open binary file.

        Returns:
            The new resource's id.

        Raises:
            FileNotFoundError: The path does not exist.
            UnprocessableError: The experiment is missing or not IN_PROGRESS.
        """
        if data is None:
            path = Path(name)
            with path.open("rb") as file:
                return self.backend.create_resource(
                    experiment_id, _check_name("resource", path.name), file, _size_of(file)
                )
        if not isinstance(name, str):
            msg = "with data, name must be the resource name (str); pass a path alone to upload"
            raise TypeError(msg)
        stream = _as_stream(data)
        return self.backend.create_resource(
            experiment_id, _check_name("resource", name), stream, _size_of(stream)
        )

    def update_resource(
        self,
        resource_id: Id,
        *,
        name: str | None = None,
        description: str | None = None,
        data: ResourceData | os.PathLike[str] | None = None,
    ) -> None:
        """Rename, describe or replace the bytes of a resource.

        Args:
            resource_id: The resource.
            name: A new non-empty name.
            description: A new description.
            data: New bytes, an open binary file or a path, streamed.

        Raises:
            UnprocessableError: The resource is missing.
        """
        if name is not None:
            _check_name("resource", name)
        if isinstance(data, os.PathLike):
            with Path(data).open("rb") as stream:
                self.backend.update_resource(
                    resource_id,
                    name=name,
                    description=description,
                    data=stream,
                    size=_size_of(stream),
                )
            return
        stream_or_none = None if data is None else _as_stream(data)
        self.backend.update_resource(
            resource_id,
            name=name,
            description=description,
            data=stream_or_none,
            size=None if stream_or_none is None else _size_of(stream_or_none),
        )

    def delete_resource(self, resource_id: Id) -> None:
        """Delete a resource and its bytes.

        Raises:
            ServerError: The resource is missing or a model version uses it.
        """
        self.backend.delete_resource(resource_id)

    def read_resource_data(self, resource_id: Id) -> bytes | None:
        """Return the bytes of a resource, or ``None`` if it does not exist.

        This holds the whole artifact in memory; use :meth:`download_resource` for large ones.
        """
        stream = self.backend.open_resource_data(resource_id)
        if stream is None:
            return None
        with _closing(stream):
            return b"".join(iter(lambda: stream.read(CHUNK_SIZE), b""))

    def download_resource(
        self, resource_id: Id, destination: str | os.PathLike[str] | BinaryIO
    ) -> int | None:
        """Stream the bytes of a resource into a file, without holding them in memory.

        Args:
            resource_id: The resource.
            destination: A path (written through a temporary file, then moved into place) or a
                binary file object open for writing.

        Returns:
            The number of bytes written, or ``None`` if the resource does not exist.
        """
        stream = self.backend.open_resource_data(resource_id)
        if stream is None:
            return None
        with _closing(stream):
            if not isinstance(destination, (str, os.PathLike)):
                return _copy(stream, destination)
            target = Path(destination)
            partial = target.with_name(target.name + ".part")
            with partial.open("wb") as out:
                written = _copy(stream, out)
            partial.replace(target)
            return written

    # -- model registry -----------------------------------------------------------------------

    def create_model(self, project_id: Id, name: str, *, description: str | None = None) -> Id:
        """Register a model name in a project (names are unique per project).

        Raises:
            ConflictError: The project already has a model of that name.
        """
        return self.backend.create_model(project_id, _check_name("model", name), description)

    def get_model(self, model_id: Id) -> Model | None:
        """Return a model, or ``None`` if it does not exist."""
        return self.backend.get_model(model_id)

    @overload
    def get_models(self, project_id: Id) -> list[Model]: ...

    @overload
    def get_models(self, project_id: Id, page: Pagination) -> PaginatedResponse[Model]: ...

    def get_models(
        self, project_id: Id, page: Pagination | None = None
    ) -> list[Model] | PaginatedResponse[Model]:
        """Return the models of a project: all of them, or one page."""
        return self._list(lambda p: self.backend.list_models(project_id, p), page)

    def update_model(
        self, model_id: Id, *, name: str | None = None, description: str | None = None
    ) -> None:
        """Rename or describe a model.

        Raises:
            UnprocessableError: The model is missing, or it has versions and ``name`` is given.
        """
        if name is not None:
            _check_name("model", name)
        self.backend.update_model(model_id, name=name, description=description)

    def create_model_version(
        self,
        model_id: Id,
        iteration_id: Id,
        *,
        resource_id: Id | None = None,
        description: str | None = None,
    ) -> Id:
        """Register a new version of a model, produced by an iteration.

        Args:
            model_id: The model.
            iteration_id: The iteration that produced it (same project).
            resource_id: The artifact holding the weights (same project).
            description: Free text.

        Returns:
            The new version's id (its number is ``get_model_version(id).version``).
        """
        return self.backend.create_model_version(model_id, iteration_id, resource_id, description)

    def get_model_version(self, version_id: Id) -> ModelVersion | None:
        """Return a model version, or ``None`` if it does not exist."""
        return self.backend.get_model_version(version_id)

    @overload
    def get_model_versions(self, model_id: Id) -> list[ModelVersion]: ...

    @overload
    def get_model_versions(
        self, model_id: Id, page: Pagination
    ) -> PaginatedResponse[ModelVersion]: ...

    def get_model_versions(
        self, model_id: Id, page: Pagination | None = None
    ) -> list[ModelVersion] | PaginatedResponse[ModelVersion]:
        """Return the versions of a model by number: all of them, or one page."""
        return self._list(lambda p: self.backend.list_model_versions(model_id, p), page)

    def update_model_version(
        self,
        version_id: Id,
        *,
        stage: ModelStage | int | str | None = None,
        description: str | None = None,
        resource_id: Id | None = None,
    ) -> None:
        """Change a version's stage, description or resource.

        Promoting a version to PRODUCTION archives the model's other PRODUCTION versions.
        """
        if stage is None and description is None and resource_id is None:
            msg = "update_model_version needs at least one of stage, description, resource_id"
            raise ValueError(msg)
        self.backend.update_model_version(
            version_id,
            stage_id=None if stage is None else _enum_value(ModelStage, stage),
            description=description,
            resource_id=resource_id,
        )

    # -- helpers ------------------------------------------------------------------------------

    def _server_time(self, value: datetime | None) -> datetime | None:
        """Convert an aware date-time to the backend's naive clock; naive ones pass as given."""
        if value is None or value.tzinfo is None:
            return value
        return to_server_clock(value, self.backend.server_utc_offset())

    @staticmethod
    def _list(
        fetch: Callable[[Pagination], PaginatedResponse[T]], page: Pagination | None
    ) -> list[T] | PaginatedResponse[T]:
        """Return one page when asked for one, else every row, page after page."""
        if page is not None:
            return fetch(page)
        return list(_all_rows(fetch))


def _all_rows(fetch: Callable[[Pagination], PaginatedResponse[T]]) -> Iterator[T]:
    """Read a list to its end, dropping rows a concurrent insert pushed into the next page.

    Most server lists have no defined order, so rows written while the list is being read may
    also be missed; read again after the writes settle when completeness matters.
    """
    seen: set[Any] = set()
    offset = 0
    while True:
        page = fetch(Pagination(MAX_PAGE, offset))
        for row in page.data:
            row_id = getattr(row, "id", None)
            if row_id in seen:
                continue
            seen.add(row_id)
            yield row
        offset += len(page.data)
        if not page.data or offset >= page.total:
            return


def _check_name(kind: str, name: Any) -> str:
    """Refuse names the server would answer with 422 or a crash."""
    if not isinstance(name, str):
        msg = f"{kind} name {name!r} is a {type(name).__name__}; pass a string"
        raise TypeError(msg)
    if not name:
        msg = f"{kind} name is empty; DearDiary needs a non-empty name"
        raise ValueError(msg)
    return name


def _check_target(target: str) -> str:
    """Refuse tag targets the server has no route for."""
    if target not in _TAG_TARGETS:
        msg = f"tag target {target!r} is not one of {', '.join(_TAG_TARGETS)}"
        raise ValueError(msg)
    return target


_INT64 = range(-(2**63), 2**63)


def _check_step(step: int | None) -> int | None:
    """Accept integral steps in the server's 64-bit range only."""
    if step is None:
        return None
    as_int: int | None = step
    if isinstance(step, bool) or not isinstance(step, int):
        try:
            as_int = int(step)
        except (TypeError, ValueError, OverflowError):
            as_int = None
        if as_int is None or as_int != step:
            msg = f"step {step!r} is not an integer"
            raise TypeError(msg)
    if as_int not in _INT64:
        msg = f"step {step!r} is outside the signed 64-bit range the server stores"
        raise ValueError(msg)
    return as_int


E = TypeVar("E", ExperimentStatus, IterationStatus, ModelStage)


def _enum_value(enum_type: type[E], value: E | int | str) -> int:
    """Turn an enum member, its wire value or its name into the wire value."""
    try:
        if isinstance(value, str):
            return int(enum_type[value.upper()])
        return int(enum_type(value))
    except (KeyError, ValueError):
        allowed = ", ".join(f"{m.name} ({m.value})" for m in enum_type)
        msg = f"{value!r} is not a {enum_type.__name__}; use one of {allowed}"
        raise ValueError(msg) from None


def _missing(kind: str, entity_id: Id, url: str) -> NotFoundError:
    """Build the error for an entity the client needed to read first."""
    message = f"{kind} {entity_id!r} does not exist"
    return NotFoundError(404, "NOT_FOUND", message, method="GET", url=url)


def _as_stream(data: ResourceData) -> BinaryIO:
    """Wrap bytes in a stream; pass file objects through."""
    import io

    if isinstance(data, (bytes, bytearray, memoryview)):
        return io.BytesIO(bytes(data))
    if not hasattr(data, "read"):
        msg = f"resource data must be bytes or a binary file object, not {type(data).__name__}"
        raise TypeError(msg)
    return data  # type: ignore[return-value]


def _size_of(stream: IO[bytes]) -> int | None:
    """Return how many bytes remain in a seekable stream, or ``None`` if unknown."""
    try:
        start = stream.tell()
        end = stream.seek(0, os.SEEK_END)
        stream.seek(start)
    except (AttributeError, OSError, ValueError):
        return None
    return end - start


def _copy(source: ReadableStream, target: IO[bytes]) -> int:
    """Copy a stream in chunks and return the byte count."""
    written = 0
    for chunk in iter(lambda: source.read(CHUNK_SIZE), b""):
        target.write(chunk)
        written += len(chunk)
    return written


class _closing:
    """Close a stream on exit (``contextlib.closing`` wants a typed ``close``)."""

    def __init__(self, stream: ReadableStream) -> None:
        self.stream = stream

    def __enter__(self) -> ReadableStream:
        return self.stream

    def __exit__(self, *exc: object) -> None:
        self.stream.close()
