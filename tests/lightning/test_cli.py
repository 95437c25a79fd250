"""LightningCLI: the logger from YAML, the config saved per run and recorded with the run."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from lightning.pytorch.cli import LightningCLI

import deardiary_lightning as dd
from deardiary_lightning.lightning import DearDiaryLogger, DearDiarySaveConfigCallback
from tests.lightning._models import TinyData, TinyModel, parameters, steps


def write_config(path: Path, store: Path) -> Path:
    config = {
        "seed_everything": 7,
        "trainer": {
            "max_epochs": 2,
            "accelerator": "cpu",
            "devices": 1,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "log_every_n_steps": 1,
            "num_sanity_val_steps": 0,
            "logger": {
                "class_path": "deardiary_lightning.lightning.DearDiaryLogger",
                "init_args": {
                    "url": str(store),
                    "project": "cli",
                    "experiment": "tiny",
                    "tags": ["cli", "yaml"],
                    "log_checkpoints": "all",
                    "password": "hunter2",
                },
            },
        },
        "model": {"lr": 0.1, "hidden": 6},
    }
    path.write_text(yaml.safe_dump(config))
    return path


def run_cli(config: Path) -> LightningCLI:
    return LightningCLI(
        TinyModel,
        TinyData,
        save_config_callback=DearDiarySaveConfigCallback,
        args=["fit", "--config", str(config)],
    )


def test_two_cli_runs_from_one_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr("sys.argv", ["cli.py"])
    store = tmp_path / "store"
    config = write_config(tmp_path / "config.yaml", store)
    first, second = run_cli(config), run_cli(config)  # no "config.yaml exists" on the second
    loggers = [first.trainer.logger, second.trainer.logger]
    assert all(isinstance(lg, DearDiaryLogger) for lg in loggers)
    for logger in loggers:
        logger.end()  # type: ignore[union-attr]

    client = dd.connect(str(store))
    for logger in loggers:
        assert isinstance(logger, DearDiaryLogger)
        iteration = client.get_iteration(logger.iteration_id)
        assert iteration is not None and iteration.status is dd.IterationStatus.SUCCEEDED
        assert {t.value for t in client.get_tags(iteration.id)} == {"cli", "yaml"}
        assert steps(client, iteration.id)["val_loss"] == [0, 1]

        params = parameters(client, iteration.id)
        assert params["lr"] == ["0.1"] and params["hidden"] == ["6"]
        assert params["config/trainer/max_epochs"] == ["2"]
        assert params["config/model/lr"] == ["0.1"]
        assert params["config/trainer/logger/init_args/password"] == ["***"]
        assert "hunter2" not in repr(params)

        saved = Path(logger.log_dir) / "config.yaml"
        assert "hunter2" not in saved.read_text()
        resources = {r.name: r for r in client.get_resources(iteration.experiment_id)}
        uploaded = resources[f"iteration={iteration.id}-config.yaml"]
        assert client.read_resource_data(uploaded.id) == saved.read_bytes()
        assert yaml.safe_load(saved.read_text())["model"]["lr"] == 0.1
