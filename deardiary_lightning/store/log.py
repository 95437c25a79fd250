"""Append-only logs of JSON records: one writer per directory, read back incrementally.

A log lives in a directory such as ``<root>/log``; each writer owns ``<dir>/<writer-id>/`` and
fills numbered segment files (``00000000.jsonl``, ``00000001.jsonl``, ...) with one JSON object
per line. Nothing is ever rewritten: a writer only appends to its own current segment (local
disks) or adds new segment objects (object stores). A reader remembers how far it has read in
each segment and, on every poll, reads only what is new, so picking up other writers' records
costs a listing plus the new bytes.

A line is taken only once its closing newline is there: a segment cut short by a crash (or still
being written) ends in an incomplete line, which is left for a later poll, or ignored for good
when its writer is gone.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable
from typing import Any

from deardiary_lightning.store.layout import (
    SEGMENT_BYTES,
    StoreLocation,
    fsync_directory,
    new_writer_id,
)

__all__ = ["LogReader", "LogWriter", "Record", "encode_records"]

logger = logging.getLogger(__name__)

#: One decoded log line.
Record = dict[str, Any]

_SUFFIX = ".jsonl"


def encode_records(records: Iterable[Record]) -> bytes:
    """Encode records as JSON lines (compact, UTF-8, no NaN tokens)."""
    return b"".join(
        json.dumps(record, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()
        + b"\n"
        for record in records
    )


class LogWriter:
    """Adds records to one writer's segments, durably, before returning.

    Args:
        location: The store.
        directory: The log directory relative to the store root (``"log"``, ``"sync/<key>"``).
        writer_id: This writer's id; no other writer may use it.
    """

    def __init__(self, location: StoreLocation, directory: str, writer_id: str) -> None:
        self.location = location
        self.writer_id = writer_id
        self.directory = location.path(directory, writer_id)
        self._segment = 0
        self._fd: int | None = None
        self._size = 0

    def write(self, records: Iterable[Record]) -> None:
        """Write records; when this returns they survive a crash of the process.

        On a local disk the records are appended and ``fdatasync``-ed; elsewhere they form one
        new immutable object.

        Raises:
            OSError: The filesystem refused the write (nothing of it will be read back).
        """
        data = encode_records(records)
        if not data:
            return
        if self.location.mode == "append":
            self._append(data)
        else:
            self._put(data)

    def close(self) -> None:
        """Close the open segment, if any."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def _segment_path(self, number: int) -> str:
        return f"{self.directory}/{number:08d}{_SUFFIX}"

    def _append(self, data: bytes) -> None:
        """Append to the current segment of a local disk and flush it to the device."""
        if self._fd is None:
            first = not os.path.isdir(self.directory)
            os.makedirs(self.directory, exist_ok=True)
            if first:
                fsync_directory(os.path.dirname(self.directory))
            path = self._segment_path(self._segment)
            self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            self._size = os.fstat(self._fd).st_size
            fsync_directory(self.directory)
        try:
            view = memoryview(data)
            while view:
                written = os.write(self._fd, view)
                view = view[written:]
            _datasync(self._fd)
        except OSError:
            # A partial line may now end this segment; later records go to a fresh one, and
            # readers never take the incomplete line.
            self.close()
            self._segment += 1
            raise
        self._size += len(data)
        if self._size >= SEGMENT_BYTES:
            self.close()
            self._segment += 1

    def _put(self, data: bytes) -> None:
        """Write one new immutable segment object."""
        fs = self.location.fs
        path = self._segment_path(self._segment)
        self._segment += 1
        if self.location.mode == "put":
            fs.pipe_file(path, data)
            return
        fs.makedirs(self.directory, exist_ok=True)
        temporary = f"{self.directory}/.{self._segment - 1:08d}.{new_writer_id()}.tmp"
        with fs.open(temporary, "wb") as out:
            out.write(data)
        fs.mv(temporary, path)


def _datasync(fd: int) -> None:
    """Flush a file's data (and size) to the device."""
    sync = getattr(os, "fdatasync", os.fsync)
    sync(fd)


class LogReader:
    """Reads the records of every writer of a log directory, only what is new on each poll.

    Args:
        location: The store.
        directory: The log directory relative to the store root.
        skip_writer: A writer whose records the caller already has (its own).
    """

    def __init__(
        self, location: StoreLocation, directory: str, skip_writer: str | None = None
    ) -> None:
        self.location = location
        self.directory = location.path(directory)
        self.skip_writer = skip_writer
        self._consumed: dict[str, int] = {}
        self._warned: set[str] = set()

    def poll(self) -> list[tuple[str, list[Record]]]:
        """Return the records that appeared since the last poll, grouped by writer.

        Returns:
            ``(writer_id, records)`` pairs; each writer's records are in the order written.
        """
        listing = self._list()
        by_writer: dict[str, list[Record]] = {}
        for path in sorted(listing):
            size = listing[path]
            done = self._consumed.get(path, 0)
            if size <= done:
                continue
            writer = path[len(self.directory) + 1 :].split("/", 1)[0]
            if writer == self.skip_writer:
                continue
            records = self._read_new(path, done, size)
            if records:
                by_writer.setdefault(writer, []).extend(records)
        return list(by_writer.items())

    def _list(self) -> dict[str, int]:
        """Return segment paths and sizes under the directory (empty if it does not exist)."""
        fs = self.location.fs
        if self.location.is_local:
            return _list_local(self.directory)
        fs.invalidate_cache(self.directory)
        try:
            found = fs.find(self.directory, detail=True)
        except FileNotFoundError:
            return {}
        out: dict[str, int] = {}
        for path, info in found.items():
            name = path.rsplit("/", 1)[-1]
            if name.endswith(_SUFFIX) and not name.startswith("."):
                out[path.rstrip("/")] = int(info.get("size") or 0)
        return out

    def _read_new(self, path: str, start: int, end: int) -> list[Record]:
        """Read complete lines of ``path`` from ``start``; remember where they stop."""
        if self.location.is_local:
            with open(path, "rb") as stream:
                stream.seek(start)
                data = stream.read(end - start)
        else:
            data = self.location.fs.cat_file(path, start=start, end=end)
        cut = data.rfind(b"\n")
        if cut < 0:
            return []
        self._consumed[path] = start + cut + 1
        records: list[Record] = []
        for line in data[: cut + 1].splitlines():
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError:
                record = None
            if not isinstance(record, dict):
                if path not in self._warned:
                    self._warned.add(path)
                    logger.warning("skipping an unreadable line in %s", path)
                continue
            records.append(record)
        return records


def _list_local(directory: str) -> dict[str, int]:
    """List ``<directory>/<writer>/<segment>`` files of a local disk with their sizes."""
    out: dict[str, int] = {}
    try:
        writers = list(os.scandir(directory))
    except FileNotFoundError:
        return out
    for writer in writers:
        if not writer.is_dir() or writer.name.startswith("."):
            continue
        try:
            segments = list(os.scandir(writer.path))
        except FileNotFoundError:
            continue
        for segment in segments:
            name = segment.name
            if name.endswith(_SUFFIX) and not name.startswith("."):
                try:
                    out[f"{directory}/{writer.name}/{name}"] = segment.stat().st_size
                except FileNotFoundError:
                    continue
    return out
