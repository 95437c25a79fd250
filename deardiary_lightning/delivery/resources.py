"""The resource lane: uploads, deletions and model versions, one at a time on their own thread.

Artifacts can be large, so they do not share the metric senders: one thread streams them from
the file, in the order they were requested, while metrics keep flowing. Exactly once: before an
upload the experiment's resources with the same name, size and SHA-256 are listed; after an
ambiguous failure they are listed again and a new match is taken as the upload that landed
(:mod:`~deardiary_lightning.delivery.verify`). Model versions are checked the same way (a new
version of the model from this iteration with the same resource).

While the server is down an upload is copied into the spool (so it survives the process) and
the lane waits; when the server is back it uploads from the original file (or the spool copy if
the file is gone) and removes the spool copy. If the writer closes first, the future fails with
:class:`~deardiary_lightning.delivery.writer.SpooledError` and ``sync`` uploads the copy.
Deletions and model versions wait in memory during an outage; at close they are reported as not
done.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import os
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, BinaryIO, TypeVar, Union, cast

from deardiary_lightning.entities import Id
from deardiary_lightning.errors import ConflictError, DearDiaryError

if TYPE_CHECKING:
    from deardiary_lightning.client import Client
    from deardiary_lightning.delivery.writer import RunWriter

__all__ = ["ResourceLane"]

logger = logging.getLogger(__name__)

_CHUNK = 1024 * 1024

T = TypeVar("T")


@dataclass(eq=False)
class _Upload:
    path: str
    name: str
    future: Future[Id]
    spool_id: Id | None = None


@dataclass(eq=False)
class _Delete:
    resource: Id | Future[Id]


@dataclass(eq=False)
class _Register:
    model_name: str
    resource: Id | Future[Id] | None
    description: str | None
    future: Future[Id]


_Item = Union[_Upload, _Delete, _Register]


@dataclass
class _Digest:
    size: int
    sha256: str = field(repr=False)


def _digest(path: str) -> _Digest:
    """Size and SHA-256 of a file, read in chunks."""
    sha = hashlib.sha256()
    size = 0
    with open(path, "rb") as stream:
        for chunk in iter(lambda: stream.read(_CHUNK), b""):
            sha.update(chunk)
            size += len(chunk)
    return _Digest(size, sha.hexdigest())


class ResourceLane:
    """One background thread for the writer's artifact operations.

    Args:
        writer: The run writer whose retry loop, spool and ids it uses.
    """

    def __init__(self, writer: RunWriter) -> None:
        self._writer = writer
        self._queue: queue.SimpleQueue[_Item | None] = queue.SimpleQueue()
        self._counter = itertools.count(1)
        self._submitted = 0
        self._completed = 0
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._main, name="deardiary-resources", daemon=True)

    def start(self) -> None:
        """Start the lane's thread."""
        self._thread.start()

    def stop(self, join: float) -> None:
        """Stop after the current item; items still waiting fail or are reported."""
        self._stopping.set()
        self._queue.put(None)
        self._thread.join(timeout=join)

    @property
    def pending(self) -> int:
        """Items requested and not finished."""
        return self._submitted - self._completed

    def mark(self) -> int:
        """How many items were requested so far (for ordering the end of the run)."""
        return self._submitted

    def reached(self, mark: int) -> bool:
        """Whether the first ``mark`` items are finished."""
        return self._completed >= mark

    def _put(self, item: _Item) -> None:
        self._submitted = next(self._counter)
        self._queue.put(item)

    def upload(self, path: str, name: str) -> Future[Id]:
        """Queue an upload; the future resolves to the resource id."""
        future: Future[Id] = Future()
        self._put(_Upload(path, name, future))
        return future

    def delete(self, resource: Id | Future[Id]) -> None:
        """Queue the deletion of a resource."""
        self._put(_Delete(resource))

    def register(
        self, model_name: str, resource: Id | Future[Id] | None, description: str | None
    ) -> Future[Id]:
        """Queue a model version registration; the future resolves to its id."""
        future: Future[Id] = Future()
        self._put(_Register(model_name, resource, description, future))
        return future

    # -- thread -------------------------------------------------------------------------------

    def _main(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                if self._stopping.is_set():
                    self._drain_after_stop()
                    return
                continue
            try:
                self._run(item)
            except Exception as exc:  # pragma: no cover - a bug; fail the item, keep going
                logger.exception("unexpected error in the DearDiary resource lane")
                _fail(item, exc)
            self._completed += 1
            self._writer._wake.set()

    def _drain_after_stop(self) -> None:
        """The writer closed: fail or report whatever is still queued."""
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            if item is not None:
                self._abandon(item)
                self._completed += 1

    def _run(self, item: _Item) -> None:
        """Perform one item, waiting out outages (spooling uploads meanwhile)."""
        from deardiary_lightning.delivery.writer import _Down

        writer = self._writer
        while True:
            if self._stopping.is_set():
                self._abandon(item)
                return
            if not writer._lane_can_send():
                if isinstance(item, _Upload) and item.spool_id is None:
                    self._spool_upload(item)
                self._stopping.wait(0.2)
                continue
            try:
                self._perform(item)
                return
            except _Down as exc:
                writer._lane_down(exc)
            except (DearDiaryError, OSError) as exc:
                logger.error("DearDiary resource operation failed: %s", exc)
                _fail(item, exc)
                return

    def _perform(self, item: _Item) -> None:
        if isinstance(item, _Upload):
            resource_id = self._upload(item)
            if item.spool_id is not None:
                self._unspool(item)
            item.future.set_result(resource_id)
        elif isinstance(item, _Delete):
            target = _resolved(item.resource)
            if target is not None:
                self._delete(target)
        else:
            item.future.set_result(self._register(item))

    def _call(self, fn: Callable[[Client], T], *, idempotent: bool) -> T:
        return self._writer._call(fn, idempotent=idempotent)

    def _upload(self, item: _Upload) -> Id:
        """Upload once: list matches before, and after an ambiguous failure."""
        from deardiary_lightning.delivery.writer import _Ambiguous

        experiment_id = self._writer._remote_experiment_id()
        source = item.path if os.path.isfile(item.path) else None
        digest = _digest(source) if source is not None else self._spool_digest(item)

        def matches(client: Client) -> set[Id]:
            return {
                row.id
                for row in client.get_resources(experiment_id)
                if row.name == item.name
                and row.size_bytes == digest.size
                and row.content_hash == digest.sha256
            }

        before = self._call(matches, idempotent=True)
        while True:
            try:
                return self._call(
                    lambda c: c.create_resource(experiment_id, item.name, self._open(item)),
                    idempotent=False,
                )
            except _Ambiguous:
                landed = self._call(matches, idempotent=True) - before
                if landed:
                    return next(iter(landed))

    def _open(self, item: _Upload) -> BinaryIO:
        """Open the bytes to upload: the file, or its spool copy when the file is gone."""
        if os.path.isfile(item.path):
            return open(item.path, "rb")
        spool = self._writer._spool
        if spool is None or item.spool_id is None:
            msg = f"{item.path!r} no longer exists and has no spool copy"
            raise FileNotFoundError(msg)
        stream = spool.client.backend.open_resource_data(item.spool_id)
        if stream is None:
            msg = f"{item.path!r} no longer exists and its spool copy is gone"
            raise FileNotFoundError(msg)
        return cast(BinaryIO, stream)

    def _spool_digest(self, item: _Upload) -> _Digest:
        sha = hashlib.sha256()
        size = 0
        stream = self._open(item)
        try:
            for chunk in iter(lambda: stream.read(_CHUNK), b""):
                sha.update(chunk)
                size += len(chunk)
        finally:
            stream.close()
        return _Digest(size, sha.hexdigest())

    def _spool_upload(self, item: _Upload) -> None:
        """Keep a copy of an upload in the spool while the server is down."""
        spool = self._writer._spool
        if spool is None:
            return
        try:
            item.spool_id = spool.write_resource(item.path, item.name)
        except (DearDiaryError, OSError) as exc:
            logger.error("could not copy %s into the spool: %s", item.path, exc)

    def _unspool(self, item: _Upload) -> None:
        """The upload reached the server: drop its spool copy so ``sync`` does not send it again."""
        spool = self._writer._spool
        if spool is None or item.spool_id is None:
            return
        try:
            spool.client.delete_resource(item.spool_id)
        except (DearDiaryError, OSError) as exc:
            logger.warning("could not remove the spool copy of %s: %s", item.name, exc)

    def _delete(self, resource_id: Id) -> None:
        from deardiary_lightning.delivery.writer import _Ambiguous

        while True:
            try:
                self._call(lambda c: c.delete_resource(resource_id), idempotent=False)
                return
            except _Ambiguous:
                if self._call(lambda c: c.get_resource(resource_id), idempotent=True) is None:
                    return

    def _register(self, item: _Register) -> Id:
        from deardiary_lightning.delivery.writer import _Ambiguous

        writer = self._writer
        project_id = writer._remote_project_id()
        iteration_id = writer._remote_iteration_id()
        resource_id = None if item.resource is None else _resolved(item.resource)
        model_id = self._model_id(project_id, item.model_name)

        def mine(client: Client) -> set[Id]:
            return {
                version.id
                for version in client.get_model_versions(model_id)
                if version.iteration_id == iteration_id and version.resource_id == resource_id
            }

        before = self._call(mine, idempotent=True)
        while True:
            try:
                return self._call(
                    lambda c: c.create_model_version(
                        model_id,
                        iteration_id,
                        resource_id=resource_id,
                        description=item.description,
                    ),
                    idempotent=False,
                )
            except _Ambiguous:
                landed = self._call(mine, idempotent=True) - before
                if landed:
                    return next(iter(landed))
            except ConflictError:
                continue  # two registrations raced for the same number: take the next one

    def _model_id(self, project_id: Id, name: str) -> Id:
        from deardiary_lightning.delivery.writer import _Ambiguous

        def find(client: Client) -> Id | None:
            for model in client.get_models(project_id):
                if model.name == name:
                    return model.id
            return None

        while True:
            found = self._call(find, idempotent=True)
            if found is not None:
                return found
            try:
                return self._call(lambda c: c.create_model(project_id, name), idempotent=False)
            except (_Ambiguous, ConflictError):
                continue

    def _abandon(self, item: _Item) -> None:
        """The writer closed before this item could be done."""
        if isinstance(item, _Upload):
            if item.spool_id is None:
                self._spool_upload(item)
            if item.spool_id is not None:
                self._writer._needs_sync = True
            _fail(
                item,
                _spooled_error(
                    f"upload of {item.name!r} is kept in the spool; run sync to send it"
                ),
            )
        elif isinstance(item, _Register):
            _fail(item, _spooled_error(f"model version of {item.model_name!r} was not registered"))
        else:
            logger.error("resource %r was not deleted before the writer closed", item.resource)


def _spooled_error(message: str) -> DearDiaryError:
    from deardiary_lightning.delivery.writer import SpooledError

    return SpooledError(message)


def _fail(item: _Item, exc: BaseException) -> None:
    future = getattr(item, "future", None)
    if isinstance(future, Future) and not future.done():
        future.set_exception(exc)


def _resolved(resource: Id | Future[Id]) -> Id | None:
    """The id behind an id or an upload's future (``None`` when that upload failed)."""
    if not isinstance(resource, Future):
        return resource
    try:
        return resource.result()
    except Exception as exc:
        logger.error("skipping an operation on a resource whose upload failed: %s", exc)
        return None
