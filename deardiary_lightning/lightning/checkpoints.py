"""Bookkeeping of checkpoint files: when each was saved, what was uploaded, what was removed.

``ModelCheckpoint`` tells its loggers after every save (``after_save_checkpoint``). The
:class:`CheckpointBook` notes, for each file the callback currently keeps (its top-k and its
``last``), the epoch and global step of the save and the file's modification stamp, so that:

- a file is uploaded once per version (a rewritten ``last.ckpt`` is a new version),
- the resource name tells the iteration, the epoch and the step (see :func:`resource_name`),
- files the callback has rotated out (deleted from disk by its top-k) can be found, so their
  resources can be deleted too.

Uploads run in the background while training goes on, and top-k rotation may delete a file
before its upload has read it. :func:`stage` therefore gives each upload its own name for the
bytes: a hard link in ``.deardiary-upload/`` next to the file (no copy; a copy only where the
file system has no hard links), removed when the upload is over.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import re
import shutil
import uuid
from collections.abc import Iterator
from concurrent.futures import Future
from typing import Any

__all__ = ["STAGING_DIR", "CheckpointBook", "SavedFile", "resource_name", "stage", "unstage"]

log = logging.getLogger(__name__)

#: Directory, next to each checkpoint, holding the files being uploaded.
STAGING_DIR = ".deardiary-upload"


def stage(path: str) -> str:
    """Give a file a private name for its upload, so that deleting the original is harmless.

    Args:
        path: The checkpoint file.

    Returns:
        The staged file: a hard link to the same bytes, or a copy where links are impossible.

    Raises:
        OSError: The file can neither be linked nor copied.
    """
    folder = os.path.join(os.path.dirname(os.path.abspath(path)), STAGING_DIR)
    staged = os.path.join(folder, f"{uuid.uuid4().hex[:8]}-{os.path.basename(path)}")
    for attempt in range(3):
        # unstage() of an earlier upload removes the folder once it is empty, possibly between
        # our makedirs and the link: make it again and retry.
        os.makedirs(folder, exist_ok=True)
        try:
            _link_or_copy(path, staged)
            return staged
        except FileNotFoundError:
            if attempt == 2 or not os.path.exists(path):
                raise
    raise AssertionError("unreachable")


def _link_or_copy(source: str, target: str) -> None:
    """Hard-link ``source`` to ``target``, or copy it where links are impossible."""
    try:
        os.link(source, target)
    except FileNotFoundError:
        raise
    except OSError:  # another filesystem, or no hard links there
        shutil.copyfile(source, target)


def unstage(staged: str) -> None:
    """Remove a staged file, and its directory once empty."""
    with contextlib.suppress(FileNotFoundError):
        os.remove(staged)
    with contextlib.suppress(OSError):
        os.rmdir(os.path.dirname(staged))


def resource_name(iteration_id: Any, epoch: int, step: int, path: str) -> str:
    """Name the resource of a checkpoint file: iteration, epoch, step, then the file name.

    Args:
        iteration_id: The run's iteration.
        epoch: The epoch the checkpoint was saved in.
        step: The global step it was saved at.
        path: The checkpoint file.

    Returns:
        ``iteration=<id>-epoch=<epoch>-step=<step>-<file name>``, or
        ``iteration=<id>-<file name>`` when the file name already holds ``epoch=<epoch>`` and
        ``step=<step>`` (ModelCheckpoint's default names, ``epoch=2-step=30.ckpt``).
    """
    base = os.path.basename(path)
    if re.search(rf"(^|\W)epoch={epoch}(\W|$)", base) and re.search(
        rf"(^|\W)step={step}(\W|$)", base
    ):
        return f"iteration={iteration_id}-{base}"
    return f"iteration={iteration_id}-epoch={epoch}-step={step}-{base}"


@dataclasses.dataclass
class SavedFile:
    """One version of a checkpoint file, and its upload once started.

    Attributes:
        path: The file.
        stamp: ``(mtime_ns, size)`` of this version.
        epoch: The epoch it was saved in.
        step: The global step it was saved at.
        upload: The upload's future (resolves to the resource id), once queued.
    """

    path: str
    stamp: tuple[int, int]
    epoch: int
    step: int
    upload: Future[Any] | None = None
    deleted: bool = False


class CheckpointBook:
    """What the checkpoint callbacks saved and what went to DearDiary."""

    def __init__(self) -> None:
        self._current: dict[str, SavedFile] = {}
        self._uploaded: list[SavedFile] = []

    def observe(self, callback: Any, epoch: int, step: int) -> list[SavedFile]:
        """Note the files a checkpoint callback keeps after a save.

        Args:
            callback: The ``ModelCheckpoint`` (or a proxy of it).
            epoch: The current epoch.
            step: The current global step.

        Returns:
            The files that are new, or were rewritten, since the last observation.
        """
        fresh: list[SavedFile] = []
        for path in kept_paths(callback):
            known = self._current.get(path)
            saved = self.note(path, epoch, step)
            if saved is not None and saved is not known:
                fresh.append(saved)
        return fresh

    def note(self, path: str, epoch: int, step: int) -> SavedFile | None:
        """Return the current version of one file, noting it first if it is new or rewritten.

        Args:
            path: The checkpoint file.
            epoch: The epoch to record if the version is new.
            step: The global step to record if the version is new.

        Returns:
            The version, or ``None`` when the file does not exist.
        """
        stamp = _stamp(path)
        if stamp is None:
            return None
        known = self._current.get(path)
        if known is not None and known.stamp == stamp:
            return known
        saved = SavedFile(path, stamp, epoch, step)
        self._current[path] = saved
        return saved

    def note_upload(self, saved: SavedFile, upload: Future[Any]) -> None:
        """Remember that a file version is being uploaded."""
        saved.upload = upload
        self._uploaded.append(saved)

    def removed(self, callback: Any) -> Iterator[SavedFile]:
        """Yield uploaded versions whose file the callback no longer keeps and that are gone.

        Each is yielded once (it is marked deleted).
        """
        kept = set(kept_paths(callback))
        for saved in self._uploaded:
            if saved.deleted or saved.path in kept or os.path.exists(saved.path):
                continue
            saved.deleted = True
            yield saved

    def uploads(self) -> list[SavedFile]:
        """Return every uploaded version, oldest first."""
        return list(self._uploaded)


def kept_paths(callback: Any) -> list[str]:
    """Return the files a ``ModelCheckpoint`` keeps: its top-k, then its last checkpoint."""
    paths = [str(path) for path in getattr(callback, "best_k_models", {}) or {}]
    for attribute in ("best_model_path", "last_model_path"):
        path = getattr(callback, attribute, "") or ""
        if path and str(path) not in paths:
            paths.append(str(path))
    return paths


def _stamp(path: str) -> tuple[int, int] | None:
    """Return a file's ``(mtime_ns, size)``, or ``None`` if it does not exist."""
    try:
        info = os.stat(path)
    except OSError:
        return None
    return info.st_mtime_ns, info.st_size
