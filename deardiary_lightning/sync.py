"""Replay a local store into a DearDiary server, exactly once, resumable.

:func:`sync` copies projects, experiments, iterations (with their parents, status, error text
and end date), parameters, metrics (steps and time stamps kept), resources (streamed), tags and
the model registry from a local store to any :class:`~deardiary_lightning.client.Client`,
normally one on a DearDiary server. ``deardiary-lightning sync`` is its command line.

Exactly once, although the server is neither idempotent nor atomic (its batches may stop
halfway and a lost answer may hide a write that landed). The method:

- **A journal in the local store** (``sync/<target-key>/``, one per target URL, append-only like
  the store's log) maps every local id to the server's id, written right after each create
  returns. A second run finds everything mapped and sends nothing.
- **Intents for creates that cannot be told apart by content** (iterations, resources, model
  versions): before the create, the journal records the ids the server already had. If the
  answer is lost (or the process dies before journaling it), the next attempt looks for a row
  that appeared since and adopts it instead of creating a second one.
- **Projects, experiments and models are matched by name** (models are unique per project);
  a lost answer is therefore found again by name.
- **Parameters and metrics are compared by content.** Before sending to an iteration the journal
  marks it *open*; it is marked *clean* once everything was sent. After a failed batch, or when
  a previous run left an iteration open, the iteration's rows are read back from the server and
  counted by ``(key, step, value)`` (``(key, value)`` for parameters); what is already there,
  beyond what the journal knows, is adopted and only the rest is sent. Metrics go in batches of
  distinct keys with an explicit step, so the server never picks a step.
- **Ending comes last.** An iteration is ended on the server (status, end date, error text in
  one PATCH) only after all its data is in, because the end lock refuses later writes.

The server must not receive writes to the synced rows from elsewhere while a sync runs; the
content comparison relies on the server holding only what sync sent.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from functools import partial
from typing import Any, TypeVar

from deardiary_lightning.backends.local import LocalBackend
from deardiary_lightning.client import Client
from deardiary_lightning.entities import (
    Experiment,
    ExperimentStatus,
    Id,
    Iteration,
    IterationStatus,
    Model,
    ModelStage,
    Parameter,
    Project,
    Resource,
)
from deardiary_lightning.errors import (
    ConflictError,
    RateLimitedError,
    ServerError,
    TransportError,
    UnprocessableError,
)
from deardiary_lightning.store.log import LogReader, LogWriter, Record
from deardiary_lightning.wire import parse_datetime

#: ``(id, key, value, step, recorded_at)`` of a local point, as :meth:`LocalBackend.metric_rows`.
MetricRow = tuple[str, str, float, int, "str | None"]

__all__ = ["SyncProgress", "SyncReport", "sync"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: Errors after which a request may be tried again (after finding out what landed).
RETRYABLE = (TransportError, ServerError, RateLimitedError)

#: Most points in one batch request.
MAX_BATCH = 500


@dataclass
class SyncProgress:
    """Where a sync stands; passed to the ``progress`` callback after each step.

    Attributes:
        entities_done: Projects, experiments, iterations, parameters, resources, tags, models
            and model versions handled so far (sent or found already there).
        entities_total: How many the sync handles in all.
        points_done: Metric points handled so far.
        points_total: Metric points in all.
        current: What is being worked on, for display.
    """

    entities_done: int = 0
    entities_total: int = 0
    points_done: int = 0
    points_total: int = 0
    current: str = ""

    def line(self) -> str:
        """A one-line summary for a terminal."""
        return (
            f"sync: {self.entities_done}/{self.entities_total} entities, "
            f"{self.points_done}/{self.points_total} points"
            + (f" ({self.current})" if self.current else "")
        )


@dataclass
class SyncReport:
    """What a sync did.

    Attributes:
        target: The target's URL.
        created: Per kind, how many rows were created on the target.
        adopted: Per kind, rows found already on the target (by name, by content or after a
            lost answer) and recorded instead of created again.
        points_sent: Metric points sent.
        points_skipped: Metric points that were already on the target.
        updated: Updates sent (ends of iterations, status changes, renamed resources, stages).
    """

    target: str
    created: Counter[str] = field(default_factory=Counter)
    adopted: Counter[str] = field(default_factory=Counter)
    points_sent: int = 0
    points_skipped: int = 0
    updated: int = 0

    @property
    def nothing_new(self) -> bool:
        """Whether the sync created, sent and updated nothing."""
        return not sum(self.created.values()) and not self.points_sent and not self.updated

    def __str__(self) -> str:
        created = ", ".join(f"{n} {k}" for k, n in sorted(self.created.items())) or "nothing"
        return (
            f"synced to {self.target}: created {created}; {self.points_sent} points sent, "
            f"{self.points_skipped} already there; {self.updated} updates"
        )


class Journal:
    """The sync journal of one local store and one target (see the module docstring).

    The journal is an append-only log under ``sync/<target-key>/`` of the store. Its records
    (``j`` names the kind) are part of the store format, and the delivery pipeline writes them
    too when it drains its spool, so a later ``sync`` knows what already reached the server:

    - ``{"j": "map", "kind": K, "local": L, "remote": R, "sig": S}``: local row ``L`` of kind
      ``K`` is ``R`` on the target; ``sig`` is what was sent (``[key, value]`` of a parameter,
      ``[name, description, content_hash]`` of a resource) so that later local changes are
      noticed;
    - ``{"j": "intent", "kind": K, "local": L, "before": [ids]}``: about to create ``L``; the
      target had these ids before;
    - ``{"j": "points", "it": L, "ids": [...]}``: these local metric points are on the target;
    - ``{"j": "mark", "key": K, "value": V}``: flags, keyed ``open:<iteration>`` (data being
      sent; compare contents on resume), ``ended:<iteration>``, ``iteration-state:<iteration>``
      (``[status_id, notes, error_message]`` last sent), ``experiment-state:<experiment>``
      (``[status_id, end_date, description]`` last sent), ``tag:<kind>:<id>:<value>`` and
      ``stage:<model version>``.

    Args:
        backend: The local store.
        target_url: The target's URL (without credentials); it names the journal.
    """

    def __init__(self, backend: LocalBackend, target_url: str) -> None:
        self.backend = backend
        key = hashlib.sha256(target_url.encode()).hexdigest()[:16]
        self.directory = f"sync/{key}"
        self.target_url = target_url
        self._writer: LogWriter | None = None
        self.remote: dict[tuple[str, str], Any] = {}
        self.remote_used: dict[str, set[Any]] = {}
        self.signature: dict[tuple[str, str], Any] = {}
        self.intents: dict[tuple[str, str], list[Any]] = {}
        self.points: set[str] = set()
        self.marks: dict[str, Any] = {}
        reader = LogReader(backend.location, self.directory)
        for _, records in reader.poll():
            for record in records:
                self._apply(record)

    def _apply(self, record: Record) -> None:
        kind = record.get("j")
        if kind == "map":
            self.remote[(record["kind"], record["local"])] = record["remote"]
            self.remote_used.setdefault(record["kind"], set()).add(_hashable(record["remote"]))
            self.signature[(record["kind"], record["local"])] = record.get("sig")
            self.intents.pop((record["kind"], record["local"]), None)
        elif kind == "intent":
            self.intents[(record["kind"], record["local"])] = record.get("before", [])
        elif kind == "points":
            self.points.update(record["ids"])
        elif kind == "mark":
            self.marks[record["key"]] = record.get("value")

    def write(self, *records: Record) -> None:
        """Record durably, then apply."""
        if self._writer is None:
            from deardiary_lightning.store.layout import new_writer_id

            location = self.backend.location
            location.ensure_marker()
            target_file = location.path(self.directory, "target.json")
            if not location.fs.exists(target_file):
                body = f'{{"url": "{_json_text(self.target_url)}"}}\n'.encode()
                location.put_small(target_file, body)
            self._writer = LogWriter(location, self.directory, new_writer_id())
        stamped = [{**record, "t": time.time_ns()} for record in records]
        self._writer.write(stamped)
        for record in stamped:
            self._apply(record)

    def close(self) -> None:
        """Close the journal's open segment."""
        if self._writer is not None:
            self._writer.close()

    def mapped(self, kind: str, local: Id) -> Any:
        """Return the remote id of a local row, or ``None``."""
        return self.remote.get((kind, str(local)))

    def is_used(self, kind: str, remote: Any) -> bool:
        """Whether a remote id is already mapped to some local row."""
        return _hashable(remote) in self.remote_used.get(kind, set())

    def map(self, kind: str, local: Id, remote: Any, sig: Any = None) -> None:
        """Record that ``local`` is ``remote`` on the target."""
        self.write({"j": "map", "kind": kind, "local": str(local), "remote": remote, "sig": sig})

    def mark(self, key: str, value: Any) -> None:
        """Record a flag (iteration open/ended, experiment state, stage, tag)."""
        if self.marks.get(key, _MISSING) != value:
            self.write({"j": "mark", "key": key, "value": value})


_MISSING = object()


def _hashable(value: Any) -> Any:
    return value if isinstance(value, (int, str)) else repr(value)


def _json_text(text: str) -> str:
    import json

    return json.dumps(text)[1:-1]


class _Syncer:
    """One sync run: walks the selected rows parents first and replays them."""

    def __init__(
        self,
        backend: LocalBackend,
        target: Client,
        progress: Callable[[SyncProgress], None] | None,
        retries: int,
        backoff: float,
        concurrency: int,
    ) -> None:
        self.local = Client(backend)
        self.backend = backend
        self.target = target
        self.journal = Journal(backend, target.url)
        self.report = SyncReport(target=target.url)
        self.status = SyncProgress()
        self.progress = progress
        self.retries = retries
        self.concurrency = max(1, concurrency)
        self._pool = ThreadPoolExecutor(self.concurrency) if self.concurrency > 1 else None
        self.backoff = backoff
        offset = backend.server_utc_offset()
        self._param_cache: dict[str, list[Parameter]] = {}
        self._row_cache: dict[str, list[MetricRow]] = {}
        self.local_zone = timezone(offset if isinstance(offset, timedelta) else timedelta(0))

    # -- helpers ------------------------------------------------------------------------------

    def _tick(self, entities: int = 0, points: int = 0, current: str | None = None) -> None:
        self.status.entities_done += entities
        self.status.points_done += points
        if current is not None:
            self.status.current = current
        if self.progress is not None:
            self.progress(self.status)

    def _aware(self, value: datetime | None) -> datetime | None:
        """Attach the local store's zone so the client converts to the target's clock."""
        if value is None or value.tzinfo is not None:
            return value
        return value.replace(tzinfo=self.local_zone)

    def _retry(self, attempt: int, exc: BaseException) -> None:
        """Wait before another attempt, or give up by re-raising ``exc``."""
        if attempt > self.retries:
            raise exc
        delay = self.backoff * (2 ** (attempt - 1))
        logger.warning("sync: %s; trying again in %.1f s (attempt %d)", exc, delay, attempt + 1)
        time.sleep(delay)

    def _call(self, fn: Callable[[], T]) -> T:
        """Run a request that is safe to repeat (a read or an idempotent update)."""
        attempt = 0
        while True:
            try:
                return fn()
            except RETRYABLE as exc:
                attempt += 1
                self._retry(attempt, exc)

    def _named(
        self,
        kind: str,
        local_id: Id,
        name: str,
        candidates: Callable[[], Sequence[Any]],
        create: Callable[[], Id],
    ) -> Any:
        """Map a row matched by name: adopt an unmapped remote row of that name, or create."""
        remote = self.journal.mapped(kind, local_id)
        if remote is not None:
            return remote
        attempt = 0
        while True:
            for row in self._call(candidates):
                if row.name == name and not self.journal.is_used(kind, row.id):
                    self.journal.map(kind, local_id, row.id)
                    self.report.adopted[kind] += 1
                    return row.id
            try:
                remote = create()
            except ConflictError:
                attempt += 1
                self._retry(attempt, RuntimeError(f"{kind} {name!r} conflicts on the target"))
                continue
            except RETRYABLE as exc:
                attempt += 1
                self._retry(attempt, exc)
                continue
            self.journal.map(kind, local_id, remote)
            self.report.created[kind] += 1
            return remote

    def _with_intent(
        self,
        kind: str,
        local_id: Id,
        listing: Callable[[], Sequence[Any]],
        matches: Callable[[Any], bool],
        create: Callable[[], Id],
        sig: Any = None,
    ) -> Any:
        """Create a row once: journal the ids already there, then create; adopt after a loss."""
        remote = self.journal.mapped(kind, local_id)
        if remote is not None:
            return remote
        attempt = 0
        while True:
            before = self.journal.intents.get((kind, str(local_id)))
            rows = self._call(listing)
            if before is not None:
                known = {_hashable(b) for b in before}
                for row in rows:
                    fresh = _hashable(row.id) not in known and not self.journal.is_used(
                        kind, row.id
                    )
                    if fresh and matches(row):
                        self.journal.map(kind, local_id, row.id, sig)
                        self.report.adopted[kind] += 1
                        return row.id
            self.journal.write(
                {
                    "j": "intent",
                    "kind": kind,
                    "local": str(local_id),
                    "before": [r.id for r in rows],
                }
            )
            try:
                remote = create()
            except RETRYABLE as exc:
                attempt += 1
                self._retry(attempt, exc)
                continue
            self.journal.map(kind, local_id, remote, sig)
            self.report.created[kind] += 1
            return remote

    # -- the walk -----------------------------------------------------------------------------

    def run(self, iterations: Iterable[Id] | None, project_name: str | None) -> SyncReport:
        """Sync the selection; see :func:`sync`."""
        plan = self._plan(iterations, project_name)
        self.status.entities_total = plan.entities
        self.status.points_total = plan.points
        self._tick()
        try:
            for project in plan.projects:
                self._project(project, plan)
        finally:
            self.journal.close()
            if self._pool is not None:
                self._pool.shutdown()
        self.status.current = "done"
        self._tick()
        return self.report

    def _plan(self, iterations: Iterable[Id] | None, project_name: str | None) -> _Plan:
        local = self.local
        self.backend.refresh()
        plan = _Plan()
        wanted: set[str] | None = None
        if iterations is not None:
            wanted = set()
            for iteration_id in iterations:
                current = local.get_iteration(str(iteration_id))
                if current is None:
                    msg = f"iteration {iteration_id!r} is not in the local store {local.url}"
                    raise ValueError(msg)
                while current is not None:
                    wanted.add(str(current.id))
                    parent = current.parent_iteration_id
                    current = None if parent is None else local.get_iteration(parent)
        for project in local.get_projects():
            if project_name is not None and project.name != project_name:
                continue
            experiments = []
            for experiment in local.get_experiments(project.id):
                rows = [
                    i
                    for i in local.get_iterations(experiment.id)
                    if wanted is None or i.id in wanted
                ]
                if wanted is not None and not rows:
                    continue
                experiments.append(experiment)
                plan.iterations[str(experiment.id)] = rows
                plan.resources[str(experiment.id)] = local.get_resources(experiment.id)
            if wanted is not None and not experiments:
                continue
            plan.projects.append(project)
            plan.experiments[str(project.id)] = experiments
            plan.models[str(project.id)] = local.get_models(project.id)
        plan.count(local, self.backend)
        return plan

    def _project(self, project: Project, plan: _Plan) -> None:
        target = self.target
        self._tick(current=f"project {project.name}")
        remote = self._named(
            "project",
            project.id,
            project.name,
            target.get_projects,
            lambda: target.create_project(project.name),
        )
        self._tick(entities=1)
        self._tags("project", project.id, remote)
        synced: set[str] = set()
        for experiment in plan.experiments[str(project.id)]:
            self._experiment(experiment, remote, plan)
            synced.update(str(i.id) for i in plan.iterations[str(experiment.id)])
        for model in plan.models[str(project.id)]:
            self._model(model, remote, synced)

    def _experiment(self, experiment: Experiment, remote_project: Any, plan: _Plan) -> None:
        target = self.target
        self._tick(current=f"experiment {experiment.name}")
        remote = self._named(
            "experiment",
            experiment.id,
            experiment.name,
            lambda: target.get_experiments(remote_project),
            lambda: target.create_experiment(remote_project, experiment.name),
        )
        self._tick(entities=1)
        self._tags("experiment", experiment.id, remote)
        opened = False

        def ensure_open() -> None:
            nonlocal opened
            if opened:
                return
            current = self._call(lambda: target.get_experiment(remote))
            if current is not None and current.status != ExperimentStatus.IN_PROGRESS:
                self._call(
                    lambda: target.update_experiment(remote, status=ExperimentStatus.IN_PROGRESS)
                )
                self.journal.mark(f"experiment-state:{experiment.id}", None)
                self.report.updated += 1
            opened = True

        for iteration in plan.iterations[str(experiment.id)]:
            self._iteration(iteration, remote, ensure_open)
        for resource in plan.resources[str(experiment.id)]:
            self._resource(resource, remote, ensure_open)

        state = [experiment.status_id, _text(experiment.end_date), experiment.description]
        key = f"experiment-state:{experiment.id}"
        if self.journal.marks.get(key) != state:
            self._call(
                lambda: target.update_experiment(
                    remote,
                    status=experiment.status_id,
                    description=experiment.description,
                    end_date=self._aware(experiment.end_date),
                )
            )
            self.report.updated += 1
            self.journal.mark(key, state)

    def _iteration(
        self, iteration: Iteration, remote_experiment: Any, ensure_open: Callable[[], None]
    ) -> None:
        target = self.target
        journal = self.journal
        local_id = str(iteration.id)
        self._tick(current=f"iteration {local_id}")
        points = len(self._rows(local_id))
        if journal.marks.get(f"ended:{local_id}"):
            self.report.points_skipped += points
            self._tick(entities=self._iteration_entities(iteration), points=points)
            return

        parent = None
        if iteration.parent_iteration_id is not None:
            parent = journal.mapped("iteration", iteration.parent_iteration_id)
            if parent is None:
                msg = f"parent {iteration.parent_iteration_id!r} of {local_id} was not synced"
                raise RuntimeError(msg)
        if journal.mapped("iteration", local_id) is None:
            ensure_open()

        def matches(row: Iteration) -> bool:
            return row.parent_iteration_id == parent and not row.ended

        remote = self._with_intent(
            "iteration",
            local_id,
            lambda: target.get_iterations(remote_experiment),
            matches,
            lambda: target.create_iteration(remote_experiment, parent_iteration_id=parent),
        )
        self._tick(entities=1)

        # Mark the iteration open before its first create, so that a run that dies before
        # marking it clean makes the next one compare contents instead of trusting the journal.
        dirty_key = f"open:{local_id}"
        needs_check = bool(journal.marks.get(dirty_key))
        pending = any(journal.mapped("parameter", p.id) is None for p in self._params(local_id))
        pending = pending or any(r[0] not in journal.points for r in self._rows(local_id))
        if pending:
            journal.mark(dirty_key, True)
        self._parameters(local_id, remote, needs_check)
        self._metrics(local_id, remote, needs_check)
        self._tags("iteration", local_id, remote)

        if iteration.ended:
            try:
                self._call(
                    lambda: target.update_iteration(
                        remote,
                        notes=iteration.notes or None,
                        status=iteration.status_id,
                        end_date=self._aware(iteration.end_date),
                        error_message=iteration.error_message or None,
                    )
                )
            except UnprocessableError:
                current = self._call(lambda: target.get_iteration(remote))
                if current is None or not current.ended:
                    raise
            self.report.updated += 1
            journal.mark(f"ended:{local_id}", True)
        else:
            state = [iteration.status_id, iteration.notes, iteration.error_message]
            key = f"iteration-state:{local_id}"
            fresh = [int(IterationStatus.RUNNING), "", ""]
            if journal.marks.get(key, fresh) != state:
                self._call(
                    lambda: target.update_iteration(
                        remote,
                        notes=iteration.notes,
                        status=iteration.status_id,
                        error_message=iteration.error_message,
                    )
                )
                self.report.updated += 1
                journal.mark(key, state)
        if dirty_key in journal.marks:
            journal.mark(dirty_key, False)

    def _params(self, local_id: str) -> list[Parameter]:
        """The local parameters of an iteration (read once per run)."""
        cached = self._param_cache.get(local_id)
        if cached is None:
            cached = self._param_cache[local_id] = self.local.get_parameters(local_id)
        return cached

    def _rows(self, local_id: str) -> list[MetricRow]:
        """The local points of an iteration in logging order (read once per run)."""
        cached = self._row_cache.get(local_id)
        if cached is None:
            cached = self._row_cache[local_id] = self.backend.metric_rows(local_id)
        return cached

    def _iteration_entities(self, iteration: Iteration) -> int:
        local_id = str(iteration.id)
        parameters = len(self._params(local_id))
        return 1 + parameters + len(self.local.get_tags(local_id))

    def _parameters(self, local_id: str, remote: Any, needs_check: bool) -> None:
        target = self.target
        journal = self.journal
        rows = self._params(local_id)
        todo = []
        for row in rows:
            sig = [row.key, row.value]
            mapped = journal.mapped("parameter", row.id)
            if mapped is None:
                todo.append(row)
                continue
            if journal.signature.get(("parameter", str(row.id))) != sig:
                self._call(partial(target.update_parameter, mapped, key=row.key, value=row.value))
                journal.map("parameter", row.id, mapped, sig)
                self.report.updated += 1
            self._tick(entities=1)
        attempt = 0
        while todo:
            if needs_check:
                todo = self._adopt_parameters(todo, remote)
                needs_check = False
                continue
            row = todo[0]
            try:
                created = target.create_parameter(remote, row.key, row.value)
            except RETRYABLE as exc:
                attempt += 1
                self._retry(attempt, exc)
                needs_check = True
                continue
            journal.map("parameter", row.id, created, [row.key, row.value])
            self.report.created["parameter"] += 1
            self._tick(entities=1)
            todo.pop(0)

    def _adopt_parameters(self, todo: list[Any], remote: Any) -> list[Any]:
        """Adopt remote parameters that landed without being journaled; return the rest."""
        journal = self.journal
        there: dict[tuple[str, str], list[Any]] = {}
        for row in self._call(lambda: self.target.get_parameters(remote)):
            if not journal.is_used("parameter", row.id):
                there.setdefault((row.key, row.value), []).append(row.id)
        rest = []
        for row in todo:
            found = there.get((row.key, row.value))
            if found:
                journal.map("parameter", row.id, found.pop(0), [row.key, row.value])
                self.report.adopted["parameter"] += 1
                self._tick(entities=1)
            else:
                rest.append(row)
        return rest

    def _metrics(self, local_id: str, remote: Any, needs_check: bool) -> None:
        journal = self.journal
        rows = self._rows(local_id)
        done = [r for r in rows if r[0] in journal.points]
        pending = [r for r in rows if r[0] not in journal.points]
        self.report.points_skipped += len(done)
        self._tick(points=len(done))
        attempt = 0
        position = 0
        while position < len(pending):
            if needs_check:
                pending = self._adopt_points(pending[position:], rows, remote, local_id)
                position = 0
                needs_check = False
                continue
            window = _batches(pending, position, self.concurrency)
            results = self._send_window(remote, window)
            position += sum(len(batch) for batch in window)
            failed: list[MetricRow] = []
            failure: BaseException | None = None
            for batch, error in zip(window, results, strict=True):
                if error is None:
                    journal.write({"j": "points", "it": local_id, "ids": [r[0] for r in batch]})
                    self.report.points_sent += len(batch)
                    self._tick(points=len(batch))
                else:
                    failed.extend(batch)
                    if failure is None or not isinstance(error, RETRYABLE):
                        failure = error
            if failure is not None:
                pending = failed + pending[position:]
                position = 0
                if not isinstance(failure, RETRYABLE):
                    raise failure
                attempt += 1
                self._retry(attempt, failure)
                needs_check = True

    def _send_window(self, remote: Any, window: list[list[MetricRow]]) -> list[Any]:
        """Send batches, several at a time; return ``None`` or the error of each."""

        def send(batch: list[MetricRow]) -> BaseException | None:
            step, at = batch[0][3], batch[0][4]
            when = self._aware(parse_datetime(at)) if at else None
            try:
                self.target.log_metrics(
                    remote, [(r[1], r[2]) for r in batch], step=step, recorded_at=when
                )
            except Exception as exc:  # reported to the caller, which decides
                return exc
            return None

        if len(window) == 1 or self._pool is None:
            return [send(batch) for batch in window]
        return list(self._pool.map(send, window))

    def _adopt_points(
        self, pending: list[Any], rows: list[Any], remote: Any, local_id: str
    ) -> list[Any]:
        """Read the remote points back and keep only those still missing there."""
        there: Counter[tuple[str, int, float]] = Counter(
            (m.key, m.step, m.value) for m in self._call(lambda: self.target.get_metrics(remote))
        )
        there.subtract((r[1], r[3], r[2]) for r in rows if r[0] in self.journal.points)
        rest = []
        landed = []
        for row in pending:
            fingerprint = (row[1], row[3], row[2])
            if there[fingerprint] > 0:
                there[fingerprint] -= 1
                landed.append(row[0])
            else:
                rest.append(row)
        if landed:
            self.journal.write({"j": "points", "it": local_id, "ids": landed})
            self.report.points_skipped += len(landed)
            self._tick(points=len(landed))
        return rest

    def _tags(self, target_kind: str, local_id: Id, remote: Any) -> None:
        for tag in self.local.get_tags(local_id, target=target_kind):
            key = f"tag:{target_kind}:{local_id}:{tag.value}"
            if not self.journal.marks.get(key):
                try:
                    self._call(partial(self.target.add_tag, remote, tag.value, target=target_kind))
                    self.report.created["tag"] += 1
                except ConflictError:
                    self.report.adopted["tag"] += 1
                self.journal.mark(key, True)
            self._tick(entities=1)

    def _resource(
        self, resource: Resource, remote_experiment: Any, ensure_open: Callable[[], None]
    ) -> None:
        target = self.target
        sig = [resource.name, resource.description, resource.content_hash]
        self._tick(current=f"resource {resource.name}")
        mapped = self.journal.mapped("resource", resource.id)
        if mapped is None:
            ensure_open()

            def upload() -> Id:
                stream = self.backend.open_resource_data(resource.id)
                if stream is None:
                    msg = f"resource {resource.id!r} vanished from the local store"
                    raise RuntimeError(msg)
                with stream:
                    return target.create_resource(remote_experiment, resource.name, stream)

            def matches(row: Resource) -> bool:
                return row.name == resource.name and row.content_hash == resource.content_hash

            mapped = self._with_intent(
                "resource",
                resource.id,
                lambda: target.get_resources(remote_experiment),
                matches,
                upload,
                [resource.name, "", resource.content_hash],
            )
        current_sig = self.journal.signature.get(("resource", str(resource.id)))
        if current_sig != sig:
            remote_id = mapped

            def update() -> None:
                data = None
                if current_sig is None or current_sig[2] != resource.content_hash:
                    data = self.backend.open_resource_data(resource.id)
                try:
                    target.update_resource(
                        remote_id,
                        name=resource.name,
                        description=resource.description,
                        data=data,
                    )
                finally:
                    if data is not None:
                        data.close()

            self._call(update)
            self.journal.map("resource", resource.id, mapped, sig)
            self.report.updated += 1
        self._tick(entities=1)

    def _model(self, model: Model, remote_project: Any, synced: set[str]) -> None:
        target = self.target
        journal = self.journal
        local = self.local
        versions = [v for v in local.get_model_versions(model.id) if str(v.iteration_id) in synced]
        remote = self._named(
            "model",
            model.id,
            model.name,
            lambda: target.get_models(remote_project),
            lambda: target.create_model(
                remote_project, model.name, description=model.description or None
            ),
        )
        self._tick(entities=1)
        for version in versions:
            iteration = journal.mapped("iteration", version.iteration_id)
            resource = None
            if version.resource_id is not None:
                resource = journal.mapped("resource", version.resource_id)

            def matches(row: Any, it: Any = iteration, res: Any = resource) -> bool:
                return bool(row.iteration_id == it and row.resource_id == res)

            def create(it: Any = iteration, res: Any = resource, v: Any = version) -> Id:
                return target.create_model_version(
                    remote, it, resource_id=res, description=v.description or None
                )

            remote_version = self._with_intent(
                "model_version",
                version.id,
                lambda: target.get_model_versions(remote),
                matches,
                create,
            )
            key = f"stage:{version.id}"
            if journal.marks.get(key, int(ModelStage.NO_STAGE)) != version.stage_id:
                self._call(
                    partial(target.update_model_version, remote_version, stage=version.stage_id)
                )
                self.report.updated += 1
                journal.mark(key, version.stage_id)
            self._tick(entities=1)


@dataclass
class _Plan:
    """The selected rows, parents first, and the totals for progress."""

    projects: list[Project] = field(default_factory=list)
    experiments: dict[str, list[Experiment]] = field(default_factory=dict)
    iterations: dict[str, list[Iteration]] = field(default_factory=dict)
    resources: dict[str, list[Resource]] = field(default_factory=dict)
    models: dict[str, list[Model]] = field(default_factory=dict)
    entities: int = 0
    points: int = 0

    def count(self, local: Client, backend: LocalBackend) -> None:
        """Fill the totals."""
        total = 0
        points = 0
        for project in self.projects:
            total += 1 + len(local.get_tags(project.id, target="project"))
            total += len(self.models[str(project.id)])
            for model in self.models[str(project.id)]:
                total += len(local.get_model_versions(model.id))
            for experiment in self.experiments[str(project.id)]:
                total += 1 + len(local.get_tags(experiment.id, target="experiment"))
                total += len(self.resources[str(experiment.id)])
                for iteration in self.iterations[str(experiment.id)]:
                    total += 1 + len(local.get_parameters(iteration.id))
                    total += len(local.get_tags(iteration.id))
                    points += len(backend.metric_rows(iteration.id))
        self.entities = total
        self.points = points


def _batches(pending: list[MetricRow], start: int, count: int) -> list[list[MetricRow]]:
    """Cut up to ``count`` batches from ``start``: points sharing step and time, distinct keys."""
    batches: list[list[MetricRow]] = []
    while start < len(pending) and len(batches) < count:
        first = pending[start]
        keys = {first[1]}
        end = start + 1
        while end < len(pending) and end - start < MAX_BATCH:
            row = pending[end]
            if row[3] != first[3] or row[4] != first[4] or row[1] in keys:
                break
            keys.add(row[1])
            end += 1
        batches.append(pending[start:end])
        start = end
    return batches


def _text(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat(timespec="milliseconds")


def open_source(
    source: str | os.PathLike[str] | Client | LocalBackend,
    storage_options: dict[str, Any] | None = None,
) -> LocalBackend:
    """Return the local store behind ``source`` (a path, an fsspec URL or a client on it)."""
    if isinstance(source, LocalBackend):
        return source
    if isinstance(source, Client):
        if not isinstance(source.backend, LocalBackend):
            msg = f"sync reads a local store; {source.url} is not one"
            raise TypeError(msg)
        return source.backend
    target = os.fspath(source)
    if target.startswith(("http://", "https://")):
        msg = f"sync reads a local store; {target} is a server URL (give it as the target)"
        raise ValueError(msg)
    return LocalBackend(target, storage_options=dict(storage_options or {}))


def sync(
    source: str | os.PathLike[str] | Client | LocalBackend,
    client: Client,
    *,
    iterations: Sequence[Id] | None = None,
    progress: Callable[[SyncProgress], None] | None = None,
    project: str | None = None,
    storage_options: dict[str, Any] | None = None,
    retries: int = 5,
    backoff: float = 0.5,
    concurrency: int = 4,
) -> SyncReport:
    """Replay a local store into ``client``'s target, exactly once (see the module docstring).

    Args:
        source: The local store: a path, an fsspec URL, or a client or backend on it.
        client: Where to copy to (usually a client on a DearDiary server).
        iterations: Only these iterations, plus what they need (their parents, experiment,
            project, the experiment's resources and their model versions).
        progress: Called after each step with a :class:`SyncProgress`.
        project: Only the local projects of this name.
        storage_options: fsspec options when ``source`` is a URL.
        retries: Attempts per request after a transport error, 5xx or 429, before giving up
            (a later sync resumes where this one stopped).
        backoff: First wait between attempts, in seconds (doubled each time).
        concurrency: Metric batches in flight at once (the server handles them in parallel).

    Returns:
        What was created, adopted, sent and updated.

    Raises:
        ValueError: An iteration given is not in the store.
        DearDiaryError: The target kept failing; run the sync again to resume.
    """
    backend = open_source(source, storage_options)
    try:
        syncer = _Syncer(backend, client, progress, retries, backoff, concurrency)
        return syncer.run(iterations, project)
    finally:
        if backend is not source and not isinstance(source, Client):
            backend.close()
