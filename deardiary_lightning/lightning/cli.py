"""LightningCLI support: save the run's config in its own directory and record it with the run.

Lightning's ``SaveConfigCallback`` writes ``config.yaml`` to ``trainer.log_dir``, which for
loggers other than TensorBoard and CSV is the logger's ``save_dir``: shared by every run, so
the second run stops with "expected config.yaml to NOT exist". Pass
:class:`DearDiarySaveConfigCallback` instead::

    LightningCLI(Model, DataModule, save_config_callback=DearDiarySaveConfigCallback)

With a :class:`~deardiary_lightning.lightning.DearDiaryLogger` as the Trainer's first logger it
writes ``config.yaml`` to the logger's ``log_dir`` (one directory per run), uploads it as the
resource ``iteration=<id>-config.yaml`` and records every value as a parameter under
``config/`` (``config/trainer/max_epochs``, ``config/model/init_args/lr``, ...). Values of keys
named like secrets (``password``, ``token``, ...) are written as ``***`` in both. With another
first logger it behaves as Lightning's own callback.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from typing_extensions import override

from deardiary_lightning.lightning._compat import PACKAGE
from deardiary_lightning.lightning.hparams import MASK, flatten_hparams, is_secret_key
from deardiary_lightning.lightning.logger import DearDiaryLogger

if TYPE_CHECKING or PACKAGE == "lightning.pytorch":
    from lightning.pytorch.cli import SaveConfigCallback
else:  # only the standalone package is installed
    from pytorch_lightning.cli import SaveConfigCallback

__all__ = ["DearDiarySaveConfigCallback", "masked_config"]


def masked_config(config: Any) -> Any:
    """Return a copy of a jsonargparse config with secret values replaced by ``***``.

    Args:
        config: The ``jsonargparse.Namespace`` LightningCLI parsed.

    Returns:
        A clone; the original is left untouched.
    """
    clone = config.clone()
    _mask(clone)
    return clone


def _mask(node: Any) -> None:
    """Mask secrets in place in a Namespace, dict or list tree."""
    from jsonargparse import Namespace

    if isinstance(node, Namespace):
        for key in list(vars(node)):
            value = getattr(node, key)
            if is_secret_key(key) and value is not None and not _is_container(value):
                setattr(node, key, MASK)
            else:
                _mask(value)
    elif isinstance(node, dict):
        for key in list(node):
            value = node[key]
            if is_secret_key(str(key)) and value is not None and not _is_container(value):
                node[key] = MASK
            else:
                _mask(value)
    elif isinstance(node, list):
        for item in node:
            _mask(item)


def _is_container(value: Any) -> bool:
    """Tell whether a config value holds further values."""
    from jsonargparse import Namespace

    return isinstance(value, (Namespace, dict, list))


class DearDiarySaveConfigCallback(SaveConfigCallback):
    """Save the LightningCLI config per run and record it with the DearDiary run.

    Takes the same arguments as Lightning's ``SaveConfigCallback`` (set them with
    ``LightningCLI(save_config_kwargs=...)``).
    """

    @override
    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        """Write, upload and record the config once (rank zero), then sync the ranks."""
        loggers = getattr(trainer, "loggers", [])
        logger = loggers[0] if loggers else None
        if not isinstance(logger, DearDiaryLogger):
            super().setup(trainer, pl_module, stage)
            return
        if self.already_saved:
            return

        if trainer.is_global_zero:
            masked = masked_config(self.config)
            text = self.parser.dump(masked, skip_validation=True)
            folder = logger.log_dir
            os.makedirs(folder, exist_ok=True)
            path = os.path.join(folder, self.config_filename)
            with open(path, "w", encoding="utf-8") as stream:
                stream.write(text)
            record_config(logger, path, masked.as_dict())
            self.save_config(trainer, pl_module, stage)
            self.already_saved = True

        self.already_saved = trainer.strategy.broadcast(self.already_saved)


def record_config(logger: DearDiaryLogger, path: str, config: dict[str, Any]) -> None:
    """Upload a config file and record its values as ``config/...`` parameters.

    Args:
        logger: The run's logger (rank zero).
        path: The saved config file.
        config: The config as plain containers, secrets already masked.
    """
    run = logger.experiment
    name = f"iteration={run.iteration_id}-{os.path.basename(path)}"
    logger.log_artifact(path, name=name)
    flat = flatten_hparams({"config": config})
    if flat:
        run.log_parameters(flat)
