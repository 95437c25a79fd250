"""The run writer: log calls that return in microseconds, delivered exactly once in the background.

Threads and queues::

    calling thread(s)        pump thread                      sender threads (2-4)
    -----------------        -----------                      --------------------
    log_metrics()  ─append─▶ inbox ─▶ batches, fingerprints ─▶ work queue ─▶ POST .../batch
    log_parameters()         (every flush_interval, or when     (retries with backoff; an
    add_tag(), ...           a sender finishes)                 ambiguous failure comes back
                             spool what is overdue              to the pump for checking)
                             check ambiguous requests
                             probe and drain after an outage   resource thread
    upload_resource() ─────────────────────────────────────▶  uploads, deletes, model versions

- **The calling thread** applies the value policy (:mod:`~.values`) and appends one tuple to a
  ``collections.deque``; it takes no lock and never waits on the network.
- **The pump thread** wakes every ``flush_interval`` (and whenever a sender finishes), turns the
  recorded calls into operations, and hands them to the senders. Values of one step become one
  batch request (calls of the same step in one cycle are merged while their keys differ);
  ``step=None`` is resolved here to the key's next step. Each batch gets its fingerprint
  (:mod:`~.verify`). The pump never waits on the server: whatever needs an answer (checks,
  probes, reading a resumed iteration's last steps) is work for a sender, so the pump can
  always spool on time, and close() can always stop it. On a local store, the batches waiting
  at a cycle go out together as one write (one record per batch, one sync for all), and a
  finished write does not wake the pump: a run logging every few milliseconds costs a few
  writes a second, not one per step.
- **Sender threads** deliver operations concurrently, with two rules that keep every series in
  order: two batches of the same step are never in flight together, and parameters, tags, notes
  and the end of the run go one at a time, in the order they were logged.
- **The sender process** (:mod:`~.courier`) takes the metric batches' first attempt off this
  process for a server reached without a proxy (``http://`` or ``https://``): the pump hands it
  a cycle's batches in one message and it answers in bursts, so the training loop does not
  share the interpreter lock with socket I/O. Any batch it could not deliver comes back to a
  sender thread with its error and follows the rules below; if the process stops, what it had
  not answered is checked.
- **Failures**: a request that certainly did not apply (no connection, 429, expired token) is
  retried with exponential backoff and full jitter (:mod:`~.retry`), honouring ``Retry-After``.
  A request that may have applied (lost answer, timeout, 5xx) is returned to the pump, which
  lets the other in-flight requests finish and then has what landed checked
  (:mod:`~.verify`) before resending only what is missing.
- **Outages**: when failures have lasted longer than the retry budget, the server counts as
  down: everything pending and everything logged afterwards goes to the spool (:mod:`~.spool`),
  the pump probes the server with backoff, and once it answers, compares the spool with the
  server and delivers what is missing, in order, before new data.
- **Auth**: the HTTP backend refreshes its token before it expires (on this machine's clock)
  and signs in again after ``TOKEN_EXPIRED``; when a request still comes back with an expired
  token, the writer signs in again itself with the credentials it was given.
- **End**: :meth:`RunWriter.close` (also run by ``atexit`` and on SIGTERM) waits a bounded time,
  prints a progress line when that takes more than a second, spools whatever is left and, when
  the spool holds data the server lacks, logs the ``deardiary-lightning sync`` command.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import logging
import os
import queue
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, TypeVar, Union

from deardiary_lightning.backends.http import HTTPBackend
from deardiary_lightning.client import Client, connect
from deardiary_lightning.delivery import shutdown
from deardiary_lightning.delivery.courier import Answer, SenderProcess
from deardiary_lightning.delivery.resources import ResourceLane
from deardiary_lightning.delivery.retry import (
    Failure,
    RetryPolicy,
    RetryState,
    classify,
    retry_after_of,
)
from deardiary_lightning.delivery.spool import (
    SPOOL_AFTER,
    Spool,
    find_or_create_experiment,
    find_or_create_project,
    missing_on_remote,
)
from deardiary_lightning.delivery.values import ValuePolicy
from deardiary_lightning.delivery.verify import (
    find_parameter,
    landed_keys,
    rows_at_step,
    rows_from_step,
)
from deardiary_lightning.entities import Id, IterationStatus
from deardiary_lightning.errors import (
    APIError,
    AuthenticationError,
    ConflictError,
    DearDiaryError,
    ReadTimeoutError,
    ResponseLostError,
    TokenExpiredError,
    TransportError,
    UnprocessableError,
)
from deardiary_lightning.wire import to_server_clock

__all__ = ["RunWriter", "SpooledError", "open_run"]

T = TypeVar("T")

logger = logging.getLogger(__name__)

#: Sender threads for a server (the server handles requests on several threads).
HTTP_SENDERS = 3

#: Seconds close() waits before it shows a progress line.
PROGRESS_AFTER = 1.0

#: Seconds close() gives the background threads to stop once everything is spooled.
STOP_GRACE = 0.5

#: Metric batches the sender process may hold at once (unanswered).
COURIER_WINDOW = 512

#: Connections the sender process may use at once (one when the server keeps up).
COURIER_CONNECTIONS = 4

#: Points written together (at least one batch) to a store that takes many steps in one write.
GROUP_POINTS = 5000

#: Fingerprints remembered per step to keep them unique (older steps are forgotten).
_FINGERPRINT_MEMORY = 65536

_ONE_MS = timedelta(milliseconds=1)

# Inbox record tags (the first element of each recorded tuple).
_METRICS = 0
_PARAMS = 1
_TAG = 2
_NOTES = 3
_END = 4

# Pump modes.
_LIVE = "live"
_DOWN = "down"
_DRAINING = "draining"


class SpooledError(DearDiaryError):
    """The operation could not reach the server before the writer closed; it is in the spool.

    Upload the spool with the ``deardiary-lightning sync`` command the writer logged.
    """


# -- operations -------------------------------------------------------------------------------


_seq = itertools.count()


@dataclass(eq=False)
class _Op:
    """An operation for the server; ``logged`` is the wall time of the (first) logging call."""

    logged: float
    seq: int = field(default_factory=lambda: next(_seq), init=False)
    spooled: bool = field(default=False, init=False)


@dataclass(eq=False)
class _Batch(_Op):
    """One metric batch: one step, one ``recorded_at`` (its fingerprint), distinct keys."""

    step: int = 0
    when: datetime = datetime.min
    items: list[tuple[str, float]] = field(default_factory=list)
    explicit_time: bool = False


@dataclass(eq=False)
class _Group(_Op):
    """Consecutive metric batches written in one durable write (stores that can do that)."""

    batches: list[_Batch] = field(default_factory=list)


def _unpack(op: _Op) -> list[_Op]:
    """The operations an operation stands for (a group stands for its batches)."""
    if isinstance(op, _Group):
        return list(op.batches)
    return [op]


@dataclass(eq=False)
class _Param(_Op):
    """Upsert one parameter."""

    key: str = ""
    text: str = ""


@dataclass(eq=False)
class _Tag(_Op):
    """Attach one tag to the iteration."""

    value: str = ""


@dataclass(eq=False)
class _Notes(_Op):
    """Set the iteration's notes."""

    text: str = ""


@dataclass(eq=False)
class _End(_Op):
    """End the iteration (after everything logged before it)."""

    status_id: int = int(IterationStatus.SUCCEEDED)
    error_message: str | None = None
    end_date: datetime = datetime.min
    lane_mark: int = 0


@dataclass(eq=False)
class _Verify:
    """Check what a set of ambiguous operations left on the server."""

    ops: list[_Op]
    grace: float


@dataclass(eq=False)
class _Probe:
    """Ask whether a server that was down answers again."""


@dataclass(eq=False)
class _Drain:
    """Compare the spool with the server and return what the server lacks."""


@dataclass(eq=False)
class _Load:
    """Read a resumed iteration's last step per key and its parameters."""


@dataclass(eq=False)
class _Resend:
    """Send a batch again from a sender thread, after the sender process met ``error``."""

    op: _Op
    error: DearDiaryError


_Work = Union[_Op, _Verify, _Probe, _Drain, _Load, _Resend]

# Outcomes a sender reports to the pump.
_OK = "ok"
_UNCERTAIN = "uncertain"
_FAILED = "failed"
_IS_DOWN = "down"
_CHECKED = "checked"
_PROBED = "probed"
_DRAINED = "drained"
_LOADED = "loaded"
_LANE_DOWN = "lane-down"
_ALL_OK = "all-ok"  # the subject is a list of delivered operations


class _Down(Exception):
    """Internal: the server is down (budget spent) or the writer is shutting down."""


class _SenderStopped(ResponseLostError):
    """The sender process stopped while a batch was in its hands (it may still be landing)."""


class _Ambiguous(Exception):
    """Internal: a create may have landed."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.cause = cause


# -- resolution of project / experiment / iteration -------------------------------------------


@dataclass
class _Ids:
    project_id: Id
    experiment_id: Id
    iteration_id: Id


def _resolve(
    client: Client,
    project: str,
    experiment: str,
    iteration_id: Id | None,
    parent_iteration_id: Id | None,
) -> _Ids:
    """Find or create the run's project and experiment and its iteration (or check a resumed one).

    Raises:
        ValueError: The iteration to resume does not exist or has ended.
    """
    if iteration_id is not None:
        iteration = client.get_iteration(iteration_id)
        if iteration is None:
            msg = f"iteration {iteration_id!r} does not exist on {client.url}; cannot resume it"
            raise ValueError(msg)
        if iteration.ended:
            msg = (
                f"iteration {iteration_id!r} has ended (status {iteration.status.name}); an ended "
                "iteration cannot be written to: start a new run instead"
            )
            raise ValueError(msg)
        found = client.get_experiment(iteration.experiment_id)
        project_id = (
            found.project_id if found is not None else find_or_create_project(client, project)
        )
        return _Ids(project_id, iteration.experiment_id, iteration_id)

    project_id = find_or_create_project(client, project)
    experiment_id = find_or_create_experiment(client, project_id, experiment)
    new_id = client.create_iteration(experiment_id, parent_iteration_id=parent_iteration_id)
    return _Ids(project_id, experiment_id, new_id)


# -- the writer -------------------------------------------------------------------------------


def open_run(
    url: str | os.PathLike[str] | None,
    *,
    project: str,
    experiment: str,
    iteration_id: Id | None = None,
    parent_iteration_id: Id | None = None,
    username: str | None = None,
    password: str | None = None,
    token: str | None = None,
    spool: str | None = None,
    tags: Sequence[str] = (),
    notes: str | None = None,
    flush_interval: float = 0.2,
    close_timeout: float = 60.0,
    retry: RetryPolicy | None = None,
    sender_process: bool = True,
) -> RunWriter:
    """Open a run: resolve its project, experiment and iteration, and start delivering.

    Args:
        url: A DearDiary server (``http(s)://...``) or a local store (path or fsspec URL);
            ``None`` uses the embedded default store ``./deardiary``.
        project: Project name, found or created.
        experiment: Experiment name in the project, found (IN_PROGRESS) or created.
        iteration_id: Resume this iteration instead of creating one.
        parent_iteration_id: Create the new iteration as a child of this one.
        username: Sign in with these credentials (with ``password``).
        password: The password; kept in memory only, to sign in again when the token expires.
        token: A bearer token to use instead of signing in.
        spool: Local store that keeps what the server has not taken yet; ``./deardiary`` by
            default.
        tags: Tags attached to the iteration.
        notes: Notes set on the iteration.
        flush_interval: Seconds between two background deliveries.
        close_timeout: Longest wait of :meth:`RunWriter.close` (and at exit).
        retry: Backoff and retry budget (:class:`~.retry.RetryPolicy`).
        sender_process: Send the metric batches to a server from a child process
            (:mod:`~.courier`), which keeps the training loop's interpreter free; ``False``
            sends them from threads of this process.

    Returns:
        The writer. When the server cannot be reached, the run is created in the spool and
        delivered when the server answers again.

    Raises:
        AuthenticationError: The server refused the credentials.
        ValueError: The iteration to resume does not exist or has ended.
    """
    target = "./deardiary" if url is None else os.fspath(url)
    policy = retry or RetryPolicy()
    remote = target.startswith(("http://", "https://"))
    if not remote:
        client = connect(target)
        ids = _resolve(client, project, experiment, iteration_id, parent_iteration_id)
        writer = RunWriter(
            client=client,
            ids=ids,
            url=target,
            spool=None,
            senders=1,
            credentials=None,
            flush_interval=flush_interval,
            close_timeout=close_timeout,
            retry=policy,
            resumed=iteration_id is not None,
        )
    else:
        writer = _open_remote(
            target,
            project=project,
            experiment=experiment,
            iteration_id=iteration_id,
            parent_iteration_id=parent_iteration_id,
            username=username,
            password=password,
            token=token,
            spool_url=spool or "./deardiary",
            flush_interval=flush_interval,
            close_timeout=close_timeout,
            retry=policy,
            sender_process=sender_process,
        )
    for value in tags:
        writer.add_tag(value)
    if notes is not None:
        writer.set_notes(notes)
    return writer


def _open_remote(
    target: str,
    *,
    project: str,
    experiment: str,
    iteration_id: Id | None,
    parent_iteration_id: Id | None,
    username: str | None,
    password: str | None,
    token: str | None,
    spool_url: str,
    flush_interval: float,
    close_timeout: float,
    retry: RetryPolicy,
    sender_process: bool,
) -> RunWriter:
    """Open a run on a server, or in the spool when the server cannot be reached."""
    spool = Spool(spool_url, project=project, experiment=experiment)
    credentials = _Credentials(target, username, password, token)
    client: Client | None = None
    ids: _Ids | None = None
    try:
        client = credentials.connect()
        ids = _resolve(client, project, experiment, iteration_id, parent_iteration_id)
        client.backend.server_utc_offset()
    except AuthenticationError:
        raise
    except (TransportError, APIError) as exc:
        if isinstance(exc, APIError) and classify(exc) is Failure.PERMANENT:
            raise
        logger.warning(
            "the DearDiary server at %s cannot be reached (%s); the run is recorded in the spool "
            "at %s and delivered when the server answers again",
            target,
            exc,
            spool_url,
        )
        if client is not None:
            client.close()
        client = None
    if ids is not None and client is not None:
        spool.link(
            client.url,
            project_id=ids.project_id,
            experiment_id=ids.experiment_id,
            iteration_id=ids.iteration_id,
            server_offset=client.backend.server_utc_offset(),
        )
    return RunWriter(
        client=client,
        ids=ids,
        url=target,
        spool=spool,
        senders=HTTP_SENDERS,
        credentials=credentials,
        flush_interval=flush_interval,
        close_timeout=close_timeout,
        retry=retry,
        resumed=iteration_id is not None,
        wanted=(project, experiment, iteration_id, parent_iteration_id),
        sender_process=sender_process,
    )


class _Credentials:
    """How to (re)connect to the server; the password stays in memory, never in a repr."""

    def __init__(
        self, url: str, username: str | None, password: str | None, token: str | None
    ) -> None:
        self.url = url
        self.username = username
        self._password = password
        self._token = token

    def __repr__(self) -> str:
        return f"_Credentials({self.url!r}, username={self.username!r})"

    @property
    def can_sign_in(self) -> bool:
        return self.username is not None and self._password is not None

    def connect(self) -> Client:
        """Open a client on the server, signing in when credentials are known."""
        return connect(self.url, username=self.username, password=self._password, token=self._token)


class RunWriter:
    """Records a run's metrics, parameters, tags, notes and artifacts without blocking.

    Create it with :func:`open_run`. Every logging method returns after recording the call in
    memory; background threads deliver (see the module docstring). The writer is safe to use
    from several threads, although the order of calls made concurrently from different
    threads is the order in which they were recorded.

    Attributes:
        url: Where the run is delivered, without credentials.
        spool_url: The local store that keeps what the server has not taken yet.
        iteration_id: The iteration's id (the server's when it answered at start, otherwise the
            spool's).
        experiment_id: The experiment's id (same rule).
        project_id: The project's id (same rule).
    """

    def __init__(
        self,
        *,
        client: Client | None,
        ids: _Ids | None,
        url: str,
        spool: Spool | None,
        senders: int,
        credentials: _Credentials | None,
        flush_interval: float,
        close_timeout: float,
        retry: RetryPolicy,
        resumed: bool,
        wanted: tuple[str, str, Id | None, Id | None] | None = None,
        sender_process: bool = False,
    ) -> None:
        if flush_interval <= 0:
            msg = f"flush_interval must be > 0 seconds, got {flush_interval}"
            raise ValueError(msg)
        self.url = url
        self._spool = spool
        self.spool_url = spool.url if spool is not None else url
        self._remote = client
        self._ids = ids
        self._credentials = credentials
        self._wanted = wanted
        self._flush_interval = flush_interval
        self._close_timeout = close_timeout
        self._policy = retry
        self._retry = RetryState(retry)
        self._resumed = resumed
        self._values = ValuePolicy()

        if ids is None:
            assert spool is not None
            spool.ensure()
            assert spool.project_id is not None and spool.experiment_id is not None
            self._own_ids = _Ids(spool.project_id, spool.experiment_id, spool.iteration_id or "")
            self._mode = _DOWN
            self._offset = spool.client.backend.server_utc_offset()
        else:
            assert client is not None
            self._own_ids = ids
            self._mode = _LIVE
            self._offset = client.backend.server_utc_offset()

        # Calling side.
        self._inbox: collections.deque[tuple[Any, ...]] = collections.deque()
        self._ended = False
        self._closed = False

        # Pump state (touched by the pump thread only, unless noted).
        self._outbox: collections.deque[_Op] = collections.deque()
        self._inflight: dict[int, _Op] = {}
        self._inflight_steps: collections.Counter[int] = collections.Counter()
        self._meta_busy = False
        self._uncertain: list[tuple[_Op, BaseException]] = []
        self._special_busy = False
        self._max_step: dict[str, int] = {}
        self._fingerprints: collections.OrderedDict[int, datetime] = collections.OrderedDict()
        self._last_batch_step: int | None = None
        self._next_probe = 0.0
        self._probe_attempt = 0
        self._needs_sync = ids is None
        self._unsettled = 0  # read by other threads (an int read is atomic)
        self._param_state: dict[str, tuple[Id, str]] = {}  # senders, one meta op at a time
        self._loaded = not resumed
        self._loading = False

        # Threads and signals.
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._settled = threading.Condition()
        self._results: queue.SimpleQueue[tuple[str, Any, Any]] = queue.SimpleQueue()
        self._work: queue.SimpleQueue[_Work | None] = queue.SimpleQueue()
        self._lane = ResourceLane(self)
        self._closing = False
        # close() waits for one more probe of a server that was down, sent after it began:
        # 0 none, 1 asked for, 2 sent (read by the closing thread).
        self._final_probe = 0
        self._abandon = False
        self._sender_count = senders if self._remote is not None or spool is not None else 1
        # A store that writes many steps at once (the local store, not a server) gets the
        # batches of a whole pump cycle in one write: one sync instead of one per step. With a
        # single sender, the order of every series is the order of the outbox.
        self._grouping = (
            spool is None
            and client is not None
            and client.backend.points_in_one_write
            and self._sender_count == 1
        )
        # The sender process: metric batches to the server (see courier.py).
        self._sender_process = sender_process
        self._courier: SenderProcess | None = None
        self._courier_ops: dict[int, _Op] = {}  # token (op.seq) -> batch it carries
        self._courier_path = ""
        if sender_process and ids is not None and client is not None:
            self._start_courier(client, ids)
        self._threads = [
            threading.Thread(target=self._sender_main, name=f"deardiary-send-{n}", daemon=True)
            for n in range(self._sender_count)
        ]
        self._pump = threading.Thread(target=self._pump_main, name="deardiary-pump", daemon=True)
        for thread in self._threads:
            thread.start()
        self._pump.start()
        self._lane.start()
        shutdown.register(self)

    # -- public properties --------------------------------------------------------------------

    def __repr__(self) -> str:
        return f"RunWriter({self.url!r}, iteration={self.iteration_id!r}, pending={self.pending})"

    @property
    def iteration_id(self) -> Id:
        """The iteration's id."""
        return self._own_ids.iteration_id

    @property
    def experiment_id(self) -> Id:
        """The experiment's id."""
        return self._own_ids.experiment_id

    @property
    def project_id(self) -> Id:
        """The project's id."""
        return self._own_ids.project_id

    @property
    def client(self) -> Client:
        """A client for reads: the server's when it answered at start, otherwise the spool's."""
        if self._ids is not None and self._remote is not None:
            return self._remote
        assert self._spool is not None
        return self._spool.client

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` has run."""
        return self._closed

    @property
    def close_timeout(self) -> float:
        """Longest wait of :meth:`close` when no timeout is given."""
        return self._close_timeout

    @property
    def pending(self) -> int:
        """Logged operations not delivered yet (nor spooled while the server is down).

        While the spool is being compared with a server that answers again, its contents count
        as one pending operation until the comparison tells what is left to send.
        """
        draining = 1 if self._mode == _DRAINING else 0
        return len(self._inbox) + self._unsettled + self._lane.pending + draining

    # -- logging calls (calling thread) -------------------------------------------------------

    def log_metrics(
        self,
        metrics: Mapping[str, Any],
        *,
        step: int | None = None,
        recorded_at: datetime | None = None,
    ) -> None:
        """Record metric values (one batch per step); returns at once.

        Args:
            metrics: Key to value. Values: ``float``, ``int``, numpy scalars, one-element
                tensors; NaN, infinities, ``None`` and non-numbers are dropped with one warning
                per key (see :mod:`~deardiary_lightning.delivery.values`).
            step: The step of every value; ``None`` gives each key its next step.
            recorded_at: When the values were measured; the time of this call by default.

        Raises:
            RuntimeError: The run has ended or the writer is closed.
            TypeError: ``step`` is not an integer.
        """
        if self._ended or self._closed:
            self._refuse()
        items = []
        for key, value in metrics.items():
            if type(value) is float and type(key) is str and value - value == 0.0 and key:
                items.append((key, value))
            else:
                item = self._values.metric(key, value)
                if item is not None:
                    items.append(item)
        if not items:
            return
        if step is not None and type(step) is not int:
            step = self._values.step(step)
        self._inbox.append(
            (_METRICS, step, time.time() if recorded_at is None else recorded_at, items)
        )

    def log_parameters(self, params: Mapping[str, Any]) -> None:
        """Record parameters (upsert by key: a changed value updates, the same value is a no-op).

        Values become non-empty text (see :mod:`~deardiary_lightning.delivery.values`).
        """
        if self._ended or self._closed:
            self._refuse()
        items = []
        for key, value in params.items():
            item = self._values.parameter(key, value)
            if item is not None:
                items.append(item)
        if items:
            self._inbox.append((_PARAMS, time.time(), items))

    def add_tag(self, value: str) -> None:
        """Attach a tag to the iteration (attaching the same tag twice does nothing)."""
        if self._ended or self._closed:
            self._refuse()
        if not isinstance(value, str) or not value:
            msg = f"a tag must be non-empty text, got {value!r}"
            raise ValueError(msg)
        self._inbox.append((_TAG, time.time(), value))

    def set_notes(self, text: str) -> None:
        """Set the iteration's notes."""
        if self._ended or self._closed:
            self._refuse()
        if not isinstance(text, str):
            msg = f"notes must be text, got {type(text).__name__}"
            raise TypeError(msg)
        self._inbox.append((_NOTES, time.time(), text))

    def end(self, status: IterationStatus | int | str, *, error_message: str | None = None) -> None:
        """End the iteration after everything logged before; a second call does nothing.

        Args:
            status: ``SUCCEEDED``, ``FAILED`` or ``KILLED`` (member, wire value or name).
            error_message: Text to record, typically for a failure.

        Raises:
            ValueError: ``status`` is not an iteration status.
        """
        if self._ended or self._closed:
            return
        status_id = _status_id(status)
        self._ended = True
        now = time.time()
        self._inbox.append((_END, now, status_id, error_message, self._lane.mark()))
        self._wake.set()

    def upload_resource(
        self, path: str | os.PathLike[str], *, name: str | None = None
    ) -> Future[Id]:
        """Upload a file to the run's experiment in the background, streamed.

        Args:
            path: The file; it must stay in place until the upload is done.
            name: The resource name; the file's base name by default.

        Returns:
            A future that resolves to the resource id (or raises :class:`SpooledError` when the
            writer closed while the server was down; the file is then in the spool).
        """
        if self._closed:
            self._refuse()
        resolved = os.fspath(path)
        if not os.path.isfile(resolved):
            msg = f"cannot upload {resolved!r}: no such file"
            raise FileNotFoundError(msg)
        return self._lane.upload(resolved, name or os.path.basename(resolved))

    def delete_resource(self, resource: Id | Future[Id]) -> None:
        """Delete a resource (an id, or the future of an upload) in the background."""
        if self._closed:
            self._refuse()
        self._lane.delete(resource)

    def register_model_version(
        self,
        model_name: str,
        resource: Id | Future[Id] | None,
        *,
        description: str | None = None,
    ) -> Future[Id]:
        """Register a version of a model (created if needed) produced by this run.

        Args:
            model_name: The model's name in the project.
            resource: The artifact (an id, or the future of an upload), or ``None``.
            description: Free text.

        Returns:
            A future that resolves to the model version's id.
        """
        if self._closed:
            self._refuse()
        if not isinstance(model_name, str) or not model_name:
            msg = f"a model name must be non-empty text, got {model_name!r}"
            raise ValueError(msg)
        return self._lane.register(model_name, resource, description)

    def _refuse(self) -> None:
        state = "closed" if self._closed else "ended"
        msg = f"the run writer for iteration {self.iteration_id!r} is {state}; open a new run"
        raise RuntimeError(msg)

    # -- flush and close ----------------------------------------------------------------------

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until everything recorded so far is delivered (or spooled, when the server is down).

        Args:
            timeout: Longest wait in seconds; ``None`` waits as long as it takes.

        Returns:
            Whether everything was delivered or spooled in time.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        self._wake.set()
        with self._settled:
            while self.pending:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._settled.wait(min(0.05, left) if left is not None else 0.05)
                self._wake.set()
        return True

    def close(self, timeout: float | None = None) -> None:
        """Deliver what is pending within a bounded wait, then stop the background threads.

        Shows a progress line on stderr when the wait exceeds a second. Whatever is not
        delivered in time stays in the spool, and the command that uploads it is logged. The
        iteration is not ended (call :meth:`end` first for that). Calling it twice is harmless.

        Args:
            timeout: Longest wait in seconds; ``close_timeout`` of :func:`open_run` by default.
        """
        if self._closed:
            return
        limit = self._close_timeout if timeout is None else timeout
        start = time.monotonic()
        self._closing = True
        if self._mode == _DOWN and self._spool is not None:
            # The server may be back without the writer knowing yet (probes back off): ask
            # once more now rather than leave the run in the spool for a manual sync.
            self._final_probe = 1
        self._wake.set()
        progress = _Progress(self.url)
        with self._settled:
            while self.pending or self._final_probe:
                waited = time.monotonic() - start
                if waited >= limit:
                    break
                if waited >= PROGRESS_AFTER:
                    progress.show(self.pending, limit - waited)
                self._settled.wait(min(0.1, limit - waited))
                self._wake.set()
        progress.done()

        self._abandon = True
        self._stop.set()
        self._wake.set()
        # The pump only spools what is left (local writes); senders may be stuck in a request
        # to a hung server: they are daemon threads, so they get a short grace, not a wait.
        self._pump.join(timeout=10.0)
        grace = time.monotonic() + STOP_GRACE
        if self._courier is not None:
            self._courier.stop(timeout=STOP_GRACE)
        self._lane.stop(join=STOP_GRACE)
        for _ in self._threads:
            self._work.put(None)
        for thread in self._threads:
            thread.join(timeout=max(0.0, grace - time.monotonic()))
        self._closed = True
        shutdown.unregister(self)

        if self._spool is not None and self._spool.started and not self._needs_sync:
            try:
                self._spool.settle({key: state[0] for key, state in self._param_state.items()})
            except (DearDiaryError, OSError) as exc:
                logger.warning("could not update the spool's sync journal: %s", exc)
        elif self._needs_sync and self._spool is not None and self._spool.started:
            logger.warning(
                "the DearDiary server at %s did not take everything before the run closed; the "
                "rest is kept in %s. Upload it when the server is back with:\n"
                "    deardiary-lightning sync %s --to %s",
                self.url,
                self.spool_url,
                self.spool_url,
                self.url,
            )
        if self._remote is not None:
            self._remote.close()
        if self._spool is not None:
            self._spool.close()

    def __enter__(self) -> RunWriter:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self.close()

    # -- pump thread --------------------------------------------------------------------------

    def _pump_main(self) -> None:
        """The pump loop: take calls, spool what is overdue, dispatch, handle results."""
        try:
            while True:
                self._wake.wait(self._flush_interval)
                self._wake.clear()
                self._cycle()
                with self._settled:
                    self._settled.notify_all()
                if self._abandon:
                    self._give_up()
                    with self._settled:
                        self._settled.notify_all()
                    return
        except Exception:  # pragma: no cover - a bug; keep the data safe and say so
            logger.exception("the DearDiary delivery pump failed; spooling what is pending")
            self._give_up()

    def _cycle(self) -> None:
        """One pump cycle."""
        if not self._loaded and not self._loading and self._mode == _LIVE:
            # The pump never waits on the network: a sender reads the resumed iteration, and
            # the calls recorded meanwhile stay in the inbox (automatic steps need the reading).
            self._loading = True
            self._work.put(_Load())
        if not self._loading:
            self._take_inbox()
        self._handle_results()
        if self._courier is not None and self._courier.exited:
            self._courier_gone()
        if self._mode == _DOWN:
            self._maybe_probe()
        elif self._final_probe:
            self._final_probe = 0  # the server came back meanwhile: pending tells the rest
        self._spool_overdue()
        self._dispatch()

    def _loaded_resumed(self, detail: Any) -> None:
        """Apply what a sender read of the resumed iteration (its steps and parameters)."""
        self._loading = False
        self._loaded = True
        self._wake.set()
        if isinstance(detail, BaseException):
            logger.warning(
                "could not read the resumed iteration %s (%s); automatic steps restart at 0",
                self.iteration_id,
                detail,
            )
            return
        steps, parameters = detail
        for key, step in steps.items():
            if step > self._max_step.get(key, -1):
                self._max_step[key] = step
        for key, state in parameters.items():
            self._param_state.setdefault(key, state)

    # taking calls ...............................................................................

    def _take_inbox(self) -> None:
        """Turn recorded calls into operations (batches merged per step within this cycle)."""
        open_batches: dict[tuple[int, bool], _Batch] = {}
        inbox = self._inbox
        while inbox:
            record = inbox.popleft()
            tag = record[0]
            if tag == _METRICS:
                self._take_metrics(record, open_batches)
                continue
            open_batches.clear()
            if tag == _PARAMS:
                for key, text in record[2]:
                    self._add(_Param(record[1], key=key, text=text))
            elif tag == _TAG:
                self._add(_Tag(record[1], value=record[2]))
            elif tag == _NOTES:
                self._add(_Notes(record[1], text=record[2]))
            elif tag == _END:
                end_date = datetime.fromtimestamp(record[1], timezone.utc)
                self._add(
                    _End(
                        record[1],
                        status_id=record[2],
                        error_message=record[3],
                        end_date=end_date,
                        lane_mark=record[4],
                    )
                )

    def _take_metrics(
        self, record: tuple[Any, ...], open_batches: dict[tuple[int, bool], _Batch]
    ) -> None:
        """Group one log_metrics call into batches: one per step, distinct keys."""
        _, step, stamp, items = record
        explicit = isinstance(stamp, datetime)
        logged = stamp.timestamp() if explicit else stamp
        by_step: dict[int, list[tuple[str, float]]] = {}
        for key, value in items:
            key_step = step if step is not None else self._max_step.get(key, -1) + 1
            previous = self._max_step.get(key)
            if previous is None or key_step > previous:
                self._max_step[key] = key_step
            by_step.setdefault(key_step, []).append((key, value))

        for key_step, step_items in by_step.items():
            batch = open_batches.get((key_step, explicit))
            keys = {key for key, _ in step_items}
            if (
                batch is not None
                and not batch.spooled
                and not explicit
                and not any(key in keys for key, _ in batch.items)
            ):
                batch.items.extend(step_items)
                continue
            if len(keys) != len(step_items):
                # The same key twice in one call at one step: later values win, as in a dict.
                step_items = list(dict(step_items).items())
            batch = _Batch(
                logged,
                step=key_step,
                when=self._fingerprint(key_step, stamp),
                items=list(step_items),
                explicit_time=explicit,
            )
            open_batches[(key_step, explicit)] = batch
            self._add(batch)

    def _fingerprint(self, step: int, stamp: float | datetime) -> datetime:
        """Return the batch's ``recorded_at`` in the server's clock, unique for its step."""
        if isinstance(stamp, datetime):
            when = to_server_clock(stamp, self._offset) if stamp.tzinfo else stamp
        else:
            when = (datetime.fromtimestamp(stamp, timezone.utc) + self._offset).replace(tzinfo=None)
        when = when.replace(microsecond=when.microsecond // 1000 * 1000)
        last = self._fingerprints.get(step)
        if (last is not None and when <= last and not isinstance(stamp, datetime)) or (
            last is not None and when == last
        ):
            when = last + _ONE_MS
        self._fingerprints[step] = when
        self._fingerprints.move_to_end(step)
        if len(self._fingerprints) > _FINGERPRINT_MEMORY:
            self._fingerprints.popitem(last=False)
        return when

    def _add(self, op: _Op) -> None:
        """Queue a new operation (spooled at once while the server is down)."""
        self._unsettled += 1
        if self._mode == _DOWN:
            self._spool_op(op)
            self._settle(op)
            self._needs_sync = True
            return
        if self._spool is not None and (
            (isinstance(op, _Param) and self._spool.has_parameter(op.key))
            or (isinstance(op, _Notes) and self._spool.started)
        ):
            # Keep the spool's view of a key current once it holds that key.
            self._spool_op(op)
        self._outbox.append(op)

    def _settle(self, op: _Op) -> None:
        self._unsettled -= len(op.batches) if isinstance(op, _Group) else 1

    # spooling ..................................................................................

    def _spool_op(self, op: _Op) -> None:
        """Write one operation to the spool (once)."""
        if op.spooled or self._spool is None:
            return
        spool = self._spool
        try:
            if isinstance(op, _Batch):
                spool.write_batch(op.step, op.when, op.items)
            elif isinstance(op, _Param):
                spool.write_parameter(op.key, op.text)
            elif isinstance(op, _Tag):
                spool.write_tag(op.value)
            elif isinstance(op, _Notes):
                spool.write_notes(op.text)
            elif isinstance(op, _End):
                spool.write_end(op.status_id, op.error_message, op.end_date)
        except (DearDiaryError, OSError) as exc:
            logger.error("could not write to the spool at %s: %s", spool.url, exc)
            return
        op.spooled = True

    def _spool_overdue(self) -> None:
        """Spool every operation still unacknowledged ``SPOOL_AFTER`` seconds after logging."""
        if self._spool is None or self._mode == _DOWN:
            return
        limit = time.time() - SPOOL_AFTER
        candidates: list[_Op] = []
        for op in itertools.chain(self._inflight.values(), (o for o, _ in self._uncertain)):
            if not op.spooled and op.logged <= limit:
                candidates.append(op)
        for op in self._outbox:
            if op.logged > limit:
                break
            if not op.spooled and not isinstance(op, _End):
                candidates.append(op)
        if not candidates:
            return
        candidates.sort(key=lambda op: op.seq)
        for op in candidates:
            self._spool_op(op)

    # dispatch ..................................................................................

    def _dispatch(self) -> None:
        """Hand operations to the senders, keeping series and metadata in order."""
        if self._mode != _LIVE or self._abandon or self._special_busy:
            # Nothing new goes out while a check runs: the check reads a list that must not
            # move under it.
            return
        if self._uncertain:
            if not self._inflight:
                # A request that timed out, or that a stopped sender process left behind, may
                # still be running on the server: give it time to finish before looking.
                grace = (
                    1.0
                    if any(
                        isinstance(exc, (ReadTimeoutError, _SenderStopped))
                        for _, exc in self._uncertain
                    )
                    else 0.0
                )
                ops = [op for op, _ in self._uncertain]
                self._uncertain = []
                self._special_busy = True
                self._work.put(_Verify(ops, grace))
            return
        courier = self._courier
        headers = None
        if courier is not None and courier.ready and self._remote is not None:
            backend = self._remote.backend
            if isinstance(backend, HTTPBackend):
                headers = backend.batch_headers()  # None: the token is due a refresh
        shipment: list[tuple[int, int, datetime, list[tuple[str, float]]]] = []
        limit = COURIER_WINDOW if headers is not None else self._sender_count
        while self._outbox and len(self._inflight) < limit:
            op = self._outbox[0]
            if isinstance(op, _Batch) and self._grouping:
                op = self._take_group()
                self._inflight[id(op)] = op
                self._work.put(op)
                continue
            if isinstance(op, _Batch):
                if self._inflight_steps[op.step]:
                    break
                self._inflight_steps[op.step] += 1
                if headers is not None:
                    self._outbox.popleft()
                    self._inflight[id(op)] = op
                    self._courier_ops[op.seq] = op
                    shipment.append((op.seq, op.step, op.when, op.items))
                    continue
            elif isinstance(op, _End):
                if self._inflight or not self._lane.reached(op.lane_mark):
                    break
                self._meta_busy = True
            else:
                if self._meta_busy:
                    break
                self._meta_busy = True
            self._outbox.popleft()
            self._inflight[id(op)] = op
            self._work.put(op)
        if shipment:
            assert courier is not None and headers is not None
            courier.send(self._courier_path, headers, shipment)

    def _take_group(self) -> _Group:
        """Take the batches at the head of the outbox (about :data:`GROUP_POINTS`) as one group."""
        outbox = self._outbox
        batches: list[_Batch] = []
        points = 0
        while outbox and points < GROUP_POINTS:
            op = outbox[0]
            if not isinstance(op, _Batch):
                break
            batches.append(op)
            points += len(op.items)
            outbox.popleft()
        return _Group(batches[0].logged, batches=batches)

    def _release(self, op: _Op) -> None:
        """Forget an operation that came back from a sender."""
        self._inflight.pop(id(op), None)
        if isinstance(op, _Group):
            return
        if isinstance(op, _Batch):
            self._inflight_steps[op.step] -= 1
            if not self._inflight_steps[op.step]:
                del self._inflight_steps[op.step]
        else:
            self._meta_busy = False

    # results ...................................................................................

    def _handle_results(self) -> None:
        """Apply what the senders reported."""
        while True:
            try:
                outcome, subject, detail = self._results.get_nowait()
            except queue.Empty:
                return
            if outcome == _OK:
                self._release(subject)
                self._settle(subject)
            elif outcome == _ALL_OK:
                for op in subject:
                    self._release(op)
                    self._settle(op)
            elif outcome == _FAILED:
                self._release(subject)
                self._settle(subject)
                logger.error("DearDiary refused an operation, which is dropped: %s", detail)
            elif outcome == _UNCERTAIN:
                self._release(subject)
                self._uncertain.extend((op, detail) for op in _unpack(subject))
            elif outcome == _IS_DOWN:
                if isinstance(subject, _Op):
                    self._release(subject)
                    self._uncertain.extend((op, detail) for op in _unpack(subject))
                else:
                    self._special_busy = False
                    if isinstance(subject, _Verify):
                        self._uncertain.extend((op, detail) for op in subject.ops)
                self._enter_down(detail)
            elif outcome == _LANE_DOWN:
                self._enter_down(detail)
            elif outcome == _CHECKED:
                self._special_busy = False
                for original, rest in detail:
                    self._settle(original)
                    if rest is not None:
                        self._unsettled += 1
                        self._outbox.appendleft(rest)
            elif outcome == _PROBED:
                self._special_busy = False
                if detail is None:
                    self._mode = _DRAINING
                    self._special_busy = True
                    self._work.put(_Drain())
                else:
                    self._schedule_probe()
                # After the mode (close() reads both): a drain now counts as pending. A probe
                # sent before close() began does not answer close()'s question.
                if detail is None or self._final_probe == 2:
                    self._final_probe = 0
            elif outcome == _LOADED:
                self._loaded_resumed(detail)
            elif outcome == _DRAINED:
                self._special_busy = False
                if detail is None:
                    self._mode = _DOWN
                    self._schedule_probe()
                else:
                    self._finish_drain(detail)

    def _enter_down(self, cause: object) -> None:
        """The retry budget is spent: spool everything pending and start probing."""
        if self._mode == _DOWN:
            self._spool_pending()
            return
        self._mode = _DOWN
        self._needs_sync = self._spool is not None
        self._probe_attempt = 0
        self._schedule_probe()
        if self._spool is None:
            logger.warning(
                "the store at %s keeps failing (%s); delivery continues when it recovers",
                self.url,
                cause,
            )
            return
        logger.warning(
            "the DearDiary server at %s has not answered for %.0f s (%s); keeping the run in "
            "the spool at %s and delivering it when the server is back",
            self.url,
            self._policy.budget,
            cause,
            self.spool_url,
        )
        self._spool_pending()

    def _spool_pending(self) -> None:
        """Spool and let go of every operation held in memory (outbox and ambiguous ones)."""
        if self._spool is None:
            return
        held = [op for op, _ in self._uncertain] + list(self._outbox)
        held.sort(key=lambda op: op.seq)
        for op in held:
            self._spool_op(op)
            self._settle(op)
        self._uncertain = []
        self._outbox.clear()

    def _schedule_probe(self) -> None:
        delay = min(self._policy.delay(self._probe_attempt), self._policy.probe_interval)
        self._probe_attempt += 1
        self._next_probe = time.monotonic() + max(delay, 0.05)

    def _maybe_probe(self) -> None:
        """While down, ask the server whether it is back (one probe at a time)."""
        if self._special_busy or self._inflight or self._spool is None:
            if self._spool is None and not self._special_busy and not self._inflight:
                self._mode = _LIVE
            return
        if (time.monotonic() < self._next_probe and self._final_probe != 1) or self._abandon:
            return
        if self._final_probe == 1:
            self._final_probe = 2
        self._special_busy = True
        self._work.put(_Probe())

    def _finish_drain(self, ops: list[_Op]) -> None:
        """The server is back: queue what it lacks ahead of newer data, then go live."""
        in_memory = {(op.step, op.when) for op in self._outbox if isinstance(op, _Batch)}
        ahead = [op for op in ops if not isinstance(op, _End)]
        ahead = [
            op for op in ahead if not (isinstance(op, _Batch) and (op.step, op.when) in in_memory)
        ]
        for op in reversed(ahead):
            self._unsettled += 1
            self._outbox.appendleft(op)
        for op in ops:
            if isinstance(op, _End):
                self._unsettled += 1
                self._outbox.append(op)
        self._mode = _LIVE
        self._retry.succeeded()
        self._needs_sync = False
        logger.warning(
            "the DearDiary server at %s answers again; delivering %d spooled operations",
            self.url,
            len(ops),
        )

    def _give_up(self) -> None:
        """Closing: spool whatever is still held in memory."""
        if self._loading:
            logger.warning(
                "the writer closed before the resumed iteration %s could be read; automatic "
                "steps logged since it was resumed start at 0",
                self.iteration_id,
            )
        self._take_inbox()
        self._handle_results()
        held = (
            [op for group in self._inflight.values() for op in _unpack(group)]
            + [op for op, _ in self._uncertain]
            + list(self._outbox)
        )
        if not held:
            return
        held.sort(key=lambda op: op.seq)
        if self._spool is None:
            logger.error(
                "%d operations could not be written to %s before the writer closed",
                len(held),
                self.url,
            )
            return
        for op in held:
            self._spool_op(op)
        self._needs_sync = True
        self._outbox.clear()
        self._uncertain = []
        self._unsettled = 0

    # -- sender process -----------------------------------------------------------------------

    def _start_courier(self, client: Client, ids: _Ids) -> None:
        """Start the sender process when the server is reached without a proxy."""
        backend = client.backend
        if not isinstance(backend, HTTPBackend):
            return
        target = backend.batch_target
        if target is None:
            return
        self._courier_path = backend.batch_path(ids.iteration_id)
        self._courier = SenderProcess.start(
            target,
            COURIER_CONNECTIONS,
            self._courier_answered,
            self._wake.set,
        )

    def _courier_answered(self, answers: list[Answer]) -> None:
        """Sort the sender process's answers (its reader thread): done, or for a sender."""
        client = self._remote
        delivered: list[_Op] = []
        for token, status, extra, content in answers:
            op = self._courier_ops.pop(token, None)
            if op is None:
                continue
            if status == 201:
                delivered.append(op)
                continue
            if status == 401:
                # Refused, so nothing was applied: a sender thread sends it again through the
                # backend, which signs in again after an expired or re-keyed token.
                self._work.put(op)
                continue
            backend = client.backend if client is not None else None
            if not isinstance(backend, HTTPBackend):  # pragma: no cover - set before the child
                self._work.put(_Resend(op, ResponseLostError(str(extra), method="POST", url="")))
                continue
            try:
                if status < 0:
                    raise backend.lost_batch_error(self._courier_path, str(extra), str(content))
                backend.read_batch_answer(
                    self._courier_path, status, {"Retry-After": extra} if extra else {}, content
                )
            except DearDiaryError as exc:
                # A sender thread takes it from here: retry, check or give up, as for its own.
                self._work.put(_Resend(op, exc))
                continue
            delivered.append(op)
        if delivered:
            self._retry.succeeded()
            self._results.put((_ALL_OK, delivered, None))
        self._wake.set()

    def _courier_gone(self) -> None:
        """The sender process stopped (pump): what it had not answered may have landed."""
        courier, self._courier = self._courier, None
        assert courier is not None
        held = list(self._courier_ops.values())
        self._courier_ops.clear()
        if not self._closing and not self._abandon:
            logger.warning(
                "the DearDiary sender process (pid %s) stopped; sending from this process, "
                "and checking the %d batches it had not answered",
                courier.pid,
                len(held),
            )
        for op in held:
            error = _SenderStopped(
                "the sender process stopped before the answer arrived; the batch may have been "
                "applied",
                method="POST",
                url=self.url + self._courier_path,
            )
            self._release(op)
            self._uncertain.append((op, error))

    # -- resource lane support ----------------------------------------------------------------

    def _lane_can_send(self) -> bool:
        """Whether the resource lane may talk to the server now."""
        return self._mode == _LIVE and self._ids is not None and self._remote is not None

    def _lane_down(self, cause: BaseException) -> None:
        """The resource lane spent the retry budget: tell the pump."""
        self._results.put((_LANE_DOWN, None, cause))
        self._wake.set()

    def _remote_ids(self) -> _Ids:
        if self._ids is None:
            raise _Down("the run does not exist on the server yet")
        return self._ids

    def _remote_project_id(self) -> Id:
        return self._remote_ids().project_id

    def _remote_experiment_id(self) -> Id:
        return self._remote_ids().experiment_id

    def _remote_iteration_id(self) -> Id:
        return self._remote_ids().iteration_id

    # -- sender threads -----------------------------------------------------------------------

    def _sender_main(self) -> None:
        while True:
            work = self._work.get()
            if work is None:
                return
            try:
                result = self._perform(work)
            except Exception as exc:  # pragma: no cover - a bug; report it as a failure
                logger.exception("unexpected error while delivering to DearDiary")
                result = (_FAILED, work, exc)
            self._results.put(result)
            if not self._grouping or result[0] != _OK or self._ended or self._closing:
                # Grouped writes (the local store) let the batches of a whole pump cycle
                # gather: the pump picks this result up at its next tick, unless the run is
                # ending or something needs its attention now.
                self._wake.set()

    def _perform(self, work: _Work) -> tuple[str, Any, Any]:
        """Do one unit of work and describe the outcome."""
        if isinstance(work, _Verify):
            try:
                if work.grace:
                    self._stop.wait(work.grace)
                return _CHECKED, work, [(op, self._check(op)) for op in work.ops]
            except _Down as exc:
                return _IS_DOWN, work, exc
        if isinstance(work, _Probe):
            return _PROBED, work, self._probe()
        if isinstance(work, _Drain):
            try:
                return _DRAINED, work, self._drain()
            except _Down:
                return _DRAINED, work, None
        if isinstance(work, _Load):
            return _LOADED, work, self._read_resumed()
        op, first_error = (work.op, work.error) if isinstance(work, _Resend) else (work, None)
        try:
            self._send(op, first_error)
        except _Ambiguous as exc:
            return _UNCERTAIN, op, exc.cause
        except _Down as exc:
            return _IS_DOWN, op, exc
        except DearDiaryError as exc:
            return _FAILED, op, exc
        return _OK, op, None

    def _call(
        self,
        fn: Callable[[Client], T],
        *,
        idempotent: bool,
        first_error: DearDiaryError | None = None,
    ) -> T:
        """Run one request with retries; raise ``_Ambiguous`` or ``_Down`` when it must stop.

        ``first_error`` is the outcome of a first attempt made elsewhere (the sender process).
        """
        attempt = 0
        while True:
            if self._abandon or (self._mode == _DOWN and self._spool is not None):
                raise _Down("stopped")
            client = self._remote
            if client is None:
                raise _Down("not connected")
            try:
                if first_error is not None:
                    error, first_error = first_error, None
                    raise error
                result = fn(client)
            except DearDiaryError as exc:
                kind = classify(exc)
                if kind is Failure.PERMANENT:
                    raise
                if isinstance(exc, TokenExpiredError) and not self._sign_in_again():
                    # Without credentials nothing will work again: keep the data in the spool.
                    raise _Down(str(exc)) from exc
                self._retry.failed()
                if kind is Failure.AMBIGUOUS and not idempotent:
                    raise _Ambiguous(exc) from exc
                if self._retry.exhausted:
                    raise _Down(str(exc)) from exc
                delay = self._policy.delay(attempt, retry_after_of(exc))
                logger.debug("retrying in %.2f s after: %s", delay, exc)
                if self._stop.wait(min(delay, max(self._retry.remaining(), 0.05))):
                    raise _Down("stopped") from exc
                attempt += 1
                continue
            self._retry.succeeded()
            return result

    def _sign_in_again(self) -> bool:
        """Replace the client with a freshly signed-in one; ``False`` without credentials."""
        credentials = self._credentials
        if credentials is None or not credentials.can_sign_in:
            logger.error(
                "the token for %s has expired and no username/password was given to sign in "
                "again; pass credentials to keep long runs connected",
                self.url,
            )
            return False
        try:
            fresh = credentials.connect()
        except DearDiaryError as exc:
            logger.warning("signing in again to %s failed: %s", self.url, exc)
            return True
        old, self._remote = self._remote, fresh
        if old is not None:
            old.close()
        return True

    def _send(self, op: _Op, first_error: DearDiaryError | None = None) -> None:
        """Deliver one operation (a batch the sender process failed to deliver: its error)."""
        assert self._ids is not None
        iteration_id = self._ids.iteration_id
        if isinstance(op, _Batch):
            self._call(
                lambda c: c.log_metrics(iteration_id, op.items, step=op.step, recorded_at=op.when),
                idempotent=False,
                first_error=first_error,
            )
        elif isinstance(op, _Group):
            # The values passed the value policy on the calling thread and every ``when`` is a
            # naive time of the store's clock: what the client would hand the backend.
            points = [
                (key, value, batch.step, batch.when)
                for batch in op.batches
                for key, value in batch.items
            ]
            self._call(
                lambda c: c.backend.log_metric_points(iteration_id, points), idempotent=False
            )
        elif isinstance(op, _Param):
            self._send_parameter(iteration_id, op)
        elif isinstance(op, _Tag):
            with contextlib.suppress(ConflictError):
                self._call(lambda c: c.add_tag(iteration_id, op.value), idempotent=False)
        elif isinstance(op, _Notes):
            self._call(lambda c: c.update_iteration(iteration_id, notes=op.text), idempotent=True)
        elif isinstance(op, _End):
            self._send_end(iteration_id, op)

    def _send_parameter(self, iteration_id: Id, op: _Param) -> None:
        known = self._param_state.get(op.key)
        if known is not None and known[1] == op.text:
            return
        if known is not None:
            parameter_id = known[0]
            self._call(lambda c: c.update_parameter(parameter_id, value=op.text), idempotent=True)
        else:
            parameter_id = self._call(
                lambda c: c.create_parameter(iteration_id, op.key, op.text), idempotent=False
            )
        self._param_state[op.key] = (parameter_id, op.text)

    def _send_end(self, iteration_id: Id, op: _End) -> None:
        try:
            self._call(
                lambda c: c.end_iteration(
                    iteration_id, op.status_id, error_message=op.error_message, end_date=op.end_date
                ),
                idempotent=True,
            )
        except UnprocessableError:
            current = self._call(lambda c: c.get_iteration(iteration_id), idempotent=True)
            if current is None or not current.ended:
                raise

    def _check(self, op: _Op) -> _Op | None:
        """Find out what an ambiguous operation left; return what must still be sent."""
        assert self._ids is not None
        iteration_id = self._ids.iteration_id
        if isinstance(op, _Batch):
            rows = self._call(lambda c: rows_at_step(c, iteration_id, op.step), idempotent=True)
            found = landed_keys(rows, op.step, op.when, [key for key, _ in op.items])
            for key, count in found.items():
                if count > 1:
                    logger.warning("metric %r at step %d is stored %d times", key, op.step, count)
            rest = [(key, value) for key, value in op.items if key not in found]
            logger.debug(
                "checked batch of step %d at %s: %d of %d keys landed (%d rows of the step)",
                op.step,
                op.when,
                len(found),
                len(op.items),
                len(rows),
            )
            if not rest:
                return None
            retry = _Batch(op.logged, step=op.step, when=op.when, items=rest)
            retry.spooled = op.spooled
            return retry
        if isinstance(op, _Param):
            parameters = self._call(lambda c: c.get_parameters(iteration_id), idempotent=True)
            known = {state[0] for state in self._param_state.values()}
            match = find_parameter(parameters, op.key, op.text, known)
            if match is None:
                return op
            self._param_state[op.key] = (match.id, op.text)
            return None
        if isinstance(op, _Tag):
            tags = self._call(lambda c: c.get_tags(iteration_id), idempotent=True)
            return None if any(tag.value == op.value for tag in tags) else op
        return op

    def _read_resumed(
        self,
    ) -> tuple[dict[str, int], dict[str, tuple[Id, str]]] | BaseException:
        """Read a resumed iteration's last step per key and its parameters, or the error."""
        assert self._ids is not None
        iteration_id = self._ids.iteration_id
        try:
            rows = self._call(lambda c: c.get_metrics(iteration_id), idempotent=True)
            parameters = self._call(lambda c: c.get_parameters(iteration_id), idempotent=True)
        except (_Down, DearDiaryError) as exc:
            return exc
        steps: dict[str, int] = {}
        for row in rows:
            if row.step > steps.get(row.key, -1):
                steps[row.key] = row.step
        return steps, {p.key: (p.id, p.value) for p in parameters}

    def _probe(self) -> BaseException | None:
        """Return ``None`` when the server answers (and the run exists there), else the error."""
        try:
            if self._remote is None or self._ids is None:
                self._connect_late()
            assert self._remote is not None
            self._remote.health()
            self._remote.whoami()
        except (DearDiaryError, ValueError) as exc:
            logger.debug("DearDiary server still unreachable: %s", exc)
            return exc
        return None

    def _connect_late(self) -> None:
        """The server was down at start: sign in and create the run there now."""
        assert self._credentials is not None and self._wanted is not None
        assert self._spool is not None
        if self._remote is None:
            self._remote = self._credentials.connect()
        project, experiment, iteration_id, parent_iteration_id = self._wanted
        ids = _resolve(self._remote, project, experiment, iteration_id, parent_iteration_id)
        self._offset = self._remote.backend.server_utc_offset()
        self._spool.link(
            self._remote.url,
            project_id=ids.project_id,
            experiment_id=ids.experiment_id,
            iteration_id=ids.iteration_id,
            server_offset=self._offset,
        )
        self._ids = ids
        logger.info("the run is now on the DearDiary server as iteration %s", ids.iteration_id)
        if self._sender_process and self._courier is None:
            self._start_courier(self._remote, ids)

    def _drain(self) -> list[_Op]:
        """Compare the spool with the server; return operations for what the server lacks."""
        assert self._spool is not None and self._ids is not None
        iteration_id = self._ids.iteration_id
        contents = self._spool.contents()
        ops: list[_Op] = []
        if contents.batches:
            first = min(step for step, _ in contents.batches)
            rows = self._call(lambda c: rows_from_step(c, iteration_id, first), idempotent=True)
            for (step, when), items in sorted(missing_on_remote(contents.batches, rows).items()):
                batch = _Batch(when.timestamp(), step=step, when=when, items=items)
                batch.spooled = True
                ops.append(batch)
        if contents.parameters:
            remote = {
                p.key: p
                for p in self._call(lambda c: c.get_parameters(iteration_id), idempotent=True)
            }
            for key, text in contents.parameters.items():
                row = remote.get(key)
                if row is not None:
                    self._param_state[key] = (row.id, row.value)
                if row is None or row.value != text:
                    param = _Param(time.time(), key=key, text=text)
                    param.spooled = True
                    ops.append(param)
        if contents.tags:
            tags = {
                t.value for t in self._call(lambda c: c.get_tags(iteration_id), idempotent=True)
            }
            for value in sorted(contents.tags - tags):
                tag = _Tag(time.time(), value=value)
                tag.spooled = True
                ops.append(tag)
        mirror = contents.iteration
        if mirror is not None:
            remote_iteration = self._call(lambda c: c.get_iteration(iteration_id), idempotent=True)
            if (
                mirror.notes
                and remote_iteration is not None
                and remote_iteration.notes != mirror.notes
            ):
                notes = _Notes(time.time(), text=mirror.notes)
                notes.spooled = True
                ops.append(notes)
            if mirror.ended and remote_iteration is not None and not remote_iteration.ended:
                assert mirror.end_date is not None
                zone = timezone(self._spool.client.backend.server_utc_offset())
                end = _End(
                    time.time(),
                    status_id=mirror.status_id,
                    error_message=mirror.error_message or None,
                    end_date=mirror.end_date.replace(tzinfo=zone),
                )
                end.spooled = True
                ops.append(end)
        return ops


def _status_id(status: IterationStatus | int | str) -> int:
    """Turn an iteration status (member, wire value or name) into its wire value."""
    try:
        if isinstance(status, str):
            return int(IterationStatus[status.upper()])
        return int(IterationStatus(status))
    except (KeyError, ValueError):
        allowed = ", ".join(member.name for member in IterationStatus)
        msg = f"{status!r} is not an iteration status; use one of {allowed}"
        raise ValueError(msg) from None


class _Progress:
    """A one-line progress report on stderr, rewritten in place."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.shown = False
        self._last = 0.0

    def show(self, pending: int, left: float) -> None:
        now = time.monotonic()
        if now - self._last < 0.5:
            return
        self._last = now
        self.shown = True
        sys.stderr.write(
            f"\rdeardiary: delivering {pending} pending operations to {self.url} "
            f"(giving up in {max(left, 0):.0f} s)   "
        )
        sys.stderr.flush()

    def done(self) -> None:
        if self.shown:
            sys.stderr.write("\n")
            sys.stderr.flush()
