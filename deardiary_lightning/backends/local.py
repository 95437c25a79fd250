"""The local store: DearDiary's data and rules in files reached through fsspec.

:class:`LocalBackend` keeps projects, experiments, iterations, parameters, metrics, resources,
tags and the model registry in a directory (``./deardiary`` by default), in memory
(``memory://``) or in an object store (``s3://bucket/prefix`` and any fsspec URL). It follows the
DearDiary server's rules and raises the server's errors, so code written against one works on
the other.

How the data is kept (the README's "The local store" section has the full format):

- every write is one or a few JSON records appended to this writer's own log (a new object per
  write on object stores, packed into larger new objects every few dozen writes so that reading
  a run back fetches few objects), durable before the call returns; nothing is ever rewritten,
  so the cost of a write does not grow with the store;
- the rows are rebuilt in memory from the records of every writer, and records added by other
  processes are picked up before each read;
- ids are ``<writer-id>-<counter>``: writer ids are time-ordered and random, so two processes
  writing to the same store never make the same id.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any, BinaryIO, NoReturn, TypeVar, cast

from deardiary_lightning.backends.base import Backend, MetricPoint, TagTarget, group_points
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
    _Entity,
)
from deardiary_lightning.errors import (
    BadRequestError,
    ConflictError,
    ConnectError,
    ResponseLostError,
    ServerError,
    UnprocessableError,
)
from deardiary_lightning.store.layout import (
    StoreLocation,
    fsync_directory,
    new_writer_id,
    open_location,
    store_errors,
)
from deardiary_lightning.store.log import LogReader, LogWriter, Record
from deardiary_lightning.store.state import MetricRow, State
from deardiary_lightning.wire import format_datetime, parse_datetime

__all__ = ["APP_NAME", "LocalBackend"]

logger = logging.getLogger(__name__)

T = TypeVar("T")
E = TypeVar("E", bound=_Entity)

#: ``Health.app_name`` of a local store.
APP_NAME = "DearDiary local store"

#: Largest page, as on the server.
MAX_LIMIT = 200

#: Seconds during which the later pages of a list read reuse the first page's look at the store.
PAGE_READ_WINDOW = 2.0

#: Point ids of failed writes remembered for their rewrite (older ones are forgotten).
_UNSURE_MEMORY = 100_000

#: Chunk size for resource bytes.
CHUNK_SIZE = 1024 * 1024

#: The token expiry a local store reports (31 December 9999): it never expires.
FAR_FUTURE = 253402300799

_DEFAULT_USER = User(
    id="default",
    username="default",
    first_name="Default User",
    last_name="",
    created_date=datetime(1970, 1, 1),
    is_admin=True,
)

_TAG_KINDS = {"project": "project", "experiment": "experiment", "iteration": "iteration"}


def _now() -> str:
    """The local wall clock in the store's format (naive, milliseconds)."""
    return format_datetime(datetime.now())


def _clamp(page: Pagination) -> tuple[int, int]:
    """Return ``(limit, offset)`` clamped like the server does."""
    return min(max(int(page.limit), 0), MAX_LIMIT), max(int(page.offset), 0)


def _paged(rows: Sequence[T], page: Pagination, convert: Callable[[T], Any]) -> Any:
    """Cut one page out of ``rows`` and convert its rows."""
    limit, offset = _clamp(page)
    data = [convert(row) for row in rows[offset : offset + limit]]
    return PaginatedResponse(data=data, total=len(rows), limit=limit, offset=offset)


def _metric(row: MetricRow) -> Metric:
    """Build a :class:`Metric` from a stored point."""
    at = row[5]
    return Metric(
        id=row[0],
        iteration_id=row[1],
        key=row[2],
        value=float(row[3]),
        step=int(row[4]),
        recorded_at=parse_datetime(at) if at else None,
    )


class LocalBackend(Backend):
    """DearDiary's operations on a local store (see the module docstring).

    Args:
        url: A path, ``file://``, ``memory://``, ``s3://`` or any fsspec URL. The store is
            created by its first write.
        storage_options: Options for the fsspec filesystem (endpoint, credentials, ...).

    Raises:
        StoreFormatError: The location holds a store of a newer, unknown format version.
        ConnectError: The store could not be reached (no route to the endpoint, refused
            credentials, a missing drive); nothing was read or written.
    """

    points_in_one_write = True

    def __init__(self, url: str, *, storage_options: dict[str, Any]) -> None:
        self._location: StoreLocation = open_location(url, dict(storage_options))
        self.url = self._location.url
        self._lock = threading.RLock()
        try:
            self._exists = self._location.check_marker()
        except store_errors() as exc:
            raise self._unreachable(exc) from exc
        self._state = State()
        self._writer: LogWriter | None = None
        self._writer_id = ""
        self._reader = LogReader(self._location, "log")
        self._counter = 0
        self._record_number = 0
        self._last_t = 0
        self._last_refresh = -math.inf
        self._unsure_ids: dict[tuple[Id, str, int, str, int], str] = {}
        self._refresh(force=True)

    def __repr__(self) -> str:
        return f"LocalBackend({self.url!r})"

    @property
    def location(self) -> StoreLocation:
        """The opened store location (filesystem, root path, write mode)."""
        return self._location

    @property
    def writer_id(self) -> str:
        """This backend's writer id (empty until the first write)."""
        return self._writer_id

    def close(self) -> None:
        """Close the open log segment; on object stores, pack this writer's latest writes."""
        with self._lock:
            if self._writer is not None:
                self._writer.close()

    # -- plumbing -----------------------------------------------------------------------------

    def refresh(self) -> None:
        """Read what other writers added to the store since the last read."""
        self._refresh(force=True)

    def _refresh(self, *, force: bool = False, max_age: float = 0.0) -> None:
        """Apply other writers' new records, unless the last look is under ``max_age`` s old."""
        with self._lock:
            now = time.monotonic()
            if not force and now - self._last_refresh < max_age:
                return
            try:
                if not self._exists:
                    self._exists = self._location.check_marker()
                    if not self._exists:
                        self._last_refresh = now
                        return
                batches = self._reader.poll()
            except store_errors() as exc:
                raise self._unreachable(exc) from exc
            self._last_refresh = now
            if batches:
                self._state.apply_many(batches)

    @contextmanager
    def _reading(self, page: Pagination | None = None) -> Iterator[State]:
        """Hold the lock, with other writers' records applied.

        The later pages of a list read (``offset > 0``) reuse a look taken in the last
        :data:`PAGE_READ_WINDOW` seconds, so paging through a long list costs one listing of the
        store, not one per page.
        """
        with self._lock:
            continuing = page is not None and page.offset > 0
            self._refresh(max_age=PAGE_READ_WINDOW if continuing else 0.0)
            yield self._state

    def _unreachable(self, exc: BaseException) -> ConnectError:
        """Build the error for a store that could not be read (``exc`` says why)."""
        msg = (
            f"could not read the local store at {self.url} ({type(exc).__name__}: {exc}); "
            "check that the location exists and is reachable from here, and for an object "
            "store the endpoint URL and credentials in storage_options"
        )
        return ConnectError(msg, method="GET", url=self.url)

    def _ensure_writer(self) -> LogWriter:
        if self._writer is None:
            try:
                self._location.ensure_marker()
            except store_errors() as exc:
                raise self._unreachable(exc) from exc
            self._exists = True
            self._writer_id = new_writer_id()
            self._reader.skip_writer = self._writer_id
            self._writer = LogWriter(self._location, "log", self._writer_id)
        return self._writer

    def _new_id(self) -> str:
        self._counter += 1
        return f"{self._writer_id}-{self._counter}"

    def _commit(self, method: str, records: list[Record]) -> None:
        """Write records durably, then apply them to the in-memory rows."""
        writer = self._ensure_writer()
        for record in records:
            t = max(time.time_ns(), self._last_t + 1)
            self._last_t = t
            record["t"] = t
            record["n"] = self._record_number
            self._record_number += 1
        try:
            writer.write(records)
        except store_errors() as exc:
            msg = f"could not write to the local store: {exc}; check space and permissions"
            raise ResponseLostError(msg, method=method, url=self.url) from exc
        for record in records:
            self._state.apply((record["t"], self._writer_id, record["n"]), record)

    def _get(self, kind: str, cls: type[E], row_id: Id) -> E | None:
        """Read one row of ``kind`` as a record, or ``None``."""
        with self._reading():
            row = self._row(kind, row_id)
            return None if row is None else cls.from_wire(row)

    def _list(
        self, kind: str, cls: type[E], parent_id: Id, page: Pagination
    ) -> PaginatedResponse[E]:
        """Read one page of the rows of ``kind`` under a parent, oldest first."""
        with self._reading(page) as state:
            rows = state.rows_under(kind, parent_id)
            return cast(PaginatedResponse[E], _paged(rows, page, cls.from_wire))

    def _row(self, kind: str, row_id: Id) -> dict[str, Any] | None:
        """Return a row, reading other writers' records once more if it is not known yet."""
        row = self._state.row(kind, row_id)
        if row is None and isinstance(row_id, str):
            self._refresh(force=True)
            row = self._state.row(kind, row_id)
        return row

    # -- errors -------------------------------------------------------------------------------

    def _unprocessable(self, method: str, message: str) -> NoReturn:
        raise UnprocessableError(422, "INVALID_PAYLOAD", message, method=method, url=self.url)

    def _server_error(self, method: str, message: str) -> NoReturn:
        raise ServerError(500, "SERVER_ERROR", message, method=method, url=self.url)

    def _generic_500(self, method: str) -> NoReturn:
        raise ServerError(500, "UNKNOWN", "500: Internal Server Error", method=method, url=self.url)

    def _conflict(self, method: str, message: str) -> NoReturn:
        raise ConflictError(409, "CONFLICT", message, method=method, url=self.url)

    def _open_iteration(self, iteration_id: Id, method: str, what: str) -> dict[str, Any]:
        """Return an iteration that accepts writes, or raise the server's 422."""
        row = self._row("iteration", iteration_id)
        if row is None:
            self._unprocessable(method, f"{what}: iteration {iteration_id!r} does not exist")
        if row["end_date"] is not None:
            self._unprocessable(
                method,
                f"{what}: iteration {iteration_id!r} has ended and accepts no more writes; "
                "start a new iteration",
            )
        return row

    def _check_finite(self, method: str, value: float) -> float:
        number = float(value)
        if not math.isfinite(number):
            raise BadRequestError(400, "UNKNOWN", "400: Bad Request", method=method, url=self.url)
        return number

    # -- session ------------------------------------------------------------------------------

    def health(self) -> Health:
        """Check that the store can be read; report the local clock."""
        from deardiary_lightning import __version__

        self._refresh(force=True)
        return Health(app_name=APP_NAME, package_version=__version__, server_time=datetime.now())

    def whoami(self) -> User:
        """Return the local default admin user."""
        return _DEFAULT_USER

    def refresh_token(self) -> AuthInfo:
        """Return a token description that never expires (a local store needs no token)."""
        return AuthInfo(user=_DEFAULT_USER, expires_at=FAR_FUTURE)

    # -- projects -----------------------------------------------------------------------------

    def create_project(self, name: str) -> Id:
        """Create a project."""
        with self._lock:
            if not name:
                self._unprocessable("POST", "project name must not be empty")
            self._ensure_writer()
            project_id = self._new_id()
            row = {"id": project_id, "name": name, "description": "", "created_date": _now()}
            self._commit("POST", [{"op": "create", "kind": "project", "row": row}])
            return project_id

    def get_project(self, project_id: Id) -> Project | None:
        """Return a project, or ``None``."""
        return self._get("project", Project, project_id)

    def list_projects(self) -> list[Project]:
        """Return every project, oldest first."""
        with self._reading() as state:
            rows = sorted(state.rows["project"].values(), key=lambda r: state.created[r["id"]])
            return [Project.from_wire(row) for row in rows]

    # -- experiments --------------------------------------------------------------------------

    def create_experiment(self, project_id: Id, name: str) -> Id:
        """Create an IN_PROGRESS experiment."""
        with self._lock:
            if self._row("project", project_id) is None:
                self._unprocessable("POST", f"project {project_id!r} does not exist")
            if not name:
                self._unprocessable("POST", "experiment name must not be empty")
            self._ensure_writer()
            row = {
                "id": self._new_id(),
                "project_id": project_id,
                "name": name,
                "status_id": int(ExperimentStatus.IN_PROGRESS),
                "description": "",
                "created_date": _now(),
                "end_date": None,
            }
            self._commit("POST", [{"op": "create", "kind": "experiment", "row": row}])
            return cast(str, row["id"])

    def get_experiment(self, experiment_id: Id) -> Experiment | None:
        """Return an experiment, or ``None``."""
        return self._get("experiment", Experiment, experiment_id)

    def list_experiments(self, project_id: Id, page: Pagination) -> PaginatedResponse[Experiment]:
        """Return one page of a project's experiments, oldest first."""
        return self._list("experiment", Experiment, project_id, page)

    def update_experiment(
        self,
        experiment_id: Id,
        *,
        status_id: int,
        name: str | None,
        description: str | None,
        end_date: datetime | None,
    ) -> None:
        """Update an experiment; status 1 re-opens it and clears ``end_date``."""
        with self._lock:
            if self._row("experiment", experiment_id) is None:
                self._unprocessable("PATCH", f"experiment {experiment_id!r} does not exist")
            if status_id not in {int(s) for s in ExperimentStatus}:
                self._unprocessable("PATCH", f"experiment status {status_id!r} is not 1, 2 or 3")
            if name is not None and not name:
                self._unprocessable("PATCH", "experiment name must not be empty")
            changes: dict[str, Any] = {"status_id": int(status_id)}
            if name is not None:
                changes["name"] = name
            if description is not None:
                changes["description"] = description
            if status_id == ExperimentStatus.IN_PROGRESS:
                changes["end_date"] = None
            elif end_date is not None:
                changes["end_date"] = format_datetime(end_date)
            self._commit(
                "PATCH",
                [{"op": "update", "kind": "experiment", "id": experiment_id, "set": changes}],
            )

    # -- iterations ---------------------------------------------------------------------------

    def create_iteration(self, experiment_id: Id, parent_iteration_id: Id | None) -> Id:
        """Create a RUNNING iteration, optionally the child of another of the same experiment."""
        with self._lock:
            experiment = self._row("experiment", experiment_id)
            if experiment is None:
                self._unprocessable("POST", f"experiment {experiment_id!r} does not exist")
            if experiment["status_id"] != ExperimentStatus.IN_PROGRESS:
                self._unprocessable(
                    "POST",
                    f"experiment {experiment_id!r} is not IN_PROGRESS; set it back to "
                    "IN_PROGRESS or use another experiment to start iterations",
                )
            if parent_iteration_id is not None:
                parent = self._row("iteration", parent_iteration_id)
                if parent is None or parent["experiment_id"] != experiment_id:
                    self._unprocessable(
                        "POST",
                        f"parent iteration {parent_iteration_id!r} does not exist in experiment "
                        f"{experiment_id!r}",
                    )
            self._ensure_writer()
            row = {
                "id": self._new_id(),
                "experiment_id": experiment_id,
                "notes": "",
                "created_date": _now(),
                "end_date": None,
                "parent_iteration_id": parent_iteration_id,
                "status_id": int(IterationStatus.RUNNING),
                "error_message": "",
                "julia_version": "",
                "git_sha": "",
                "git_dirty": False,
                "entrypoint": "",
                "project_toml": "",
                "manifest_toml": "",
            }
            self._commit("POST", [{"op": "create", "kind": "iteration", "row": row}])
            return cast(str, row["id"])

    def get_iteration(self, iteration_id: Id) -> Iteration | None:
        """Return an iteration, or ``None``."""
        return self._get("iteration", Iteration, iteration_id)

    def list_iterations(self, experiment_id: Id, page: Pagination) -> PaginatedResponse[Iteration]:
        """Return one page of an experiment's iterations (children included), oldest first."""
        return self._list("iteration", Iteration, experiment_id, page)

    def list_child_iterations(self, iteration_id: Id) -> list[Iteration]:
        """Return the direct children of an iteration, oldest first."""
        with self._reading() as state:
            if not isinstance(iteration_id, str):
                return []
            ids = state.children.get(("child", iteration_id), {})
            table = state.rows["iteration"]
            ordered = sorted((i for i in ids if i in table), key=state.created.__getitem__)
            return [Iteration.from_wire(table[i]) for i in ordered]

    def update_iteration(
        self,
        iteration_id: Id,
        *,
        notes: str | None,
        end_date: datetime | None,
        status_id: int | None,
        error_message: str | None,
    ) -> None:
        """Update an iteration; setting ``end_date`` ends it for good."""
        with self._lock:
            self._open_iteration(iteration_id, "PATCH", "cannot update the iteration")
            if notes is None and end_date is None and status_id is None and error_message is None:
                self._server_error("PATCH", "nothing to update: every field is null")
            if status_id is not None and status_id not in {int(s) for s in IterationStatus}:
                self._unprocessable("PATCH", f"iteration status {status_id!r} is not 1..4")
            changes: dict[str, Any] = {}
            if notes is not None:
                changes["notes"] = notes
            if end_date is not None:
                changes["end_date"] = format_datetime(end_date)
            if status_id is not None:
                changes["status_id"] = int(status_id)
            if error_message is not None:
                changes["error_message"] = error_message
            self._commit(
                "PATCH",
                [{"op": "update", "kind": "iteration", "id": iteration_id, "set": changes}],
            )

    # -- tags ---------------------------------------------------------------------------------

    def add_tag(self, target: TagTarget, target_id: Id, value: str) -> Id:
        """Attach a tag; 409 when it is already attached to that target."""
        with self._lock:
            kind = _TAG_KINDS.get(target)
            if kind is None:
                self._unprocessable(
                    "POST", "tags attach to a project, an experiment or an iteration"
                )
            row = self._row(kind, target_id)
            if row is None:
                self._unprocessable("POST", f"{kind} {target_id!r} does not exist")
            if kind == "iteration" and row["end_date"] is not None:
                self._unprocessable(
                    "POST", f"iteration {target_id!r} has ended and accepts no more tags"
                )
            if not value:
                self._generic_500("POST")
            tag_id = self._state.tag_by_value.get(value)
            if tag_id is None:
                tag_id = "tag-" + hashlib.sha256(value.encode()).hexdigest()[:24]
            if tag_id in self._state.tag_links.get((target, str(target_id)), {}):
                self._conflict("POST", f"tag {value!r} is already attached to {kind} {target_id!r}")
            self._ensure_writer()
            association_id = self._new_id()
            record: Record = {
                "op": "tag",
                "target": target,
                "target_id": target_id,
                "tag_id": tag_id,
                "value": value,
                "id": association_id,
            }
            self._commit("POST", [record])
            return association_id

    def list_tags(self, target: TagTarget, target_id: Id) -> list[Tag]:
        """Return the tags attached to a target (``[]`` when it does not exist)."""
        with self._reading() as state:
            links = state.tag_links.get((target, str(target_id)), {})
            return [Tag.from_wire(state.tags[tag_id]) for tag_id in links]

    # -- parameters ---------------------------------------------------------------------------

    def create_parameter(self, iteration_id: Id, key: str, value: str) -> Id:
        """Create a parameter of an open iteration."""
        with self._lock:
            self._open_iteration(iteration_id, "POST", "cannot create the parameter")
            if not key or not value:
                self._unprocessable("POST", "parameter key and value must not be empty")
            self._ensure_writer()
            row = {"id": self._new_id(), "iteration_id": iteration_id, "key": key, "value": value}
            self._commit("POST", [{"op": "create", "kind": "parameter", "row": row}])
            return cast(str, row["id"])

    def get_parameter(self, parameter_id: Id) -> Parameter | None:
        """Return a parameter, or ``None``."""
        return self._get("parameter", Parameter, parameter_id)

    def list_parameters(self, iteration_id: Id, page: Pagination) -> PaginatedResponse[Parameter]:
        """Return one page of an iteration's parameters, oldest first."""
        return self._list("parameter", Parameter, iteration_id, page)

    def update_parameter(self, parameter_id: Id, *, key: str | None, value: str | None) -> None:
        """Change a parameter of an open iteration."""
        with self._lock:
            row = self._row("parameter", parameter_id)
            if row is None:
                self._unprocessable("PATCH", f"parameter {parameter_id!r} does not exist")
            self._open_iteration(row["iteration_id"], "PATCH", "cannot update the parameter")
            if key is None and value is None:
                self._server_error("PATCH", "nothing to update: key and value are null")
            if key == "" or value == "":
                self._unprocessable("PATCH", "parameter key and value must not be empty")
            changes = {f: v for f, v in (("key", key), ("value", value)) if v is not None}
            self._commit(
                "PATCH",
                [{"op": "update", "kind": "parameter", "id": parameter_id, "set": changes}],
            )

    def delete_parameter(self, parameter_id: Id) -> None:
        """Delete a parameter; the server answers 500 for a missing one or an ended iteration."""
        with self._lock:
            row = self._row("parameter", parameter_id)
            if row is None:
                self._server_error("DELETE", f"parameter {parameter_id!r} does not exist")
            iteration = self._row("iteration", row["iteration_id"])
            if iteration is not None and iteration["end_date"] is not None:
                self._server_error("DELETE", "the parameter's iteration has ended")
            self._commit("DELETE", [{"op": "delete", "kind": "parameter", "id": parameter_id}])

    # -- metrics ------------------------------------------------------------------------------

    def create_metric(
        self,
        iteration_id: Id,
        key: str,
        value: float,
        *,
        step: int | None,
        recorded_at: datetime | None,
    ) -> Id:
        """Create one point; without ``step`` it takes the key's largest step plus one."""
        return self._log("POST", iteration_id, [(key, value)], step, recorded_at)[0]

    def log_metrics(
        self,
        iteration_id: Id,
        metrics: Sequence[tuple[str, float]],
        *,
        step: int | None,
        recorded_at: datetime | None,
    ) -> list[Id]:
        """Create several points in one record (repeated keys keep their last value)."""
        return list(self._log("POST", iteration_id, metrics, step, recorded_at))

    def _log(
        self,
        method: str,
        iteration_id: Id,
        metrics: Sequence[tuple[str, float]],
        step: int | None,
        recorded_at: datetime | None,
    ) -> list[str]:
        with self._lock:
            self._open_iteration(iteration_id, method, "cannot log metrics")
            values: dict[str, float] = {}
            for key, value in metrics:
                if not key:
                    self._unprocessable(method, "metric key must not be empty")
                values[key] = self._check_finite(method, value)
            if not values:
                return []
            if self._writer is None:
                self._ensure_writer()
            at = _now() if recorded_at is None else format_datetime(recorded_at)
            max_step = self._state.max_step
            points: list[list[Any]] = []
            for key, value in values.items():
                if step is None:
                    previous = max_step.get((cast(str, iteration_id), key))
                    point_step = 0 if previous is None else previous + 1
                else:
                    point_step = int(step)
                points.append([self._new_id(), key, value, point_step])
            record: Record = {
                "op": "metrics",
                "iteration_id": iteration_id,
                "recorded_at": at,
                "points": points,
            }
            self._commit(method, [record])
            return [cast(str, point[0]) for point in points]

    def log_metric_points(self, iteration_id: Id, points: Sequence[MetricPoint]) -> list[Id]:
        """Create points of many steps in one durable write: one record per step, one sync.

        When the write fails, the ids given to its points are remembered and given again to
        the same points (same key, step and ``recorded_at``, and the same place among equal
        ones) when they are written again: a record that reached the disk despite the error
        and its rewrite then hold the same rows, never two copies.
        """
        with self._lock:
            self._open_iteration(iteration_id, "POST", "cannot log metrics")
            if self._writer is None:
                self._ensure_writer()
            records: list[Record] = []
            retried = self._unsure_ids
            used: dict[tuple[Id, str, int, str, int], str] = {}
            for step, when, items in group_points(points):
                at = format_datetime(when)
                values: dict[str, float] = {}
                for key, value in items:
                    if not key:
                        self._unprocessable("POST", "metric key must not be empty")
                    values[key] = self._check_finite("POST", value)
                rows: list[list[Any]] = []
                for key, value in values.items():
                    # The same key, step and time twice in one call are two rows: the n-th
                    # of them is told apart by n.
                    occurrence = 0
                    while (iteration_id, key, step, at, occurrence) in used:
                        occurrence += 1
                    ident = (iteration_id, key, step, at, occurrence)
                    metric_id = retried.pop(ident, None) if retried else None
                    if metric_id is None:
                        metric_id = self._new_id()
                    used[ident] = metric_id
                    rows.append([metric_id, key, value, step])
                record: Record = {
                    "op": "metrics",
                    "iteration_id": iteration_id,
                    "recorded_at": at,
                    "points": rows,
                }
                records.append(record)
            if not records:
                return []
            try:
                self._commit("POST", records)
            except ResponseLostError:
                if len(retried) + len(used) > _UNSURE_MEMORY:
                    retried.clear()
                retried.update(used)
                raise
            return [cast(str, row[0]) for record in records for row in record["points"]]

    def get_metric(self, metric_id: Id) -> Metric | None:
        """Return a point, or ``None``."""
        with self._reading() as state:
            row = state.metrics.get(metric_id) if isinstance(metric_id, str) else None
            if row is None and isinstance(metric_id, str):
                self._refresh(force=True)
                row = state.metrics.get(metric_id)
            return None if row is None else _metric(row)

    def list_metrics(self, iteration_id: Id, page: Pagination) -> PaginatedResponse[Metric]:
        """Return one page of an iteration's points, by step then creation."""
        with self._reading(page) as state:
            rows = state.sorted_metrics(iteration_id)
            return cast(PaginatedResponse[Metric], _paged(rows, page, _metric))

    def metric_rows(self, iteration_id: Id) -> list[tuple[str, str, float, int, str | None]]:
        """Return an iteration's points in logging order, as stored (for sync and export).

        Returns:
            ``(id, key, value, step, recorded_at)`` tuples, ``recorded_at`` in wire format.
        """
        with self._reading() as state:
            if not isinstance(iteration_id, str):
                return []
            return [
                (row[0], row[2], float(row[3]), int(row[4]), row[5])
                for row in state.metrics_in_creation_order(iteration_id)
            ]

    def update_metric(
        self,
        metric_id: Id,
        *,
        key: str | None,
        value: float | None,
        step: int | None,
        recorded_at: datetime | None,
    ) -> None:
        """Change a point of an open iteration."""
        with self._lock:
            row = self._state.metrics.get(metric_id) if isinstance(metric_id, str) else None
            if row is None and isinstance(metric_id, str):
                self._refresh(force=True)
                row = self._state.metrics.get(metric_id)
            if row is None:
                self._unprocessable("PATCH", f"metric {metric_id!r} does not exist")
            self._open_iteration(row[1], "PATCH", "cannot update the metric")
            if key is None and value is None and step is None and recorded_at is None:
                self._server_error("PATCH", "nothing to update: every field is null")
            if key == "":
                self._unprocessable("PATCH", "metric key must not be empty")
            changes: dict[str, Any] = {}
            if key is not None:
                changes["key"] = key
            if value is not None:
                changes["value"] = self._check_finite("PATCH", value)
            if step is not None:
                changes["step"] = int(step)
            if recorded_at is not None:
                changes["recorded_at"] = format_datetime(recorded_at)
            self._commit(
                "PATCH", [{"op": "update", "kind": "metric", "id": metric_id, "set": changes}]
            )

    def delete_metric(self, metric_id: Id) -> None:
        """Delete a point; the server answers 500 for a missing one or an ended iteration."""
        with self._lock:
            row = self._state.metrics.get(metric_id) if isinstance(metric_id, str) else None
            if row is None and isinstance(metric_id, str):
                self._refresh(force=True)
                row = self._state.metrics.get(metric_id)
            if row is None:
                self._server_error("DELETE", f"metric {metric_id!r} does not exist")
            iteration = self._row("iteration", row[1])
            if iteration is not None and iteration["end_date"] is not None:
                self._server_error("DELETE", "the metric's iteration has ended")
            self._commit("DELETE", [{"op": "delete", "kind": "metric", "id": metric_id}])

    # -- resources ----------------------------------------------------------------------------

    def _write_blob(self, data: BinaryIO) -> tuple[str, int, str]:
        """Stream bytes into a new blob; return its relative path, size and SHA-256."""
        location = self._location
        blob = f"blobs/{self._new_id()}"
        path = location.path(blob)
        directory = location.path("blobs")
        digest = hashlib.sha256()
        size = 0

        def pump(out: Any) -> None:
            nonlocal size
            for chunk in iter(lambda: data.read(CHUNK_SIZE), b""):
                digest.update(chunk)
                size += len(chunk)
                out.write(chunk)

        if location.is_local:
            os.makedirs(directory, exist_ok=True)
            temporary = f"{directory}/.{blob.rsplit('/', 1)[1]}.tmp"
            with open(temporary, "wb") as out:
                pump(out)
                out.flush()
                os.fsync(out.fileno())
            os.replace(temporary, path)
            fsync_directory(directory)
        elif location.mode == "put":
            with location.fs.open(path, "wb") as out:
                pump(out)
        else:
            location.fs.makedirs(directory, exist_ok=True)
            temporary = f"{directory}/.{blob.rsplit('/', 1)[1]}.tmp"
            with location.fs.open(temporary, "wb") as out:
                pump(out)
            location.fs.mv(temporary, path)
        return blob, size, digest.hexdigest()

    def _blob_fields(self, blob: str, size: int, digest: str) -> dict[str, Any]:
        location = self._location
        backend = "filesystem" if location.is_local else str(location.url.split("://", 1)[0])
        return {
            "backend": backend,
            "uri": location.fs.unstrip_protocol(location.path(blob)),
            "size_bytes": size,
            "content_hash": digest,
            "blob": blob,
        }

    def _remove_blob(self, blob: str) -> None:
        """Delete a blob no row refers to any more (best effort)."""
        try:
            self._location.fs.rm_file(self._location.path(blob))
        except OSError as exc:
            logger.debug("could not remove %s: %s", blob, exc)

    def create_resource(self, experiment_id: Id, name: str, data: BinaryIO, size: int | None) -> Id:
        """Store an artifact of an IN_PROGRESS experiment, streamed, with size and SHA-256."""
        with self._lock:
            experiment = self._row("experiment", experiment_id)
            if experiment is None:
                self._unprocessable("POST", f"experiment {experiment_id!r} does not exist")
            if experiment["status_id"] != ExperimentStatus.IN_PROGRESS:
                self._unprocessable(
                    "POST",
                    f"experiment {experiment_id!r} is not IN_PROGRESS; uploads need an "
                    "experiment in progress",
                )
            if not name:
                self._unprocessable("POST", "resource name must not be empty")
            self._ensure_writer()
            blob, actual, digest = self._stream_in("POST", data)
            row = {
                "id": self._new_id(),
                "experiment_id": experiment_id,
                "name": name,
                "description": "",
                "created_date": _now(),
                "updated_date": None,
                **self._blob_fields(blob, actual, digest),
            }
            self._commit("POST", [{"op": "create", "kind": "resource", "row": row}])
            return cast(str, row["id"])

    def _stream_in(self, method: str, data: BinaryIO) -> tuple[str, int, str]:
        try:
            return self._write_blob(data)
        except store_errors() as exc:
            msg = f"could not write the resource bytes to the local store: {exc}"
            raise ResponseLostError(msg, method=method, url=self.url) from exc

    def get_resource(self, resource_id: Id) -> Resource | None:
        """Return a resource's metadata, or ``None``."""
        return self._get("resource", Resource, resource_id)

    def list_resources(self, experiment_id: Id, page: Pagination) -> PaginatedResponse[Resource]:
        """Return one page of an experiment's resources, oldest first."""
        return self._list("resource", Resource, experiment_id, page)

    def update_resource(
        self,
        resource_id: Id,
        *,
        name: str | None,
        description: str | None,
        data: BinaryIO | None,
        size: int | None,
    ) -> None:
        """Rename, describe or replace the bytes of a resource (any experiment status)."""
        with self._lock:
            row = self._row("resource", resource_id)
            if row is None:
                self._unprocessable("PATCH", f"resource {resource_id!r} does not exist")
            if name is not None and not name:
                self._unprocessable("PATCH", "resource name must not be empty")
            changes: dict[str, Any] = {"updated_date": _now()}
            if name is not None:
                changes["name"] = name
            if description is not None:
                changes["description"] = description
            old_blob = row.get("blob")
            if data is not None:
                self._ensure_writer()
                changes.update(self._blob_fields(*self._stream_in("PATCH", data)))
            self._commit(
                "PATCH",
                [{"op": "update", "kind": "resource", "id": resource_id, "set": changes}],
            )
            if data is not None and old_blob:
                self._remove_blob(old_blob)

    def delete_resource(self, resource_id: Id) -> None:
        """Delete a resource and its bytes; refused (500) while a model version uses it."""
        with self._lock:
            row = self._row("resource", resource_id)
            if row is None:
                self._server_error("DELETE", f"resource {resource_id!r} does not exist")
            users = [
                v["id"]
                for v in self._state.rows["model_version"].values()
                if v.get("resource_id") == resource_id
            ]
            if users:
                self._server_error(
                    "DELETE",
                    f"resource {resource_id!r} is used by model version(s) {users}; "
                    "point them at another resource first",
                )
            self._commit("DELETE", [{"op": "delete", "kind": "resource", "id": resource_id}])
            if row.get("blob"):
                self._remove_blob(row["blob"])

    def open_resource_data(self, resource_id: Id) -> BinaryIO | None:
        """Open a resource's bytes for streaming reads, or return ``None`` if it is missing."""
        with self._reading():
            row = self._row("resource", resource_id)
            if row is None:
                return None
            path = self._location.path(row["blob"])
        try:
            return cast(BinaryIO, self._location.fs.open(path, "rb"))
        except FileNotFoundError:
            logger.error("the bytes of resource %r are missing (%s)", resource_id, path)
            self._generic_500("GET")

    # -- model registry -----------------------------------------------------------------------

    def create_model(self, project_id: Id, name: str, description: str | None) -> Id:
        """Register a model name, unique in its project."""
        with self._lock:
            if self._row("project", project_id) is None:
                self._unprocessable("POST", f"project {project_id!r} does not exist")
            if not name:
                self._unprocessable("POST", "model name must not be empty")
            if any(m["name"] == name for m in self._state.rows_under("model", project_id)):
                self._conflict("POST", f"project {project_id!r} already has a model {name!r}")
            self._ensure_writer()
            now = _now()
            row = {
                "id": self._new_id(),
                "project_id": project_id,
                "name": name,
                "description": description or "",
                "created_date": now,
                "updated_date": now if description is not None else None,
            }
            self._commit("POST", [{"op": "create", "kind": "model", "row": row}])
            return cast(str, row["id"])

    def get_model(self, model_id: Id) -> Model | None:
        """Return a model, or ``None``."""
        return self._get("model", Model, model_id)

    def list_models(self, project_id: Id, page: Pagination) -> PaginatedResponse[Model]:
        """Return one page of a project's models, oldest first."""
        return self._list("model", Model, project_id, page)

    def update_model(self, model_id: Id, *, name: str | None, description: str | None) -> None:
        """Rename or describe a model (no rename once it has versions)."""
        with self._lock:
            row = self._row("model", model_id)
            if row is None:
                self._unprocessable("PATCH", f"model {model_id!r} does not exist")
            if name is not None:
                if not name:
                    self._unprocessable("PATCH", "model name must not be empty")
                if self._state.rows_under("model_version", model_id):
                    self._unprocessable(
                        "PATCH", f"model {model_id!r} has versions and cannot be renamed"
                    )
                siblings = self._state.rows_under("model", row["project_id"])
                if any(m["name"] == name and m["id"] != model_id for m in siblings):
                    self._server_error("PATCH", f"another model of the project is named {name!r}")
            changes: dict[str, Any] = {"updated_date": _now()}
            if name is not None:
                changes["name"] = name
            if description is not None:
                changes["description"] = description
            self._commit(
                "PATCH", [{"op": "update", "kind": "model", "id": model_id, "set": changes}]
            )

    def _check_same_project(
        self, method: str, project_id: Any, iteration_id: Id | None, resource_id: Id | None
    ) -> None:
        """Refuse an iteration or resource that is missing or outside ``project_id``."""
        if iteration_id is not None:
            iteration = self._row("iteration", iteration_id)
            experiment = (
                None if iteration is None else self._row("experiment", iteration["experiment_id"])
            )
            if experiment is None or experiment["project_id"] != project_id:
                self._unprocessable(
                    method, f"iteration {iteration_id!r} does not exist in the model's project"
                )
        if resource_id is not None:
            resource = self._row("resource", resource_id)
            experiment = (
                None if resource is None else self._row("experiment", resource["experiment_id"])
            )
            if experiment is None or experiment["project_id"] != project_id:
                self._unprocessable(
                    method, f"resource {resource_id!r} does not exist in the model's project"
                )

    def create_model_version(
        self,
        model_id: Id,
        iteration_id: Id,
        resource_id: Id | None,
        description: str | None,
    ) -> Id:
        """Register the model's next version (highest number + 1)."""
        with self._lock:
            self._refresh(force=True)
            model = self._row("model", model_id)
            if model is None:
                self._unprocessable("POST", f"model {model_id!r} does not exist")
            self._check_same_project("POST", model["project_id"], iteration_id, resource_id)
            versions = self._state.rows_under("model_version", model_id)
            number = max((int(v["version"]) for v in versions), default=0) + 1
            self._ensure_writer()
            row = {
                "id": self._new_id(),
                "model_id": model_id,
                "version": number,
                "iteration_id": iteration_id,
                "resource_id": resource_id,
                "stage_id": int(ModelStage.NO_STAGE),
                "description": description or "",
                "created_date": _now(),
                "updated_date": None,
            }
            self._commit("POST", [{"op": "create", "kind": "model_version", "row": row}])
            return cast(str, row["id"])

    def get_model_version(self, version_id: Id) -> ModelVersion | None:
        """Return a model version, or ``None``."""
        return self._get("model_version", ModelVersion, version_id)

    def list_model_versions(
        self, model_id: Id, page: Pagination
    ) -> PaginatedResponse[ModelVersion]:
        """Return one page of a model's versions, by number."""
        with self._reading(page) as state:
            rows = sorted(state.rows_under("model_version", model_id), key=lambda r: r["version"])
            return cast(PaginatedResponse[ModelVersion], _paged(rows, page, ModelVersion.from_wire))

    def update_model_version(
        self,
        version_id: Id,
        *,
        stage_id: int | None,
        description: str | None,
        resource_id: Id | None,
    ) -> None:
        """Change a version; promoting one to PRODUCTION archives the model's other ones."""
        with self._lock:
            row = self._row("model_version", version_id)
            if row is None:
                self._unprocessable("PATCH", f"model version {version_id!r} does not exist")
            if stage_id is not None and stage_id not in {int(s) for s in ModelStage}:
                self._unprocessable("PATCH", f"stage {stage_id!r} is not 1..4")
            model = self._row("model", row["model_id"])
            if resource_id is not None:
                project_id = None if model is None else model["project_id"]
                self._check_same_project("PATCH", project_id, None, resource_id)
            now = _now()
            changes: dict[str, Any] = {"updated_date": now}
            if stage_id is not None:
                changes["stage_id"] = int(stage_id)
            if description is not None:
                changes["description"] = description
            if resource_id is not None:
                changes["resource_id"] = resource_id
            records: list[Record] = [
                {"op": "update", "kind": "model_version", "id": version_id, "set": changes}
            ]
            if stage_id == ModelStage.PRODUCTION:
                for other in self._state.rows_under("model_version", row["model_id"]):
                    if other["id"] != version_id and other["stage_id"] == ModelStage.PRODUCTION:
                        demote = {"stage_id": int(ModelStage.ARCHIVED)}
                        records.append(
                            {
                                "op": "update",
                                "kind": "model_version",
                                "id": other["id"],
                                "set": demote,
                            }
                        )
            self._commit("PATCH", records)
