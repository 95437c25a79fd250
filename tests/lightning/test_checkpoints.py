"""Checkpoints to resources: the three modes, names, rotation deletes, the model registry."""

from __future__ import annotations

import os
import pickle
import re
from pathlib import Path

import pytest
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint

import deardiary_lightning as dd
from deardiary_lightning.lightning import DearDiaryCallback, DearDiaryLogger
from deardiary_lightning.lightning.checkpoints import STAGING_DIR, resource_name
from tests.deardiary_server import FaultRule
from tests.lightning._models import BATCHES, TinyModel, loader, trainer_kwargs

EPOCHS = 3


def fit(logger: DearDiaryLogger, *callbacks: object, epochs: int = EPOCHS) -> Trainer:
    trainer = Trainer(logger=logger, callbacks=list(callbacks), **trainer_kwargs(max_epochs=epochs))
    trainer.fit(TinyModel(), loader(), loader(20, seed=1))
    return trainer


def resources(client: dd.Client, logger: DearDiaryLogger) -> dict[str, dd.Resource]:
    iteration = client.get_iteration(logger.iteration_id)
    assert iteration is not None
    return {r.name: r for r in client.get_resources(iteration.experiment_id)}


def test_all_uploads_every_save_with_its_epoch_and_step(destination):
    logger = DearDiaryLogger(**destination.logger_args(experiment="e", log_checkpoints="all"))
    saver = ModelCheckpoint(save_top_k=-1, save_last=True)
    fit(logger, saver)
    logger.end()

    client = destination.client()
    found = resources(client, logger)
    it = logger.iteration_id
    expected = {f"iteration={it}-epoch={e}-step={BATCHES * (e + 1)}.ckpt" for e in range(EPOCHS)}
    expected |= {f"iteration={it}-epoch={e}-step={BATCHES * (e + 1)}-last.ckpt" for e in range(3)}
    assert set(found) == expected

    final = found[f"iteration={it}-epoch=2-step={BATCHES * EPOCHS}.ckpt"]
    on_disk = Path(saver.dirpath or "")
    assert on_disk == Path(logger.log_dir) / "checkpoints"
    assert client.read_resource_data(final.id) == (on_disk / "epoch=2-step=12.ckpt").read_bytes()
    assert not (on_disk / STAGING_DIR).exists()

    copy = pickle.loads(pickle.dumps(logger))  # ddp_spawn pickles it again for the next stage
    assert copy.version == logger.version and copy.checkpoint_callbacks == []


def test_true_uploads_best_and_last_once_at_the_end(destination):
    logger = DearDiaryLogger(**destination.logger_args(experiment="e", log_checkpoints=True))
    saver = ModelCheckpoint(monitor="val_loss", save_top_k=1, save_last=True)
    trainer = fit(logger, saver)
    trainer.test(trainer.lightning_module, loader(20, seed=2))  # finalize again: no new upload
    logger.end()

    found = resources(destination.client(), logger)
    best = os.path.basename(saver.best_model_path)
    epoch, step = (int(n) for n in re.findall(r"\d+", best))
    it = logger.iteration_id
    assert set(found) == {
        f"iteration={it}-{best}",
        f"iteration={it}-epoch={EPOCHS - 1}-step={BATCHES * EPOCHS}-last.ckpt",
    }
    assert resource_name(it, epoch, step, best) == f"iteration={it}-{best}"


def test_false_uploads_nothing(local):
    logger = DearDiaryLogger(**local.logger_args(experiment="e"))
    assert logger.log_checkpoints is False
    fit(logger, ModelCheckpoint(save_top_k=-1))
    logger.end()
    assert resources(local.client(), logger) == {}


def test_mode_comes_from_the_settings(local, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("DEARDIARY_LOG_CHECKPOINTS", "all")
    logger = DearDiaryLogger(**local.logger_args(experiment="e"))
    assert logger.log_checkpoints == "all"
    fit(logger, ModelCheckpoint(save_top_k=-1), epochs=2)
    logger.end()
    assert len(resources(local.client(), logger)) == 2


def test_rotated_out_checkpoints_are_deleted_and_the_best_is_registered(destination):
    logger = DearDiaryLogger(**destination.logger_args(experiment="e", log_checkpoints="all"))
    saver = ModelCheckpoint(monitor="step", mode="max", save_top_k=1)  # each save replaces one
    companion = DearDiaryCallback(
        register_model="tiny", model_description="the best", delete_removed_checkpoints=True
    )
    fit(logger, saver, companion)
    assert companion.registered is not None
    version_id = companion.registered.result(timeout=30)
    logger.end()

    client = destination.client()
    found = resources(client, logger)
    it = logger.iteration_id
    assert set(found) == {f"iteration={it}-epoch=2-step={BATCHES * EPOCHS}.ckpt"}

    version = client.get_model_version(version_id)
    assert version is not None and version.iteration_id == it
    assert version.resource_id == next(iter(found.values())).id
    assert version.description == "the best"
    model = client.get_model(version.model_id)
    assert model is not None and model.name == "tiny"


def test_uploads_survive_rotation_deleting_the_file(deardiary_server, tmp_path: Path):
    # Slow uploads: top-k rotation deletes each file long before its upload reads it.
    deardiary_server.add_fault(FaultRule(kind="latency", seconds=0.3, path="/resource"))
    logger = DearDiaryLogger(
        url=deardiary_server.url, store=str(tmp_path / "spool"), log_checkpoints="all"
    )
    saver = ModelCheckpoint(monitor="step", mode="max", save_top_k=1)
    fit(logger, saver)
    assert len(list(Path(saver.dirpath or "").glob("*.ckpt"))) == 1
    logger.end()

    client = dd.connect(deardiary_server.url)
    found = resources(client, logger)
    assert len(found) == EPOCHS  # every save landed although rotation deleted the older files
    assert len({r.content_hash for r in found.values()}) == EPOCHS
    assert all(r.size_bytes > 1000 for r in found.values())
    assert not (Path(saver.dirpath or "") / STAGING_DIR).exists()


def test_staging_survives_the_folder_being_removed_by_another_upload(tmp_path: Path, monkeypatch):
    from deardiary_lightning.lightning import checkpoints

    checkpoint = tmp_path / "last.ckpt"
    checkpoint.write_bytes(b"weights")
    real_link = os.link
    calls = []

    def link_after_a_racing_unstage(source, target):
        calls.append(target)
        if len(calls) == 1:
            # Another upload finished right now and removed the empty staging folder.
            os.rmdir(os.path.dirname(target))
        real_link(source, target)

    monkeypatch.setattr(checkpoints.os, "link", link_after_a_racing_unstage)
    staged = checkpoints.stage(str(checkpoint))
    assert len(calls) == 2
    assert Path(staged).read_bytes() == b"weights"
    checkpoints.unstage(staged)
    assert not Path(staged).parent.exists()
