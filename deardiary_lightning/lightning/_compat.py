"""One place that imports Lightning: ``lightning.pytorch`` first, ``pytorch_lightning`` second.

Lightning ships as the unified ``lightning`` package and as the standalone
``pytorch_lightning`` package. The logger and the callback subclass the classes of whichever is
installed (the unified one when both are), so a ``Trainer`` of that package accepts them. Every
other module of :mod:`deardiary_lightning.lightning` takes Lightning names from here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = [
    "PACKAGE",
    "Callback",
    "Logger",
    "ModelCheckpoint",
    "SIGTERMException",
    "dummy_experiment",
    "rank",
]

if TYPE_CHECKING:
    from lightning.pytorch.callbacks import Callback, ModelCheckpoint
    from lightning.pytorch.loggers import Logger
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    PACKAGE = "lightning.pytorch"
else:
    try:
        from lightning.pytorch.callbacks import Callback, ModelCheckpoint
        from lightning.pytorch.loggers import Logger
        from lightning.pytorch.utilities.exceptions import SIGTERMException

        PACKAGE = "lightning.pytorch"
    except ImportError:  # only the standalone package is installed
        try:
            from pytorch_lightning.callbacks import Callback, ModelCheckpoint
            from pytorch_lightning.loggers import Logger
            from pytorch_lightning.utilities.exceptions import SIGTERMException
        except ImportError as error:
            msg = (
                "deardiary_lightning's logger needs PyTorch Lightning: pip install lightning "
                "(or the standalone pytorch-lightning package)"
            )
            raise ModuleNotFoundError(msg) from error

        PACKAGE = "pytorch_lightning"

from lightning_utilities.core.rank_zero import rank_zero_only


def rank() -> int:
    """Return this process's global rank as Lightning set it (0 outside distributed runs)."""
    value = getattr(rank_zero_only, "rank", 0)
    return int(value) if value is not None else 0


class _NoRun:
    """Stand-in for the run writer on ranks other than zero: every call does nothing."""

    def __getattr__(self, name: str) -> Any:
        return self._nothing

    @staticmethod
    def _nothing(*args: Any, **kwargs: Any) -> None:
        return None

    def __bool__(self) -> bool:
        return False


def dummy_experiment() -> Any:
    """Return the object ``experiment`` gives on ranks other than zero."""
    return _NoRun()
