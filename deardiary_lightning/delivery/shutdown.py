"""Closing open run writers when the process ends: ``atexit`` and SIGTERM.

Every open :class:`~deardiary_lightning.delivery.writer.RunWriter` is registered here. At
interpreter exit each one is closed (a bounded wait, see ``close_timeout``). On SIGTERM the
handler closes them too and then hands the signal on to the handler that was installed before
(Lightning's, for example); when that was the default action, the writers first end their
iterations as KILLED, since nothing else will, and the process then terminates as it would have.
The handler is installed once, from the main thread, the first time a writer opens.
"""

from __future__ import annotations

import atexit
import logging
import os
import signal
import threading
from typing import Any, Protocol

__all__ = ["register", "unregister"]

logger = logging.getLogger(__name__)


class _Closable(Protocol):
    def close(self, timeout: float | None = None) -> None: ...

    def end(self, status: Any, *, error_message: str | None = None) -> None: ...


_lock = threading.Lock()
_writers: dict[int, _Closable] = {}
_installed = False
_previous: Any = None


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


def _open_writers() -> list[_Closable]:
    with _lock:
        return list(_writers.values())


def _close_all() -> None:
    """Close every open writer (at interpreter exit)."""
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


def _on_sigterm(signum: int, frame: Any) -> None:
    """Flush the writers, then do what the previous handler would have done."""
    previous = _previous
    terminal = previous in (signal.SIG_DFL, None)
    logger.warning("SIGTERM received: flushing DearDiary runs before stopping")
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
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)
