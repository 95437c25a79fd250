"""Train the digits MLP from a LightningCLI config, with DearDiary as the Trainer's logger.

Run it from the repository root::

    python examples/cli_train.py fit --config examples/config.yaml

Everything is in ``config.yaml``: the logger (``deardiary_lightning.lightning.DearDiaryLogger``
with its arguments), the callbacks and the model. The config itself is saved in the run's own
directory and recorded with the run (as the resource ``iteration=<id>-config.yaml`` and as
``config/...`` parameters). Override anything on the command line, e.g.
``--model.lr 0.01 --trainer.logger.init_args.experiment cli-lr``.
"""

from __future__ import annotations

from digits import DigitsData, DigitsMLP
from lightning.pytorch.cli import LightningCLI

from deardiary_lightning.lightning import DearDiaryLogger, DearDiarySaveConfigCallback


def main() -> None:
    cli = LightningCLI(
        DigitsMLP,
        DigitsData,
        save_config_callback=DearDiarySaveConfigCallback,
    )
    logger = cli.trainer.logger
    if isinstance(logger, DearDiaryLogger):
        logger.end()
        print(f"run recorded at {logger.url}: iteration {logger.iteration_id!r}")


if __name__ == "__main__":
    main()
