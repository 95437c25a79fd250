"""The spool: a mirror of the run in a local store, for what the server has not taken yet.

Design choice: **spool on a deadline, not write-ahead of everything.** While the server answers,
a logged value is on the server within milliseconds and the spool is never touched (a healthy
run leaves nothing behind and pays no local disk writes). Every operation that is still not
acknowledged :data:`SPOOL_AFTER` seconds after it was logged (the server is slow, a request is
being retried, or the server is down) is written to the spool, in the order it was logged.
Together with the writer's flush interval this bounds what a ``kill -9`` can lose to what was
logged in the last second or so: everything older is either on the server or in the spool.

The spool is an ordinary local store (:func:`deardiary_lightning.connect` on the spool URL,
``./deardiary`` by default). The writer creates, on first use, the mirror of the run there: a
project and an experiment with the same names and one iteration, and writes through the normal
client API, so ``deardiary-lightning sync`` can upload it. Each mirrored metric batch keeps the
step and ``recorded_at`` it has (or will have) on the server, which is also its fingerprint
(see :mod:`~deardiary_lightning.delivery.verify`).

Because some spooled operations may also have reached the server (one that was slow rather
than lost, or one that was delivered after it was spooled), neither the writer nor ``sync``
uploads the mirror blindly: the writer records in the spool's sync journal that the mirror
iteration *is* the server's iteration, and whoever uploads compares contents first
(:func:`missing_on_remote`) and sends only what the server lacks. Parameters follow the spool's
value for every key the spool holds; the writer keeps those keys up to date in the spool (once
a key has been spooled, its later values are written there too), so a stale spooled value never
overwrites a newer one on the server.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Protocol, TypeVar

from deardiary_lightning.backends.local import LocalBackend
from deardiary_lightning.client import Client, connect
from deardiary_lightning.entities import (
    ExperimentStatus,
    Id,
    Iteration,
    Metric,
)
from deardiary_lightning.errors import ConflictError
from deardiary_lightning.sync import Journal

__all__ = [
    "SPOOL_AFTER",
    "Spool",
    "SpoolContents",
    "find_or_create_experiment",
    "find_or_create_project",
    "missing_on_remote",
]

logger = logging.getLogger(__name__)

#: Seconds after which an operation the server has not acknowledged is written to the spool.
SPOOL_AFTER = 0.5

#: A metric batch's fingerprint: its step and its ``recorded_at``.
Fingerprint = tuple[int, datetime]


def find_or_create_project(client: Client, name: str) -> Id:
    """Return the id of the oldest project called ``name``, creating one if there is none."""
    matches = [project for project in client.get_projects() if project.name == name]
    if matches:
        return _oldest(matches).id
    return client.create_project(name)


def find_or_create_experiment(client: Client, project_id: Id, name: str) -> Id:
    """Return the oldest IN_PROGRESS experiment called ``name``, creating one if none exists.

    Only an IN_PROGRESS experiment accepts new iterations, so a stopped or finished experiment
    of the same name is left alone and a new one is made.
    """
    matches = [
        experiment
        for experiment in client.get_experiments(project_id)
        if experiment.name == name and experiment.status_id == ExperimentStatus.IN_PROGRESS
    ]
    if matches:
        return _oldest(matches).id
    return client.create_experiment(project_id, name)


class _Dated(Protocol):
    @property
    def id(self) -> Id: ...

    @property
    def created_date(self) -> datetime | None: ...


D = TypeVar("D", bound=_Dated)


def _oldest(rows: list[D]) -> D:
    """The row created first (ids are opaque, so dates decide; ties keep list order)."""
    return min(rows, key=lambda row: (row.created_date is None, row.created_date or datetime.min))


@dataclass
class SpoolContents:
    """What a mirror iteration holds.

    Attributes:
        batches: Metric items by fingerprint, each list in the order written.
        parameters: Key to value (the last value written for the key).
        tags: Tag values attached to the mirror iteration.
        iteration: The mirror iteration (notes, status, end).
    """

    batches: dict[Fingerprint, list[tuple[str, float]]] = field(default_factory=dict)
    parameters: dict[str, str] = field(default_factory=dict)
    tags: set[str] = field(default_factory=set)
    iteration: Iteration | None = None


class Spool:
    """The run's mirror in a local store, created on first use.

    Args:
        url: The local store (path or fsspec URL).
        project: Name of the run's project.
        experiment: Name of the run's experiment.
    """

    def __init__(self, url: str, *, project: str, experiment: str) -> None:
        self.url = url
        self.project = project
        self.experiment = experiment
        self._client: Client | None = None
        self._shift = timedelta(0)
        self.project_id: Id | None = None
        self.experiment_id: Id | None = None
        self.iteration_id: Id | None = None
        self._remote: tuple[str, list[tuple[str, Id]]] | None = None
        self._linked = False
        self._parameter_ids: dict[str, tuple[Id, str]] = {}
        self._tags: set[str] = set()
        self.ended = False

    def __repr__(self) -> str:
        return f"Spool({self.url!r}, iteration={self.iteration_id!r})"

    @property
    def client(self) -> Client:
        """The local store's client, opened on first use."""
        if self._client is None:
            self._client = connect(self.url)
        return self._client

    @property
    def started(self) -> bool:
        """Whether the mirror iteration exists."""
        return self.iteration_id is not None

    def close(self) -> None:
        """Close the local store."""
        if self._client is not None:
            self._client.close()
            self._client = None

    # -- mirror entities ----------------------------------------------------------------------

    def ensure(self) -> Id:
        """Create the mirror project, experiment and iteration if needed; return the iteration."""
        if self.iteration_id is None:
            client = self.client
            self.project_id = find_or_create_project(client, self.project)
            self.experiment_id = find_or_create_experiment(client, self.project_id, self.experiment)
            self.iteration_id = client.create_iteration(self.experiment_id)
            logger.info(
                "spooling to %s (project %r, experiment %r, iteration %s)",
                self.url,
                self.project,
                self.experiment,
                self.iteration_id,
            )
        self._record_link()
        return self.iteration_id

    def link(
        self,
        remote_url: str,
        *,
        project_id: Id,
        experiment_id: Id,
        iteration_id: Id,
        server_offset: timedelta,
    ) -> None:
        """Declare which server entities the mirror stands for (recorded once it exists).

        Args:
            remote_url: The server's URL as its client reports it (the journal's key).
            project_id: The server's project.
            experiment_id: The server's experiment.
            iteration_id: The server's iteration.
            server_offset: The server clock's offset from UTC: mirrored time stamps are kept
                in the local store's own clock, as ``sync`` expects.
        """
        self._shift = self.client.backend.server_utc_offset() - server_offset
        pairs = [
            ("project", project_id),
            ("experiment", experiment_id),
            ("iteration", iteration_id),
        ]
        self._remote = (remote_url, pairs)
        self._linked = False
        if self.started:
            self._record_link()

    def _open_journal(self) -> Journal | None:
        """The sync journal of this spool for the linked server (``None`` before linking)."""
        backend = self.client.backend
        if self._remote is None or not isinstance(backend, LocalBackend):
            return None
        return Journal(backend, self._remote[0])

    def _record_link(self) -> None:
        """Tell ``sync`` that the mirror is the server's run, so it compares before sending.

        The mirror project, experiment and iteration are mapped to the server's; the iteration
        is marked *open* (sync then reads the server's rows and sends only what is missing) and
        the experiment's state is recorded as it is, so sync leaves the server's alone.
        """
        if self._linked or self._remote is None or self.iteration_id is None:
            return
        journal = self._open_journal()
        if journal is None:
            return
        try:
            local = {
                "project": self.project_id,
                "experiment": self.experiment_id,
                "iteration": self.iteration_id,
            }
            for kind, remote in self._remote[1]:
                local_id = local[kind]
                if local_id is None:
                    continue
                mapped = journal.mapped(kind, local_id)
                if mapped is None:
                    journal.map(kind, local_id, remote)
                elif mapped != remote:
                    logger.warning(
                        "the spool's %s %s is already synced to %s, not %s",
                        kind,
                        local_id,
                        mapped,
                        remote,
                    )
            experiment = self.client.get_experiment(self.experiment_id or "")
            if experiment is not None:
                end = experiment.end_date
                state = [
                    experiment.status_id,
                    None if end is None else end.isoformat(timespec="milliseconds"),
                    experiment.description,
                ]
                journal.mark(f"experiment-state:{experiment.id}", state)
            journal.mark(f"open:{self.iteration_id}", True)
        finally:
            journal.close()
        self._linked = True

    def settle(self, parameter_ids: dict[str, Id]) -> None:
        """Record in the journal that everything in the mirror is on the server.

        Called by the writer when it closes with nothing left undelivered, so that a later
        ``sync`` of the spool has nothing to compare or send for this run.

        Args:
            parameter_ids: The server's parameter id for each key.
        """
        if self.iteration_id is None:
            return
        journal = self._open_journal()
        if journal is None:
            return
        backend = self.client.backend
        assert isinstance(backend, LocalBackend)
        iteration_id = str(self.iteration_id)
        try:
            points = [row[0] for row in backend.metric_rows(iteration_id)]
            fresh = [point for point in points if point not in journal.points]
            if fresh:
                journal.write({"j": "points", "it": iteration_id, "ids": fresh})
            for parameter in self.client.get_parameters(iteration_id):
                remote = parameter_ids.get(parameter.key)
                if remote is not None:
                    journal.map("parameter", parameter.id, remote, [parameter.key, parameter.value])
            for tag in self.client.get_tags(iteration_id):
                journal.mark(f"tag:iteration:{iteration_id}:{tag.value}", True)
            mirror = self.client.get_iteration(iteration_id)
            if mirror is not None and mirror.ended:
                journal.mark(f"ended:{iteration_id}", True)
            elif mirror is not None:
                state = [mirror.status_id, mirror.notes, mirror.error_message]
                journal.mark(f"iteration-state:{iteration_id}", state)
            journal.mark(f"open:{iteration_id}", False)
        finally:
            journal.close()

    # -- writes -------------------------------------------------------------------------------

    def write_batch(self, step: int, recorded_at: datetime, items: list[tuple[str, float]]) -> None:
        """Mirror one metric batch; ``recorded_at`` is its fingerprint, in the server's clock."""
        iteration_id = self.ensure()
        self.client.log_metrics(
            iteration_id, items, step=step, recorded_at=recorded_at + self._shift
        )

    def write_parameter(self, key: str, text: str) -> None:
        """Mirror a parameter (an upsert by key)."""
        iteration_id = self.ensure()
        known = self._parameter_ids.get(key)
        if known is None:
            parameter_id = self.client.create_parameter(iteration_id, key, text)
        elif known[1] == text:
            return
        else:
            parameter_id = known[0]
            self.client.update_parameter(parameter_id, value=text)
        self._parameter_ids[key] = (parameter_id, text)

    def has_parameter(self, key: str) -> bool:
        """Whether the mirror holds a value for ``key`` (later values must be mirrored too)."""
        return key in self._parameter_ids

    def write_tag(self, value: str) -> None:
        """Mirror a tag."""
        if value in self._tags:
            return
        iteration_id = self.ensure()
        with contextlib.suppress(ConflictError):
            self.client.add_tag(iteration_id, value)
        self._tags.add(value)

    def write_notes(self, text: str) -> None:
        """Mirror the iteration's notes."""
        self.client.update_iteration(self.ensure(), notes=text)

    def write_end(self, status_id: int, error_message: str | None, end_date: datetime) -> None:
        """End the mirror iteration like the run (``end_date`` aware, or naive local)."""
        if self.ended:
            return
        self.client.update_iteration(
            self.ensure(), status=status_id, end_date=end_date, error_message=error_message
        )
        self.ended = True

    def write_resource(self, path: str | os.PathLike[str], name: str) -> Id:
        """Copy a file into the mirror experiment; return the spool's resource id."""
        self.ensure()
        assert self.experiment_id is not None
        with open(path, "rb") as stream:
            return self.client.create_resource(self.experiment_id, name, stream)

    # -- reads --------------------------------------------------------------------------------

    def contents(self) -> SpoolContents:
        """Read everything the mirror iteration holds (empty when it was never created)."""
        out = SpoolContents()
        if self.iteration_id is None:
            return out
        client = self.client
        for row in client.get_metrics(self.iteration_id):
            if row.recorded_at is None:
                continue
            when = row.recorded_at - self._shift
            out.batches.setdefault((row.step, when), []).append((row.key, row.value))
        for parameter in client.get_parameters(self.iteration_id):
            out.parameters[parameter.key] = parameter.value
        out.tags = {tag.value for tag in client.get_tags(self.iteration_id)}
        out.iteration = client.get_iteration(self.iteration_id)
        return out


def missing_on_remote(
    batches: dict[Fingerprint, list[tuple[str, float]]], remote_rows: Iterable[Metric]
) -> dict[Fingerprint, list[tuple[str, float]]]:
    """Return the items of spooled batches that the server does not hold.

    Args:
        batches: Spooled items by fingerprint.
        remote_rows: The server's rows from the smallest spooled step on.

    Returns:
        The missing items by fingerprint (batches that landed whole are left out).
    """
    present: set[tuple[int, datetime, str]] = set()
    for row in remote_rows:
        if row.recorded_at is not None:
            present.add((row.step, row.recorded_at, row.key))
    missing: dict[Fingerprint, list[tuple[str, float]]] = {}
    for (step, when), items in batches.items():
        rest = [(key, value) for key, value in items if (step, when, key) not in present]
        if rest:
            missing[(step, when)] = rest
    return missing
