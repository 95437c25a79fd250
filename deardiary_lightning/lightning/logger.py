"""The Lightning logger: every run of a ``Trainer`` (or of Fabric) as one DearDiary iteration.

Add it to a ``Trainer`` and hyperparameters, metrics and (optionally) checkpoints land in a
DearDiary server, or in the local store when no server is configured::

    from deardiary_lightning import DearDiaryLogger

    trainer = Trainer(logger=DearDiaryLogger(project="digits", experiment="mlp"))

See :class:`DearDiaryLogger` for the rules: which step each metric gets, when the iteration
ends and with which status, how checkpoints are named, and how ranks agree under DDP.
"""

from __future__ import annotations

import atexit
import contextlib
import itertools
import logging
import multiprocessing.context
import os
import sys
import threading
import traceback
import uuid
import warnings
import weakref
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import timedelta
from types import FrameType, TracebackType
from typing import TYPE_CHECKING, Any, cast

from typing_extensions import override

from deardiary_lightning.lightning._compat import (
    Logger,
    SIGTERMException,
    dummy_experiment,
    rank,
)
from deardiary_lightning.lightning.checkpoints import (
    CheckpointBook,
    SavedFile,
    resource_name,
    stage,
    unstage,
)
from deardiary_lightning.lightning.hparams import flatten_hparams
from deardiary_lightning.lightning.steps import StepPlanner
from deardiary_lightning.settings import (
    CheckpointMode,
    DearDiarySettings,
    mask_url,
    parse_checkpoint_mode,
)

if TYPE_CHECKING:
    from deardiary_lightning.delivery import RunWriter
    from deardiary_lightning.entities import Id

__all__ = ["DearDiaryLogger"]

log = logging.getLogger(__name__)

#: Longest error text recorded on a failed iteration (the end of the traceback is kept).
MAX_ERROR_CHARS = 8000

#: Error text of an iteration ended by SIGTERM.
SIGTERM_TEXT = "SIGTERM: the process was asked to terminate"

#: How long other ranks wait for rank zero's run key under DDP.
RANK_SYNC_TIMEOUT = timedelta(seconds=120)

#: Attributes that belong to one process and are rebuilt, empty, after unpickling.
_RUNTIME_STATE = (
    "_opened",
    "_book",
    "_checkpoint_callbacks",
    "_open_lock",
    "_trainer_ref",
    "_warned_ended",
    "_key_shared",
    "_epoch_seen",
    "_step_seen",
)

# How far above os.fork a process launcher's frame can be (multiprocessing and torch calls).
_LAUNCH_FRAMES = 16
_publications = itertools.count()
_subscriptions = itertools.count()

#: Rank zero's run keys, for the ranks it starts as child processes: ``<pid>:<key>,<key>...``.
_RUN_KEYS_VARIABLE = "DEARDIARY_LIGHTNING_RUN_KEYS"
_LISTED_KEYS = 64  # at most (about 1 KB of environment)
_built = itertools.count()


def _new_run_key() -> str:
    """Return the run key of a new logger: the same on every rank wherever it can be.

    Rank zero makes a fresh key and lists it in its environment, which the ranks that
    Lightning and Fabric start as child processes (``ddp``) inherit: their n-th logger takes
    rank zero's n-th key, before any process group exists (Fabric never waits for one). Ranks
    started otherwise (``torchrun``, SLURM) take rank zero's key through the process group
    when the Trainer sets up.
    """
    number = next(_built)
    owner, _, listed = os.environ.get(_RUN_KEYS_VARIABLE, "").partition(":")
    keys = listed.split(",") if listed else []
    if rank() != 0:
        if owner == str(os.getppid()) and number < len(keys) and keys[number]:
            return keys[number]
        return "run-" + uuid.uuid4().hex[:12]
    key = "run-" + uuid.uuid4().hex[:12]
    if number >= _LISTED_KEYS:
        return key  # a long sweep in one process: launches happen at the first loggers
    mine = keys[:number] if owner == str(os.getpid()) else []
    mine += [""] * (number - len(mine))  # keys of loggers built before another process's list
    os.environ[_RUN_KEYS_VARIABLE] = f"{os.getpid()}:" + ",".join([*mine, key])
    return key


@dataclass(frozen=True)
class _Target:
    """Where the run goes, with arguments resolved against the settings."""

    url: str
    store: str
    project: str
    experiment: str
    iteration_id: Id | None
    username: str | None
    password: str | None
    token: str | None
    log_checkpoints: CheckpointMode
    sender_process: bool


class _Lifecycle:
    """The open run and its end, shared with the finalizer (which must not hold the logger)."""

    def __init__(self, run: RunWriter, owner: bool, timeout: float) -> None:
        self.run = run
        self.owner = owner
        self.timeout = timeout
        self.pid = os.getpid()
        self.ended = False
        self.exception: BaseException | None = None
        self.stop_check: Callable[[], bool] | None = None
        self.lock = threading.Lock()
        atexit.register(self.at_exit)

    def watch_sigterm(self, check: Callable[[], bool], before_end: Callable[[], None]) -> None:
        """Let the delivery layer's SIGTERM handler leave the run to a stopping Trainer."""
        from deardiary_lightning.delivery import shutdown

        self.stop_check = check
        shutdown.add_stop_check(check, before_end)

    def _unwatch_sigterm(self) -> None:
        check, self.stop_check = self.stop_check, None
        if check is not None:
            from deardiary_lightning.delivery import shutdown

            shutdown.remove_stop_check(check)

    def end(self, status: str, error_message: str | None, timeout: float | None) -> bool:
        """End the iteration once; return whether this call ended it."""
        with self.lock:
            if self.ended:
                return False
            self.ended = True
        atexit.unregister(self.at_exit)
        self._unwatch_sigterm()
        try:
            self.run.end(status, error_message=error_message)
        finally:
            self.run.close(timeout)
        log.info("DearDiary: iteration %s ended %s", self.run.iteration_id, status)
        return True

    def release(self, timeout: float | None) -> None:
        """Deliver what is pending and stop, leaving the iteration open (not the owner)."""
        with self.lock:
            if self.ended:
                return
            self.ended = True
        atexit.unregister(self.at_exit)
        self._unwatch_sigterm()
        self.run.close(timeout)

    def at_exit(self) -> None:
        """End the run as the interpreter exits (before the writer's own exit handler)."""
        self.finish(self, self.timeout, exiting=True)

    @staticmethod
    def collected(lifecycle: _Lifecycle, timeout: float | None) -> None:
        """End the run of a garbage-collected logger.

        The collection may happen on one of the writer's own threads, which cannot wait for
        themselves to stop: the run is then ended from a new thread.
        """
        if lifecycle.ended:
            return
        if threading.current_thread().name.startswith("deardiary"):
            ender = threading.Thread(
                target=_Lifecycle.finish, args=(lifecycle, timeout), name="dd-logger-end"
            )
            ender.start()
            return
        _Lifecycle.finish(lifecycle, timeout)

    @staticmethod
    def finish(lifecycle: _Lifecycle, timeout: float | None, exiting: bool = False) -> None:
        """End the run when the logger is gone: garbage-collected, or the interpreter exits."""
        if lifecycle.ended or lifecycle.pid != os.getpid():
            return  # ended, or a forked copy: the run belongs to the parent
        if not lifecycle.owner:
            lifecycle.release(timeout)
            return
        failure = _uncaught_exception() if exiting else None
        if exiting and failure is None and _sigterm_pending():
            lifecycle.end("KILLED", SIGTERM_TEXT, timeout)
        elif failure is None:
            lifecycle.end("SUCCEEDED", None, timeout)
        else:
            status, text = describe_exception(failure)
            lifecycle.end(status, text, timeout)


def describe_exception(exception: BaseException) -> tuple[str, str]:
    """Return the final status and the error text for an exception that stopped a run.

    Args:
        exception: What stopped the run.

    Returns:
        ``("KILLED", text)`` for Ctrl-C (``KeyboardInterrupt``), SIGTERM (Lightning's
        ``SIGTERMException``) and ``SystemExit``; ``("FAILED", text)`` for anything else. The
        text is the exception with the end of its traceback, at most ``MAX_ERROR_CHARS``.
    """
    if isinstance(exception, KeyboardInterrupt):
        return "KILLED", "KeyboardInterrupt: interrupted (Ctrl-C)"
    if isinstance(exception, SIGTERMException):
        return "KILLED", SIGTERM_TEXT
    if isinstance(exception, SystemExit):
        return "KILLED", f"SystemExit: exit code {exception.code}"
    lines = traceback.format_exception(type(exception), exception, exception.__traceback__)
    text = "".join(lines).strip()
    if len(text) > MAX_ERROR_CHARS:
        text = "...\n" + text[-(MAX_ERROR_CHARS - 4) :]
    return "FAILED", text


def _sigterm_pending() -> bool:
    """Tell whether a SIGTERM was left to the Trainer to stop on (see ``delivery.shutdown``)."""
    from deardiary_lightning.delivery import shutdown

    return shutdown.sigterm_pending()


def _uncaught_exception() -> BaseException | None:
    """Return the exception that is ending a script, if any (not in interactive sessions)."""
    if hasattr(sys, "ps1") or sys.flags.interactive or "ipykernel" in sys.modules:
        return None
    found = getattr(sys, "last_exc", None) or getattr(sys, "last_value", None)
    return found if isinstance(found, BaseException) else None


class DearDiaryLogger(Logger):
    """Log a Lightning run to DearDiary: one iteration per logger.

    Nothing happens when the logger is built: no file, no connection. The run opens on rank zero
    the first time it is needed (``experiment``, or the first value logged): the project and
    the experiment are found by name or created, then a new iteration is created, or the one
    given by ``iteration_id`` is resumed. Every call returns at once; a background thread
    delivers, and keeps undelivered data in the local store while a server is unreachable.

    **Steps.** Lightning marks what it logs with an ``epoch`` key; the logger uses the
    ``Trainer`` it runs under (it finds it at the start of each ``fit``/``validate``/``test``,
    or through :class:`~deardiary_lightning.lightning.DearDiaryCallback`) to tell the kinds of
    values apart:

    ======================================  ====================================================
    values                                  step written
    ======================================  ====================================================
    epoch-level (``on_epoch=True``: train   the epoch (``trainer.current_epoch``): after
    epoch end, validation and test ends)    ``fit(max_epochs=E)`` each such key has E points,
                                            at steps 0 .. E-1; test after fit goes to step E
    train step-level (``on_step=True``)     the global step (``trainer.global_step`` at the
                                            log call, as Lightning counts it)
    ``epoch`` key of train step-level       kept as a series: global step to epoch (dropped
    values                                  from epoch-level calls, where it is the step)
    validation/test step-level              the key's next step: 0, 1, 2, ... across every
                                            evaluation (Lightning restarts their step at 0)
    Fabric (``fabric.log_dict``) and direct  the given step; without one, the key's next step
    ``log_metrics`` calls
    ======================================  ====================================================

    Whatever the kind, a key never gets two points at one step: the same value again at the
    key's last step is skipped (Lightning's repeated step at an epoch end), anything else that
    would land at or before the key's last step goes to the last step plus one (for instance a
    second ``trainer.validate()`` at the same epoch). Without a ``Trainer`` in sight (Fabric, or
    ``Trainer(enable_autolog_hparams=False)`` without the callback) every call uses the given
    step and the ``epoch`` key is an ordinary series. Keys are prefixed with ``prefix-`` when a
    prefix is set.

    **When the iteration ends.** Lightning calls ``finalize("success")`` after every ``fit``,
    ``validate``, ``test`` and ``predict``; that only flushes (everything logged so far is
    delivered, or safely spooled), so fit then test in one process lands in one iteration. The
    iteration ends:

    - at once, FAILED with the traceback text, when Lightning reports an exception
      (``finalize("failed")``), or KILLED on Ctrl-C or SIGTERM. On SIGTERM inside Lightning's
      loops the step in progress finishes first, the best and last checkpoints are uploaded
      (``log_checkpoints=True``), and the process then terminates by SIGTERM; if that is not
      over ``delivery.shutdown.LOOP_GRACE`` (30) seconds plus ``close_timeout`` after the
      signal, or a second SIGTERM comes, the run ends KILLED at once;
    - SUCCEEDED when you call :meth:`end` or leave a ``with DearDiaryLogger(...)`` block;
    - otherwise when the work is over: when the logger object is garbage-collected, or when the
      Python process exits (SUCCEEDED, or FAILED/KILLED when the script ends with an uncaught
      exception).

    An ended iteration is never written again: later values are dropped with a warning.
    A process killed with SIGKILL cannot end it; it stays RUNNING.

    **Version and directories.** ``name`` is the experiment name. ``version`` is the iteration
    id when it is known from the start (``iteration_id``), else the *run key*, ``run-`` and 12
    hex digits fixed when the logger is built and recorded on the iteration as the parameter
    ``run/key``. Neither changes during the logger's life. ``save_dir`` is the local directory
    for files (``lightning_logs`` by default) and ``log_dir`` is ``save_dir/name/version``;
    ``ModelCheckpoint`` writes to ``log_dir/checkpoints``. Under ``ddp_spawn`` the key travels
    with the pickled logger; under ``ddp`` (each rank builds its own logger), ranks that
    Lightning or Fabric start as child processes inherit rank zero's key through the
    environment, and ranks started otherwise adopt it through the process group's store when
    the ``Trainer`` sets up, before any of these values is used. All four are identical on
    every rank (with Fabric, for ranks Fabric starts itself).

    **DDP.** One iteration for all ranks: only rank zero opens the run and writes. Under
    ``ddp_spawn`` the main process opens the run when Lightning pickles the logger to start
    the processes, so every stage (fit, then test) continues it; the main process ends it.
    Under ``ddp_fork`` and ``ddp_notebook`` the main process opens it just before Lightning
    forks the processes of a stage, and each stage's rank-zero process continues it with a
    writer of its own.

    **Checkpoints** (``log_checkpoints``): ``False``, nothing; ``True``, the best and the last
    checkpoint when fitting ends (or fails, or SIGTERM stops it); ``"all"``, every checkpoint
    file as soon as it is saved. Uploads are streamed in the background. Resources are named
    ``iteration=<id>-epoch=<epoch>-step=<step>-<file name>`` (``iteration=<id>-<file name>``
    when the file name already says ``epoch=<epoch>`` and ``step=<step>``). Deleting
    rotated-out checkpoints and registering the best one as a model version are options of
    :class:`~deardiary_lightning.lightning.DearDiaryCallback`.

    Args:
        url: ``http(s)://`` URL of a DearDiary server, or a local store path or fsspec URL.
            Default: ``DEARDIARY_URL``, else the local store (``store``).
        project: Project name, found or created. Default: ``DEARDIARY_PROJECT`` or ``default``.
        experiment: Experiment name in the project, found or created (it must be IN_PROGRESS).
            Default: ``DEARDIARY_EXPERIMENT`` or ``default``.
        iteration_id: Resume this iteration: new values continue its series after their last
            step. Default: ``DEARDIARY_ITERATION_ID``, else a new iteration.
        parent_iteration_id: Create the new iteration as a child of this one (sweeps).
        tags: Tags attached to the iteration.
        notes: Notes of the iteration.
        username: Sign in to the server as this user. Default: ``DEARDIARY_USERNAME``.
        password: The user's password. Default: ``DEARDIARY_PASSWORD``. Prefer the variable:
            a password in a config file is a password on disk.
        token: A bearer token instead of a password. Default: ``DEARDIARY_TOKEN``.
        log_checkpoints: ``False``, ``True`` or ``"all"`` (see above). Default:
            ``DEARDIARY_LOG_CHECKPOINTS`` or ``False``.
        prefix: Prepended to every metric key, joined with ``-``.
        save_dir: Local directory for checkpoints and the CLI config. Default ``lightning_logs``.
        store: The local store (destination without a server, spool with one). Default:
            ``DEARDIARY_STORE`` or ``./deardiary``.
        log_environment: Record Python, package versions, git state and the command line as
            ``env/...`` parameters.
        close_timeout: Longest wait, in seconds, for pending deliveries when the run ends.

    Raises:
        ValueError: ``log_checkpoints`` is not one of ``False``, ``True``, ``"all"``.
    """

    def __init__(
        self,
        url: str | None = None,
        project: str | None = None,
        experiment: str | None = None,
        iteration_id: int | str | None = None,
        parent_iteration_id: int | str | None = None,
        tags: Sequence[str] | None = None,
        notes: str | None = None,
        username: str | None = None,
        password: str | None = None,
        token: str | None = None,
        log_checkpoints: CheckpointMode | None = None,
        prefix: str = "",
        save_dir: str | os.PathLike[str] = "lightning_logs",
        store: str | None = None,
        log_environment: bool = True,
        close_timeout: float = 60.0,
    ) -> None:
        super().__init__()
        self._args: dict[str, Any] = {
            "url": None if url is None else os.fspath(url),
            "project": project,
            "experiment": experiment,
            "iteration_id": iteration_id,
            "username": username,
            "password": password,
            "token": token,
            "log_checkpoints": (
                None if log_checkpoints is None else parse_checkpoint_mode(log_checkpoints)
            ),
            "store": store,
        }
        self._parent_iteration_id = parent_iteration_id
        self._tags = tuple(tags or ())
        self._notes = notes
        self._prefix = prefix
        self._save_dir = os.fspath(save_dir)
        self._log_environment = log_environment
        self._close_timeout = close_timeout
        self._run_key = _new_run_key()
        self._target_cache: _Target | None = None
        self._planner = StepPlanner()
        self._opened_elsewhere: Id | None = None
        self._delete_removed = False
        self._init_runtime()

    def _init_runtime(self) -> None:
        """Set the per-process state that never travels in a pickle."""
        self._opened: _Lifecycle | None = None
        self._book = CheckpointBook()
        self._checkpoint_callbacks: list[Any] = []
        self._open_lock = threading.Lock()
        self._trainer_ref: weakref.ReferenceType[Any] | None = None
        self._warned_ended = False
        self._key_shared = False
        self._epoch_seen = 0
        self._step_seen = 0

    # -- processes (ddp_spawn, ddp_fork) -------------------------------------------------------

    @property
    def _lifecycle(self) -> _Lifecycle | None:
        """The run this process opened (a forked copy of the parent's does not count)."""
        lifecycle = self._opened
        if lifecycle is not None and lifecycle.pid != os.getpid():
            # A forked process (ddp_fork, ddp_notebook) holds a copy of the parent's run whose
            # threads stayed in the parent: it continues the iteration with a writer of its own.
            self._opened = None
            if not lifecycle.ended:
                self._opened_elsewhere = lifecycle.run.iteration_id
            return None
        return lifecycle

    @_lifecycle.setter
    def _lifecycle(self, lifecycle: _Lifecycle | None) -> None:
        self._opened = lifecycle

    def _open_for_processes(self) -> None:
        """Open the run before Lightning starts the processes of a stage from this one.

        ``ddp_spawn``, ``ddp_fork`` and ``ddp_notebook`` run every stage (fit, then test) in
        new processes started from this one. Opening the run here first makes all of them
        continue this one iteration, which this process ends when the logger goes (or at exit).
        """
        if self._lifecycle is None and self._opened_elsewhere is None and rank() == 0:
            self._open()

    def __getstate__(self) -> dict[str, Any]:
        if multiprocessing.context.get_spawning_popen() is not None:
            self._open_for_processes()  # pickled to start a process (ddp_spawn)
        state = self.__dict__.copy()
        for name in _RUNTIME_STATE:
            state.pop(name, None)
        lifecycle = self._lifecycle
        if lifecycle is not None and not lifecycle.ended:
            state["_opened_elsewhere"] = lifecycle.run.iteration_id
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._init_runtime()

    # -- identity -----------------------------------------------------------------------------

    @property
    @override
    def name(self) -> str:
        """The experiment name."""
        return self._target.experiment

    @property
    @override
    def version(self) -> str:
        """The iteration id when given at construction, else the run key (see the class)."""
        given = self._target.iteration_id
        return str(given) if given is not None else self._run_key

    @property
    def run_key(self) -> str:
        """The key of this logger's run, recorded on the iteration as ``run/key``."""
        return self._run_key

    @property
    @override
    def save_dir(self) -> str:
        """The local directory for files (checkpoints, the CLI config)."""
        return self._save_dir

    @property
    @override
    def root_dir(self) -> str:
        """``save_dir/name``."""
        return os.path.join(self._save_dir, self.name)

    @property
    @override
    def log_dir(self) -> str:
        """``save_dir/name/version``: this run's local directory."""
        return os.path.join(self._save_dir, self.name, self.version)

    @property
    def iteration_id(self) -> Id | None:
        """The iteration's id: given, or known once the run is open (rank zero)."""
        if self._lifecycle is not None:
            return self._lifecycle.run.iteration_id
        if self._opened_elsewhere is not None:
            return self._opened_elsewhere
        return self._target.iteration_id

    @property
    def url(self) -> str:
        """Where the run goes, without credentials."""
        if self._lifecycle is not None:
            return mask_url(self._lifecycle.run.url)
        return mask_url(self._target.url)

    @property
    def ended(self) -> bool:
        """Whether this logger's iteration has ended (or been handed back, off rank zero)."""
        return self._lifecycle is not None and self._lifecycle.ended

    @property
    def log_checkpoints(self) -> CheckpointMode:
        """The checkpoint mode in effect."""
        return self._target.log_checkpoints

    # -- the run ------------------------------------------------------------------------------

    @property
    def experiment(self) -> RunWriter:
        """The run writer (opened on first use, rank zero only; a no-op object elsewhere)."""
        if rank() != 0:
            self._adopt_rank_zero_key()
            return cast("RunWriter", dummy_experiment())
        self._share_run_key()
        lifecycle = self._lifecycle
        if lifecycle is not None:
            return lifecycle.run
        return self._open().run

    def _open(self) -> _Lifecycle:
        """Open the run: resolve project, experiment and iteration, record the environment."""
        with self._open_lock:
            if self._lifecycle is not None:
                return self._lifecycle
            from deardiary_lightning.delivery import open_run

            target = self._target
            resume = self._opened_elsewhere if self._opened_elsewhere is not None else None
            resume = resume if resume is not None else target.iteration_id
            run = open_run(
                target.url,
                project=target.project,
                experiment=target.experiment,
                iteration_id=resume,
                parent_iteration_id=None if resume is not None else self._parent_iteration_id,
                username=target.username,
                password=target.password,
                token=target.token,
                spool=target.store,
                tags=self._tags,
                notes=self._notes,
                close_timeout=self._close_timeout,
                sender_process=target.sender_process,
            )
            lifecycle = _Lifecycle(run, self._opened_elsewhere is None, self._close_timeout)
            if resume is not None:
                self._seed_steps(run)
            if self._opened_elsewhere is None:
                # The process that opened the run first recorded its key and environment.
                self._record_start(run)
            collected = weakref.finalize(self, _Lifecycle.collected, lifecycle, self._close_timeout)
            collected.atexit = False
            ref = weakref.ref(self)
            lifecycle.watch_sigterm(_stop_check(ref), _before_sigterm_end(ref))
            self._lifecycle = lifecycle

        log.info(
            "DearDiary: %s iteration %s of experiment %r at %s",
            "resumed" if resume is not None else "started",
            run.iteration_id,
            target.experiment,
            mask_url(run.url),
        )
        return lifecycle

    def _record_start(self, run: RunWriter) -> None:
        """Record the run key and, if asked, the environment."""
        params: dict[str, str] = {"run/key": self._run_key}
        if self._log_environment:
            from deardiary_lightning.lightning.environment import collect_environment

            params.update(collect_environment())
        run.log_parameters(params)

    def _seed_steps(self, run: RunWriter) -> None:
        """Load a resumed iteration's last steps so its series continue after them."""
        try:
            points = run.client.get_metrics(run.iteration_id)
        except Exception as error:
            log.warning(
                "DearDiary: could not read the metrics of iteration %s to continue its steps "
                "(%s); new points use the steps Lightning gives",
                run.iteration_id,
                error,
            )
            return
        self._planner.seed((p.key, p.step, p.value) for p in points)

    @property
    def _target(self) -> _Target:
        """The arguments, completed from the settings (read once, on first use)."""
        if self._target_cache is None:
            self._target_cache = self._resolve()
        return self._target_cache

    def _resolve(self) -> _Target:
        """Complete the arguments from ``DEARDIARY_*`` variables and ``.env``."""
        args = self._args
        settings = DearDiarySettings()
        store = args["store"] or settings.store
        mode = args["log_checkpoints"]
        return _Target(
            url=args["url"] or settings.url or store,
            store=store,
            project=args["project"] or settings.project,
            experiment=args["experiment"] or settings.experiment,
            iteration_id=(
                args["iteration_id"] if args["iteration_id"] is not None else settings.iteration_id
            ),
            username=args["username"] or settings.username,
            password=args["password"] or settings.password_value(),
            token=args["token"] or settings.token_value(),
            log_checkpoints=settings.log_checkpoints if mode is None else mode,
            sender_process=settings.sender_process,
        )

    # -- ranks --------------------------------------------------------------------------------

    def _share_run_key(self) -> None:
        """On rank zero of a process group, publish the run key for the other ranks."""
        if self._key_shared:
            return
        store = _process_group_store()
        if store is None:
            return
        self._key_shared = True
        store.set(f"deardiary_lightning/run_key/{next(_publications)}", self._run_key)

    def _adopt_rank_zero_key(self) -> None:
        """On another rank of a process group, take rank zero's run key (once)."""
        if self._key_shared:
            return
        store = _process_group_store()
        if store is None:
            return
        self._key_shared = True
        slot = f"deardiary_lightning/run_key/{next(_subscriptions)}"
        try:
            store.wait([slot], RANK_SYNC_TIMEOUT)
            self._run_key = store.get(slot).decode()
        except Exception as error:
            log.warning(
                "DearDiary: rank %d did not receive rank zero's run key (%s); its version and "
                "log_dir may differ from rank zero's",
                rank(),
                error,
            )

    # -- Lightning hooks ----------------------------------------------------------------------

    @override
    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        """Record hyperparameters as parameters (flattened with ``/``; an upsert by key).

        Lightning calls this at the start of every stage; a value already recorded is not
        written again, a changed value is updated.
        """
        if rank() != 0 or self._refuse_after_end():
            return
        flat = flatten_hparams(params)
        if flat:
            self.experiment.log_parameters(flat)

    @override
    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        """Record metric values; the step rules are in the class docstring."""
        if rank() != 0 or not metrics or self._refuse_after_end():
            return
        lifecycle = self._lifecycle
        run = lifecycle.run if lifecycle is not None else self.experiment

        values, natural = self._route(metrics, step)
        for at, group in self._planner.place(values, natural).items():
            try:
                run.log_metrics(group, step=at)
            except RuntimeError:
                self._refuse_after_end(force=True)
                return

    @override
    def log_graph(self, model: Any, input_array: Any = None) -> None:
        """Lightning calls this with the module at the start of each stage: find the Trainer."""
        try:
            trainer = model.trainer
        except (AttributeError, RuntimeError):
            return
        if hasattr(trainer, "fit_loop"):
            self.attach_trainer(trainer)

    @override
    def after_save_checkpoint(self, checkpoint_callback: Any) -> None:
        """Note (and, with ``log_checkpoints="all"``, upload) what ModelCheckpoint saved."""
        if rank() != 0:
            return
        if not any(checkpoint_callback == known for known in self._checkpoint_callbacks):
            self._checkpoint_callbacks.append(checkpoint_callback)
        epoch, step = self._position()
        fresh = self._book.observe(checkpoint_callback, epoch, step)
        if self._refuse_after_end():
            return
        if self._target.log_checkpoints == "all":
            for saved in fresh:
                self._upload(saved)
        if self._delete_removed:
            self.delete_removed_checkpoints()

    @override
    def finalize(self, status: str) -> None:
        """Called by Lightning after each stage: flush on success, end the run on failure.

        After a SIGTERM the delivery layer left to the Trainer, the run ends KILLED (with the
        best and last checkpoints uploaded first) whatever the status; when the Trainer
        returned normally all the same, the process is then terminated as SIGTERM asked.
        """
        if rank() != 0:
            return
        lifecycle = self._lifecycle
        if lifecycle is None or lifecycle.ended:
            return
        sigterm = _sigterm_pending()
        if status == "failed" or sigterm:
            self.upload_best_and_last()
            failure = lifecycle.exception or sys.exc_info()[1]
            if failure is not None:
                self.end(*describe_exception(failure))
            elif sigterm:
                self.end("KILLED", SIGTERM_TEXT)
            else:
                self.end("FAILED", "Lightning reported a failure (no exception was available)")
            if sigterm and status != "failed":
                from deardiary_lightning.delivery import shutdown

                shutdown.complete_sigterm()
            return
        self.upload_best_and_last()
        if not lifecycle.run.flush(self._close_timeout):
            log.warning(
                "DearDiary: %d values of iteration %s are still being delivered",
                lifecycle.run.pending,
                lifecycle.run.iteration_id,
            )

    # -- user API -----------------------------------------------------------------------------

    def end(
        self,
        status: str = "SUCCEEDED",
        error_message: str | None = None,
        *,
        timeout: float | None = None,
    ) -> None:
        """End the iteration now (rank zero; elsewhere nothing happens).

        Waits, at most ``timeout`` seconds (default ``close_timeout``), for pending deliveries.
        Ending twice does nothing; an iteration that never opened is not created.

        Args:
            status: ``"SUCCEEDED"``, ``"FAILED"`` or ``"KILLED"``.
            error_message: Text to record, typically for a failure.
            timeout: Longest wait for pending deliveries.
        """
        lifecycle = self._lifecycle
        if rank() != 0 or lifecycle is None:
            return
        lifecycle.end(status, error_message, self._close_timeout if timeout is None else timeout)

    def record_exception(self, exception: BaseException) -> None:
        """Note the exception that is stopping the run (the callback's ``on_exception``)."""
        if self._lifecycle is not None:
            self._lifecycle.exception = exception

    def attach_trainer(self, trainer: Any) -> None:
        """Use this Trainer's state to tell epoch-level from step-level values."""
        current = self._trainer_ref() if self._trainer_ref is not None else None
        if current is not trainer:
            self._trainer_ref = weakref.ref(trainer)

    def log_artifact(self, path: str | os.PathLike[str], name: str | None = None) -> Future[Any]:
        """Upload a file to the run's experiment in the background, streamed.

        Args:
            path: The file.
            name: The resource name; the file name by default.

        Returns:
            A future that resolves to the resource id (rank zero; elsewhere, to ``None``).
        """
        if rank() != 0:
            done: Future[Any] = Future()
            done.set_result(None)
            return done
        return self.experiment.upload_resource(path, name=name)

    def upload_best_and_last(self) -> None:
        """With ``log_checkpoints=True``, upload the best and last checkpoints (once each)."""
        if self._target.log_checkpoints is not True or self._lifecycle is None:
            return
        for callback in self._checkpoint_callbacks:
            for attribute in ("best_model_path", "last_model_path"):
                path = getattr(callback, attribute, "") or ""
                if path:
                    self.upload_checkpoint(str(path))

    def upload_checkpoint(self, path: str) -> Future[Any] | None:
        """Upload the current version of a checkpoint file unless it already was.

        Returns:
            The upload's future (resolves to the resource id), or ``None`` off rank zero or
            when the file does not exist.
        """
        if rank() != 0 or self._refuse_after_end():
            return None
        saved = self._book.note(path, *self._position())
        if saved is None:
            return None
        if saved.upload is not None:
            return saved.upload
        return self._upload(saved)

    def delete_removed_checkpoints(self) -> int:
        """Delete the resources of uploaded checkpoints that top-k rotation removed from disk.

        Returns:
            How many deletions were queued.
        """
        if rank() != 0 or self._lifecycle is None or self._refuse_after_end():
            return 0
        run = self._lifecycle.run
        count = 0
        for callback in self._checkpoint_callbacks:
            for saved in self._book.removed(callback):
                if saved.upload is not None:
                    run.delete_resource(saved.upload)
                    count += 1
        return count

    @property
    def checkpoint_callbacks(self) -> list[Any]:
        """The ModelCheckpoint callbacks that reported saves to this logger."""
        return list(self._checkpoint_callbacks)

    def __enter__(self) -> DearDiaryLogger:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is None:
            self.end("SUCCEEDED")
        else:
            self.end(*describe_exception(exc))

    def __repr__(self) -> str:
        return (
            f"DearDiaryLogger(url={self.url!r}, project={self._target.project!r}, "
            f"experiment={self.name!r}, version={self.version!r})"
        )

    # -- internals ----------------------------------------------------------------------------

    def _route(self, metrics: Mapping[str, Any], step: int | None) -> tuple[dict[str, Any], Any]:
        """Pick the natural step of a call and the values to write (see the class docstring)."""
        prefix = self._prefix
        trainer = self._trainer_ref() if self._trainer_ref is not None else None
        lightning_call = trainer is not None and "epoch" in metrics
        if "epoch" in metrics:
            epoch = metrics["epoch"]
            with contextlib.suppress(TypeError, ValueError):
                self._epoch_seen = int(epoch)
        if step is not None:
            self._step_seen = max(self._step_seen, int(step))

        natural: int | None = step
        keep_epoch = True
        if trainer is not None:
            if _at_epoch_level(trainer, lightning_call):
                natural = int(trainer.current_epoch)
                keep_epoch = False
            elif _in_evaluation(trainer) and not lightning_call:
                natural = None

        values: dict[str, Any] = {}
        for key, value in metrics.items():
            if key == "epoch" and not keep_epoch:
                continue
            values[f"{prefix}-{key}" if prefix else key] = value
        return values, natural

    def _position(self) -> tuple[int, int]:
        """Return the current epoch and global step (from the Trainer when attached)."""
        trainer = self._trainer_ref() if self._trainer_ref is not None else None
        if trainer is not None:
            try:
                return int(trainer.current_epoch), int(trainer.global_step)
            except (AttributeError, TypeError, ValueError):
                pass
        return self._epoch_seen, self._step_seen

    def _upload(self, saved: SavedFile) -> Future[Any] | None:
        """Queue the upload of one checkpoint version."""
        lifecycle = self._lifecycle if self._lifecycle is not None else self._open()
        run = lifecycle.run
        name = resource_name(run.iteration_id, saved.epoch, saved.step, saved.path)
        try:
            staged = stage(saved.path)
        except OSError as error:
            log.warning("DearDiary: checkpoint %s not uploaded: %s", saved.path, error)
            return None
        try:
            future = run.upload_resource(staged, name=name)
        except BaseException:
            unstage(staged)
            raise
        future.add_done_callback(lambda _: unstage(staged))
        self._book.note_upload(saved, future)
        return future

    def _refuse_after_end(self, force: bool = False) -> bool:
        """Tell whether the iteration has ended; warn once when values are dropped for it."""
        lifecycle = self._lifecycle
        if not force and (lifecycle is None or not lifecycle.ended):
            return False
        if not self._warned_ended:
            self._warned_ended = True
            warnings.warn(
                f"DearDiary iteration {self.iteration_id} has ended; values logged after its end "
                "are dropped. Create a new DearDiaryLogger for a new run.",
                stacklevel=3,
            )
        return True


def _forking_trainer(frame: FrameType | None) -> Any | None:
    """Return the Trainer whose process launcher is forking, seen from an ``os.fork`` hook.

    Lightning's ``ddp_fork`` and ``ddp_notebook`` launchers fork every process of a stage from
    the launcher's ``launch(..., trainer=...)``, a few calls above ``os.fork``. Forks from
    anywhere else (data loader workers, user code) find no such frame.
    """
    for _ in range(_LAUNCH_FRAMES):
        if frame is None:
            return None
        code = frame.f_code
        if code.co_name == "launch" and "launchers" in code.co_filename:
            return frame.f_locals.get("trainer")
        frame = frame.f_back
    return None


def _open_before_fork() -> None:
    """Open the runs of a Trainer that is forking the processes of a stage (``ddp_fork``)."""
    try:
        trainer = _forking_trainer(sys._getframe(1))
        loggers = getattr(trainer, "loggers", None) or ()
        for logger in loggers:
            if isinstance(logger, DearDiaryLogger):
                logger._open_for_processes()
    except Exception:
        log.warning(
            "DearDiary: could not open the run before Lightning forked its processes; each "
            "stage may record an iteration of its own (touch logger.experiment before fit to "
            "open it earlier)",
            exc_info=True,
        )


if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=_open_before_fork)


def _stop_check(ref: weakref.ReferenceType[DearDiaryLogger]) -> Callable[[], bool]:
    """Build the SIGTERM check of a logger (it must not keep the logger alive).

    It tells whether the logger's Trainer is running and Lightning noted the SIGTERM: the
    training loop then stops after the current step, and Lightning calls ``finalize``.
    """

    def stopping() -> bool:
        trainer = _running_trainer(ref)
        return trainer is not None and bool(getattr(trainer, "received_sigterm", False))

    return stopping


def _before_sigterm_end(ref: weakref.ReferenceType[DearDiaryLogger]) -> Callable[[], None]:
    """Build the hook that queues the best and last checkpoints when SIGTERM ends the run at once.

    That happens when the Trainer is running outside its training loop (setting up, or in
    ``on_fit_end`` and the teardown hooks), where Lightning does not watch for SIGTERM and no
    checkpoint is being written. Elsewhere the hook does nothing.
    """

    def before_end() -> None:
        logger = ref()
        if logger is not None and _running_trainer(ref) is not None:
            logger.upload_best_and_last()

    return before_end


def _running_trainer(ref: weakref.ReferenceType[DearDiaryLogger]) -> Any | None:
    """Return the logger's Trainer while it runs a stage, else ``None``."""
    logger = ref()
    trainer = None
    if logger is not None and logger._trainer_ref is not None:
        trainer = logger._trainer_ref()
    status = getattr(getattr(trainer, "state", None), "status", None)
    return trainer if status == "running" else None


def _at_epoch_level(trainer: Any, lightning_call: bool) -> bool:
    """Tell whether Lightning is logging epoch-level values right now."""
    if not lightning_call:
        return False
    if _in_evaluation(trainer):
        return True
    if not getattr(trainer, "training", False):
        return False
    progress = trainer.fit_loop.epoch_progress.current
    return bool(progress.processed > progress.completed)


def _in_evaluation(trainer: Any) -> bool:
    """Tell whether the Trainer is validating or testing."""
    return bool(getattr(trainer, "validating", False) or getattr(trainer, "testing", False))


def _process_group_store() -> Any | None:
    """Return the key-value store of the default process group, when there is one."""
    try:
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
            return None
        from torch.distributed.distributed_c10d import _get_default_store

        return _get_default_store()
    except Exception:
        return None
