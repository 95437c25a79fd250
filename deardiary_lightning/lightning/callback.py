"""The companion callback: Trainer-aware extras for :class:`DearDiaryLogger`.

The logger works alone. Add :class:`DearDiaryCallback` to the ``Trainer`` for:

- the exact status and error text of a stopped run: its ``on_exception`` hands the exception
  to the logger before Lightning finalizes it (KILLED for Ctrl-C and SIGTERM, FAILED with the
  traceback otherwise);
- the Trainer's state even with ``Trainer(enable_autolog_hparams=False)`` (the logger
  otherwise finds the Trainer when Lightning logs the hyperparameters), so epoch-level values
  still get the epoch as their step;
- deleting, on DearDiary, the checkpoints that top-k rotation deleted from disk
  (``delete_removed_checkpoints=True``, with ``log_checkpoints="all"``);
- registering the best checkpoint as a new version of a model in DearDiary's model registry
  when fitting ends (``register_model="name"``).
"""

from __future__ import annotations

import logging
from concurrent.futures import Future
from typing import Any

from typing_extensions import override

from deardiary_lightning.lightning._compat import Callback, rank
from deardiary_lightning.lightning.logger import DearDiaryLogger

__all__ = ["DearDiaryCallback"]

log = logging.getLogger(__name__)


class DearDiaryCallback(Callback):
    """Trainer-aware extras for every :class:`DearDiaryLogger` of the Trainer.

    Args:
        register_model: Register the best checkpoint (``trainer.checkpoint_callback``'s
            ``best_model_path``, else its last one) as a new version of this model when
            ``fit`` ends; the model is created in the project if needed.
        model_description: Description of the registered version.
        delete_removed_checkpoints: Delete the resources of uploaded checkpoints once the
            checkpoint callback's top-k rotation has deleted their files.

    Raises:
        ValueError: ``register_model`` is an empty name.

    Example::

        trainer = Trainer(
            logger=DearDiaryLogger(log_checkpoints="all"),
            callbacks=[ModelCheckpoint(monitor="val_loss", save_top_k=2),
                       DearDiaryCallback(register_model="digits-mlp",
                                         delete_removed_checkpoints=True)],
        )
    """

    def __init__(
        self,
        register_model: str | None = None,
        model_description: str | None = None,
        delete_removed_checkpoints: bool = False,
    ) -> None:
        if register_model is not None and not register_model:
            msg = "register_model must be a non-empty model name (or None to register nothing)"
            raise ValueError(msg)
        self.register_model = register_model
        self.model_description = model_description
        self.delete_removed_checkpoints = delete_removed_checkpoints
        self.registered: Future[Any] | None = None

    @override
    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        """Hand the Trainer to the DearDiary loggers."""
        loggers = _loggers(trainer)
        if not loggers:
            log.warning("DearDiaryCallback: the Trainer has no DearDiaryLogger; nothing to do")
        for logger in loggers:
            logger.attach_trainer(trainer)
            if self.delete_removed_checkpoints:
                logger._delete_removed = True

    @override
    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        """Tell the loggers what stopped the run, before Lightning finalizes them."""
        for logger in _loggers(trainer):
            logger.record_exception(exception)

    @override
    def on_fit_end(self, trainer: Any, pl_module: Any) -> None:
        """Delete rotated-out checkpoints and register the best one (rank zero)."""
        if rank() != 0:
            return
        for logger in _loggers(trainer):
            if self.delete_removed_checkpoints:
                logger.delete_removed_checkpoints()
            if self.register_model is not None:
                self.registered = self._register(trainer, logger)

    def _register(self, trainer: Any, logger: DearDiaryLogger) -> Future[Any] | None:
        """Register the best (else the last) checkpoint as a model version."""
        checkpoint = getattr(trainer, "checkpoint_callback", None)
        path = ""
        if checkpoint is not None:
            path = checkpoint.best_model_path or checkpoint.last_model_path or ""
        if not path:
            log.warning(
                "DearDiaryCallback: no checkpoint to register as model %r: the Trainer saved none",
                self.register_model,
            )
            return None
        upload = logger.upload_checkpoint(str(path))
        if upload is None:
            return None
        assert self.register_model is not None
        description = (
            self.model_description or f"best checkpoint of iteration {logger.iteration_id}"
        )
        return logger.experiment.register_model_version(
            self.register_model, upload, description=description
        )


def _loggers(trainer: Any) -> list[DearDiaryLogger]:
    """Return the Trainer's DearDiary loggers."""
    return [lg for lg in getattr(trainer, "loggers", []) if isinstance(lg, DearDiaryLogger)]
