"""End to end with a real Trainer, on the local store and on the test server."""

from __future__ import annotations

import gc
import math
import platform
from pathlib import Path

import pytest
from lightning.pytorch import Trainer

import deardiary_lightning as dd
from deardiary_lightning.lightning import DearDiaryCallback, DearDiaryLogger
from tests.deardiary_server import FaultRule
from tests.lightning._models import (
    BATCHES,
    TinyModel,
    loader,
    parameters,
    series,
    steps,
    trainer_kwargs,
)

EPOCHS = 3
VAL_BATCHES = 2  # loader(20, 10)


def fit_and_test(logger: DearDiaryLogger, **trainer: object) -> TinyModel:
    model = TinyModel()
    run = Trainer(logger=logger, **trainer_kwargs(max_epochs=EPOCHS, **trainer))
    run.fit(model, loader(), loader(20, seed=1))
    run.test(model, loader(20, seed=2))
    return model


def only_iteration(client: dd.Client, experiment: str = "e") -> dd.Iteration:
    (project,) = client.get_projects()
    (exp,) = [x for x in client.get_experiments(project.id) if x.name == experiment]
    (iteration,) = client.get_iterations(exp.id)
    return iteration


def test_fit_then_test_land_in_one_iteration(destination):
    logger = DearDiaryLogger(**destination.logger_args(project="p", experiment="e"))
    fit_and_test(logger)
    logger.end()

    client = destination.client()
    iteration = only_iteration(client)
    assert iteration.id == logger.iteration_id
    assert iteration.status is dd.IterationStatus.SUCCEEDED and iteration.ended
    found = steps(client, iteration.id)

    for key in ("loss_epoch", "train_mae", "val_loss"):
        assert found[key] == list(range(EPOCHS)), key
    assert found["loss_step"] == list(range(EPOCHS * BATCHES))
    assert found["val_batch_loss"] == list(range(EPOCHS * VAL_BATCHES))
    assert found["test_loss"] == [EPOCHS]
    epochs = series(client, iteration.id)["epoch"]
    assert epochs == [(s, float(s // BATCHES)) for s in range(EPOCHS * BATCHES)]
    for key, points in found.items():
        assert len(points) == len(set(points)), f"{key} has two points at one step"

    params = parameters(client, iteration.id)
    assert params["lr"] == ["0.05"] and params["hidden"] == ["8"]
    assert params["fail_at_step"] == ["-1"]
    assert params["run/key"] == [logger.run_key]
    assert params["env/python"][0].startswith(platform.python_version())
    assert all(len(values) == 1 for values in params.values()), params


def test_values_match_what_lightning_logged(local):
    logger = DearDiaryLogger(**local.logger_args(experiment="e"))
    model = TinyModel()
    trainer = Trainer(logger=logger, **trainer_kwargs(max_epochs=2))
    trainer.fit(model, loader(), loader(20, seed=1))
    logger.end()

    found = series(local.client(), logger.iteration_id)
    last_val = found["val_loss"][-1]
    assert last_val[0] == 1
    assert math.isclose(last_val[1], float(trainer.callback_metrics["val_loss"]), rel_tol=1e-6)


def test_hyperparameters_are_upserted(local):
    logger = DearDiaryLogger(**local.logger_args(experiment="e"))
    fit_and_test(logger)
    logger.log_hyperparams({"lr": 0.5, "extra": {"depth": 2, "act": None}})
    logger.end()

    params = parameters(local.client(), logger.iteration_id)
    assert params["lr"] == ["0.5"]
    assert params["extra/depth"] == ["2"] and params["extra/act"] == ["None"]


def test_validate_twice_after_fit_never_collides(local):
    logger = DearDiaryLogger(**local.logger_args(experiment="e"))
    model = TinyModel()
    trainer = Trainer(logger=logger, **trainer_kwargs(max_epochs=2))
    trainer.fit(model, loader(), loader(20, seed=1))
    trainer.validate(model, loader(20, seed=1))
    trainer.validate(model, loader(20, seed=1))  # the same value again: a repeat, skipped
    trainer.validate(model, loader(20, seed=3))  # another value at epoch 2: next free step
    logger.end()

    found = steps(local.client(), logger.iteration_id)
    assert found["val_loss"] == [0, 1, 2, 3]
    assert found["val_batch_loss"] == list(range(5 * VAL_BATCHES))


def test_failure_ends_failed_with_the_error(destination):
    logger = DearDiaryLogger(**destination.logger_args(experiment="e"))
    model = TinyModel(fail_at_step=6)
    trainer = Trainer(logger=logger, **trainer_kwargs())
    with pytest.raises(ValueError, match="boom at step 6"):
        trainer.fit(model, loader(), loader(20, seed=1))

    client = destination.client()
    iteration = client.get_iteration(logger.iteration_id)
    assert iteration is not None and iteration.status is dd.IterationStatus.FAILED
    assert iteration.ended
    assert "ValueError: boom at step 6" in iteration.error_message
    assert "training_step" in iteration.error_message
    assert steps(client, iteration.id)["loss_step"] == list(range(6))
    assert steps(client, iteration.id)["loss_epoch"] == [0]

    with pytest.warns(UserWarning, match="has ended"):
        logger.log_metrics({"late": 1.0}, step=100)
    assert "late" not in steps(client, iteration.id)


@pytest.mark.parametrize("with_callback", [True, False], ids=["callback", "logger-alone"])
def test_ctrl_c_ends_killed(destination, with_callback):
    logger = DearDiaryLogger(**destination.logger_args(experiment="e"))
    model = TinyModel()
    model.interrupt_at_step = 5
    callbacks = [DearDiaryCallback()] if with_callback else []
    trainer = Trainer(logger=logger, callbacks=callbacks, **trainer_kwargs())
    with pytest.raises(SystemExit):  # Lightning exits after a graceful shutdown
        trainer.fit(model, loader(), loader(20, seed=1))

    client = destination.client()
    iteration = client.get_iteration(logger.iteration_id)
    assert iteration is not None and iteration.status is dd.IterationStatus.KILLED
    assert "KeyboardInterrupt" in iteration.error_message
    assert steps(client, iteration.id)["loss_step"] == list(range(5))


def test_end_and_context_manager(local):
    with DearDiaryLogger(**local.logger_args(experiment="e")) as logger:
        logger.log_metrics({"x": 1.0})
    client = local.client()
    iteration = client.get_iteration(logger.iteration_id)
    assert iteration is not None and iteration.status is dd.IterationStatus.SUCCEEDED

    failing = DearDiaryLogger(**local.logger_args(experiment="e"))
    with pytest.raises(RuntimeError), failing:
        failing.log_metrics({"x": 1.0})
        raise RuntimeError("broken data")
    iteration = client.get_iteration(failing.iteration_id)
    assert iteration is not None and iteration.status is dd.IterationStatus.FAILED
    assert "RuntimeError: broken data" in iteration.error_message


def test_garbage_collected_logger_ends_its_iteration(local):
    logger = DearDiaryLogger(**local.logger_args(experiment="e"))
    fit_and_test(logger)
    iteration_id = logger.iteration_id
    client = local.client()
    assert client.get_iteration(iteration_id).status is dd.IterationStatus.RUNNING  # type: ignore[union-attr]

    del logger
    gc.collect()
    iteration = client.get_iteration(iteration_id)
    assert iteration is not None and iteration.status is dd.IterationStatus.SUCCEEDED


@pytest.mark.filterwarnings("ignore:The dirpath has changed:UserWarning")
def test_resume_continues_every_series(destination, tmp_path: Path):
    first = DearDiaryLogger(**destination.logger_args(experiment="e"))
    model = TinyModel()
    trainer = Trainer(logger=first, **trainer_kwargs(max_epochs=2))
    trainer.fit(model, loader(), loader(20, seed=1))
    checkpoint = trainer.checkpoint_callback.best_model_path  # type: ignore[union-attr]
    iteration_id = first.iteration_id
    first.experiment.close()  # the process dies: delivered, but the iteration is not ended

    second = DearDiaryLogger(**destination.logger_args(experiment="e", iteration_id=iteration_id))
    assert second.version == str(iteration_id)
    trainer = Trainer(logger=second, **trainer_kwargs(max_epochs=4))
    trainer.fit(TinyModel(), loader(), loader(20, seed=1), ckpt_path=checkpoint)
    second.end()

    client = destination.client()
    iteration = only_iteration(client)
    assert iteration.id == iteration_id and iteration.status is dd.IterationStatus.SUCCEEDED
    found = steps(client, iteration_id)
    assert found["val_loss"] == [0, 1, 2, 3]
    assert found["loss_epoch"] == [0, 1, 2, 3]
    assert found["loss_step"] == list(range(4 * BATCHES))
    assert found["val_batch_loss"] == list(range(4 * VAL_BATCHES))
    assert parameters(client, iteration_id)["lr"] == ["0.05"]


def test_resume_without_checkpoint_appends_after_the_last_steps(local):
    first = DearDiaryLogger(**local.logger_args(experiment="e"))
    Trainer(logger=first, **trainer_kwargs(max_epochs=2)).fit(TinyModel(), loader())
    iteration_id = first.iteration_id
    first.experiment.close()

    second = DearDiaryLogger(**local.logger_args(experiment="e", iteration_id=iteration_id))
    Trainer(logger=second, **trainer_kwargs(max_epochs=2)).fit(TinyModel(), loader())
    second.end()

    found = steps(local.client(), iteration_id)
    assert found["loss_epoch"] == [0, 1, 2, 3]
    assert found["loss_step"] == list(range(4 * BATCHES))


def test_without_trainer_state_steps_are_the_given_ones(local):
    logger = DearDiaryLogger(**local.logger_args(experiment="e"))
    trainer = Trainer(logger=logger, **trainer_kwargs(enable_autolog_hparams=False))
    trainer.fit(TinyModel(), loader(), loader(20, seed=1))
    logger.end()

    found = steps(local.client(), logger.iteration_id)
    last_steps = [BATCHES * (e + 1) - 1 for e in range(EPOCHS)]
    assert found["val_loss"] == last_steps
    assert found["epoch"] == list(range(EPOCHS * BATCHES))  # the repeat at epoch end is skipped


def test_callback_gives_trainer_state_without_autolog(local):
    logger = DearDiaryLogger(**local.logger_args(experiment="e"))
    trainer = Trainer(
        logger=logger,
        callbacks=[DearDiaryCallback()],
        **trainer_kwargs(enable_autolog_hparams=False),
    )
    trainer.fit(TinyModel(), loader(), loader(20, seed=1))
    logger.end()

    found = steps(local.client(), logger.iteration_id)
    assert found["val_loss"] == list(range(EPOCHS))
    assert "lr" not in parameters(local.client(), logger.iteration_id)


def test_prefix_and_direct_calls(local):
    logger = DearDiaryLogger(**local.logger_args(experiment="e", prefix="run1"))
    logger.log_metrics({"a": 1.0})
    logger.log_metrics({"a": 2.0})
    logger.log_metrics({"a": 3.0}, step=10)
    logger.log_metrics({"a": 3.0}, step=10)  # the same point again: skipped
    logger.log_metrics({"a": 4.0}, step=5)  # behind the series: appended after it
    logger.end()

    found = series(local.client(), logger.iteration_id)
    assert found == {"run1-a": [(0, 1.0), (1, 2.0), (10, 3.0), (11, 4.0)]}


def test_flaky_server_loses_and_doubles_nothing(deardiary_server, tmp_path: Path):
    # The first metric batches lose their answer after the server applied them, the next
    # metric and parameter requests fail with 503 first, then a fifth of the metric requests
    # lose their answer: every point must still land exactly once. The counted rules fire
    # whatever the timing, so the test always exercises both faults.
    deardiary_server.add_fault(FaultRule(kind="drop_after", count=2, path="/batch"))
    deardiary_server.add_fault(
        FaultRule(kind="status", status=503, count=3, path="^/(metric|parameter)/")
    )
    deardiary_server.add_fault(FaultRule(kind="drop_after", probability=0.2, path="/metric"))
    logger = DearDiaryLogger(url=deardiary_server.url, store=str(tmp_path / "spool"))
    fit_and_test(logger)
    logger.end()

    fired = deardiary_server.stats["faults"]
    assert fired["drop_after"] >= 2 and fired["status"] == 3, fired
    deardiary_server.clear_faults()
    client = dd.connect(deardiary_server.url)
    iteration = only_iteration(client, "default")
    assert iteration.status is dd.IterationStatus.SUCCEEDED
    found = steps(client, iteration.id)
    assert found["loss_epoch"] == list(range(EPOCHS))
    assert found["loss_step"] == list(range(EPOCHS * BATCHES))
    assert found["val_batch_loss"] == list(range(EPOCHS * VAL_BATCHES))
    assert found["test_loss"] == [EPOCHS]
    assert all(len(v) == 1 for v in parameters(client, iteration.id).values())
