"""Closing open run writers when the process ends: ``atexit`` and SIGTERM.

Every open :class:`~deardiary_lightning.delivery.writer.RunWriter` is registered here. At
interpreter exit each one is closed (a bounded wait, see ``close_timeout``). On SIGTERM the
handler closes them too and then hands the signal on to the handler that was installed before
(Lightning's, for example); when that was the default action, the writers first end their
iterations as KILLED, since nothing else will, and the process then terminates as it would have.
The handler is installed once, from the main thread, the first time a writer opens.

A program that stops by itself on SIGTERM (a Lightning ``Trainer``: it finishes the current
step, reports the stop to its loggers, and those upload their last checkpoints and end their
runs) registers a check with :func:`add_stop_check`. When a check says such a stop is under way,
the handler leaves the writers open and only notes the signal; the process is then terminated
by SIGTERM, as before, at the first of: interpreter exit, :func:`complete_sigterm` (called by a
program that knows it will not stop by itself), a second SIGTERM, or ``LOOP_GRACE`` seconds plus
the writers' ``close_timeout`` after the signal. Writers still open then end KILLED.
A check may come with a ``before_end`` callable: when the handler ends the writers at once (no
stop under way), it runs first, so that its owner can queue its last uploads.
"""

from __future__ import annotations

import atexit
import logging
import os
import signal
import threading
from collections.abc import Callable
from typing import Any, Protocol

__all__ = [
    "LOOP_GRACE",
    "add_stop_check",
    "complete_sigterm",
    "register",
    "remove_stop_check",
    "sigterm_pending",
    "unregister",
]

logger = logging.getLogger(__name__)


#: Seconds a program that stops by itself gets to reach its stopping point after SIGTERM.
LOOP_GRACE = 30.0


class _Closable(Protocol):
    def close(self, timeout: float | None = None) -> None: ...

    def end(self, status: Any, *, error_message: str | None = None) -> None: ...


_lock = threading.Lock()
_writers: dict[int, _Closable] = {}
_installed = False
_previous: Any = None
_checks: dict[int, tuple[Callable[[], bool], Callable[[], None] | None]] = {}
_pending = False
_completing = False
_watchdog: threading.Timer | None = None


def _forget_after_fork() -> None:
    """In a forked child: the parent's writers are not this process's (their threads stayed)."""
    global _lock, _pending, _completing, _watchdog
    _lock = threading.Lock()  # another thread may have held it when the process forked
    _writers.clear()
    _checks.clear()
    _pending = _completing = False
    _watchdog = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_after_fork)


def register(writer: _Closable) -> None:
    """Track an open writer; installs the exit and signal hooks on first use."""
    global _installed
    with _lock:
        _writers[id(writer)] = writer
        if _installed:
            return
        _installed = True
    atexit.register(_close_all)
    _install_sigterm()


def unregister(writer: _Closable) -> None:
    """Forget a closed writer."""
    with _lock:
        _writers.pop(id(writer), None)


def add_stop_check(check: Callable[[], bool], before_end: Callable[[], None] | None = None) -> None:
    """Register a check that tells whether the program is stopping by itself on this SIGTERM.

    Args:
        check: Runs inside the SIGTERM handler (main thread), after the handlers installed
            later than this module's (Lightning's, which notes the signal for its training
            loop). When it returns true, the writers stay open for the program to finish
            them; see the module.
        before_end: Runs inside the handler when it ends the writers at once (every check
            returned false), before they end; it must only queue work, never wait.
    """
    with _lock:
        _checks[id(check)] = (check, before_end)


def remove_stop_check(check: Callable[[], bool]) -> None:
    """Forget a check registered with :func:`add_stop_check`."""
    with _lock:
        _checks.pop(id(check), None)


def sigterm_pending() -> bool:
    """Tell whether a SIGTERM was received and left to the program, which must now stop."""
    return _pending


def _open_writers() -> list[_Closable]:
    with _lock:
        return list(_writers.values())


def _close_all() -> None:
    """Close every open writer (at interpreter exit); finish a SIGTERM left to the program."""
    if _pending:
        complete_sigterm()
        return
    for writer in _open_writers():
        try:
            writer.close()
        except Exception:  # keep closing the others
            logger.exception("closing a DearDiary run writer at exit failed")


def _install_sigterm() -> None:
    """Chain our SIGTERM handler in front of the current one (main thread only)."""
    global _previous
    if threading.current_thread() is not threading.main_thread():
        return
    try:
        _previous = signal.getsignal(signal.SIGTERM)
        signal.signal(signal.SIGTERM, _on_sigterm)
    except (ValueError, OSError):  # pragma: no cover - embedded interpreters
        _previous = None


def _stopping_by_itself() -> bool:
    """Ask the registered checks whether the program is stopping on this SIGTERM by itself."""
    with _lock:
        checks = [check for check, _ in _checks.values()]
    for check in checks:
        try:
            if check():
                return True
        except Exception:
            logger.exception("a SIGTERM stop check failed; the runs are ended now")
            return False
    return False


def _on_sigterm(signum: int, frame: Any) -> None:
    """Flush the writers, then do what the previous handler would have done."""
    previous = _previous
    terminal = previous in (signal.SIG_DFL, None)
    if terminal and (_pending or _completing):
        # A second SIGTERM, or the grace period is over: stop now.
        complete_sigterm()
        return
    if terminal and _stopping_by_itself():
        _defer()
        return
    logger.warning("SIGTERM received: flushing DearDiary runs before stopping")
    if terminal:
        _run_before_end()
    for writer in _open_writers():
        try:
            if terminal:
                writer.end("KILLED", error_message="terminated by SIGTERM")
            writer.close()
        except Exception:
            logger.exception("closing a DearDiary run writer on SIGTERM failed")
    if callable(previous):
        previous(signum, frame)
    elif previous == signal.SIG_IGN:
        return
    else:
        _terminate()


def _run_before_end() -> None:
    """Run the ``before_end`` callables of the registered checks."""
    with _lock:
        hooks = [hook for _, hook in _checks.values() if hook is not None]
    for hook in hooks:
        try:
            hook()
        except Exception:
            logger.exception("a DearDiary SIGTERM hook failed; the runs are ended anyway")


def _defer() -> None:
    """Leave the writers to the program that is stopping, and bound how long that may take."""
    global _pending, _watchdog
    _pending = True
    limit = LOOP_GRACE + max(
        (float(getattr(writer, "close_timeout", 60.0)) for writer in _open_writers()),
        default=0.0,
    )
    logger.warning(
        "SIGTERM received: the training loop stops at its next step and the DearDiary runs end "
        "after it (the process terminates within %.0f s)",
        limit,
    )
    _watchdog = threading.Timer(limit, _signal_main_thread)
    _watchdog.name = "deardiary-sigterm-watchdog"
    _watchdog.daemon = True
    _watchdog.start()


def _signal_main_thread() -> None:
    """Deliver SIGTERM again: the grace period is over (the handler then stops the process)."""
    if _pending and not _completing:
        logger.warning("the program did not stop within its SIGTERM grace period; stopping now")
        signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGTERM)


def complete_sigterm() -> None:
    """Finish a SIGTERM left to the program: end open writers KILLED, close them, terminate.

    Call it from the main thread once the program has done what it had to do on SIGTERM; it
    does not return. Outside a pending SIGTERM it does nothing.
    """
    global _completing
    if not _pending or _completing:
        return
    _completing = True
    if _watchdog is not None:
        _watchdog.cancel()
    for writer in _open_writers():
        try:
            writer.end("KILLED", error_message="terminated by SIGTERM")
            writer.close()
        except Exception:
            logger.exception("closing a DearDiary run writer on SIGTERM failed")
    _terminate()


def _terminate() -> None:
    """Terminate the process by SIGTERM's default action (its exit status says so)."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGTERM)
