"""The logger without a Trainer: construction, identity, pickling, settings, secrets."""

from __future__ import annotations

import inspect
import pickle
import socket
from pathlib import Path

import pytest
from lightning.pytorch.loggers import Logger

import deardiary_lightning as dd
from deardiary_lightning.lightning import DearDiaryLogger
from deardiary_lightning.lightning.logger import describe_exception
from deardiary_lightning.settings import DearDiarySettingsError
from tests.lightning._models import parameters


def _unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def test_building_the_logger_touches_nothing(tmp_path: Path):
    unreachable = f"http://127.0.0.1:{_unused_port()}"
    logger = DearDiaryLogger(url=unreachable, project="p", experiment="e", password="pw")
    assert isinstance(logger, Logger)
    assert (logger.name, logger.save_dir) == ("e", "lightning_logs")
    assert logger.version.startswith("run-") and len(logger.version) == 16
    assert logger.log_dir == str(Path("lightning_logs") / "e" / logger.version)
    assert logger.root_dir == str(Path("lightning_logs") / "e")
    assert logger.iteration_id is None and not logger.ended
    assert list(tmp_path.iterdir()) == []  # no store, no log directory, nothing


def test_identity_is_stable_and_survives_pickling():
    logger = DearDiaryLogger(project="p", experiment="e", tags=["a"], save_dir="runs")
    values = (logger.name, logger.version, logger.save_dir, logger.log_dir)
    assert values == (logger.name, logger.version, logger.save_dir, logger.log_dir)

    copy = pickle.loads(pickle.dumps(logger))
    assert (copy.name, copy.version, copy.save_dir, copy.log_dir) == values
    assert DearDiaryLogger().version != logger.version


def test_pickling_an_open_logger_hands_its_iteration_over(local):
    logger = DearDiaryLogger(**local.logger_args(experiment="e"))
    logger.log_metrics({"a": 1.0}, step=0)
    copy = pickle.loads(pickle.dumps(logger))
    assert copy.iteration_id == logger.iteration_id and copy.version == logger.version

    copy.log_metrics({"a": 2.0}, step=1)  # the copy resumes the same iteration
    copy.log_metrics({"a": 2.0}, step=1)
    del copy  # a copy that did not create the iteration does not end it
    import gc

    gc.collect()
    client = local.client()
    iteration = client.get_iteration(logger.iteration_id)
    assert iteration is not None and iteration.status is dd.IterationStatus.RUNNING
    logger.end()
    assert [(m.step, m.value) for m in client.get_metrics(logger.iteration_id)] == [
        (0, 1.0),
        (1, 2.0),
    ]


def test_arguments_are_typed_for_lightning_cli():
    signature = inspect.signature(DearDiaryLogger.__init__)
    empty = inspect.Parameter.empty
    missing = [n for n, p in signature.parameters.items() if p.annotation is empty]
    assert missing == ["self"]


def test_bad_checkpoint_mode_is_refused_at_once():
    with pytest.raises(ValueError, match=r"use false .* true .* or all"):
        DearDiaryLogger(log_checkpoints="sometimes")  # type: ignore[arg-type]


def test_settings_fill_what_the_arguments_leave_open(monkeypatch: pytest.MonkeyPatch, tmp_path):
    monkeypatch.setenv("DEARDIARY_PROJECT", "from-env")
    monkeypatch.setenv("DEARDIARY_EXPERIMENT", "exp-env")
    monkeypatch.setenv("DEARDIARY_STORE", str(tmp_path / "envstore"))
    monkeypatch.setenv("DEARDIARY_ITERATION_ID", "17")
    logger = DearDiaryLogger(experiment="exp-arg")
    assert logger.name == "exp-arg"
    assert logger.version == "17"
    assert logger.url == str(tmp_path / "envstore")


def test_a_bad_setting_names_its_variable(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("DEARDIARY_LOG_CHECKPOINTS", "often")
    logger = DearDiaryLogger()
    with pytest.raises(DearDiarySettingsError, match="DEARDIARY_LOG_CHECKPOINTS"):
        _ = logger.name


def test_repr_and_parameters_never_show_secrets(local, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr("sys.argv", ["train.py", "--password", "hunter2"])
    logger = DearDiaryLogger(
        **local.logger_args(experiment="e", url="http://me:hunter2@127.0.0.1:1")
    )
    assert "hunter2" not in repr(logger) and "hunter2" not in logger.url

    local_logger = DearDiaryLogger(**local.logger_args(experiment="e"), password="hunter2")
    local_logger.log_hyperparams({"db": {"password": "hunter2"}})
    local_logger.end()
    params = parameters(local.client(), local_logger.iteration_id)
    assert "hunter2" not in repr(params)
    assert params["db/password"] == ["***"]


def test_exceptions_map_to_statuses():
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    assert describe_exception(KeyboardInterrupt())[0] == "KILLED"
    assert describe_exception(SIGTERMException())[0] == "KILLED"
    assert describe_exception(SystemExit(1))[0] == "KILLED"
    status, text = describe_exception(ValueError("x" * 20000))
    assert status == "FAILED" and len(text) <= 8000 and text.endswith("x")


def test_finalize_without_a_run_does_nothing(tmp_path: Path):
    logger = DearDiaryLogger(url=str(tmp_path / "store"))
    logger.finalize("success")
    logger.finalize("failed")
    logger.end()
    assert not (tmp_path / "store").exists()
