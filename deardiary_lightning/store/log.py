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

**Packs.** On object stores every write is a new small segment, so a long run would be read back
one object per write. A writer therefore also writes *packs*: new immutable objects
``<first>-<last>.pack`` (8-digit segment numbers) holding its segments ``first..last``. Their
first line is an index, ``{"pack": {"first": a, "last": b, "segments": [[n, size], ...]}}``,
followed by the bytes of those segments, unchanged and in order. Packs come in levels: a
level-1 pack covers :data:`PACK_FANOUT` segments, a level-2 pack ``PACK_FANOUT`` level-1 packs,
and so on up to :data:`PACK_LEVELS`; closing a writer packs what it wrote since its last
top-level pack. Where the store's format allows it, the writer then deletes the segments and
smaller packs the new pack covers; nothing is deleted before the pack that covers it is
durable.

A reader prefers the widest packs and skips, segment by segment, whatever it already has: a
segment left beside the pack that covers it (a writer that crashed before deleting it, or a
format-1 store where nothing is deleted) is read once. A segment deleted between a listing and
its read is found in a pack by listing again.
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
    store_errors,
)

__all__ = ["PACK_FANOUT", "PACK_LEVELS", "LogReader", "LogWriter", "Record", "encode_records"]

logger = logging.getLogger(__name__)

#: One decoded log line.
Record = dict[str, Any]

#: Segments in a level-1 pack, and packs of one level in a pack of the next.
PACK_FANOUT = 64

#: Pack levels: the widest pack covers ``PACK_FANOUT ** PACK_LEVELS`` segments.
PACK_LEVELS = 2

_SUFFIX = ".jsonl"
_PACK_SUFFIX = ".pack"

#: Listings a poll makes at most when objects vanish under it (packed and deleted meanwhile).
_POLL_ATTEMPTS = 4


def encode_records(records: Iterable[Record]) -> bytes:
    """Encode records as JSON lines (compact, UTF-8, no NaN tokens)."""
    return b"".join(
        json.dumps(record, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()
        + b"\n"
        for record in records
    )


def segment_name(number: int) -> str:
    """Return the file name of a segment."""
    return f"{number:08d}{_SUFFIX}"


def pack_name(first: int, last: int) -> str:
    """Return the file name of the pack of segments ``first..last``."""
    return f"{first:08d}-{last:08d}{_PACK_SUFFIX}"


def _parse_name(name: str) -> tuple[str, int, int] | None:
    """Classify a file name: ``("segment", n, n)``, ``("pack", first, last)`` or ``None``."""
    if name.startswith("."):
        return None
    if name.endswith(_SUFFIX):
        stem = name[: -len(_SUFFIX)]
        number = int(stem) if stem.isdigit() else -1
        return ("segment", number, number)
    if name.endswith(_PACK_SUFFIX):
        first, _, last = name[: -len(_PACK_SUFFIX)].partition("-")
        if first.isdigit() and last.isdigit() and int(first) <= int(last):
            return ("pack", int(first), int(last))
    return None


class LogWriter:
    """Adds records to one writer's segments, durably, before returning.

    Args:
        location: The store.
        directory: The log directory relative to the store root (``"log"``, ``"sync/<key>"``).
        writer_id: This writer's id; no other writer may use it.
        pack_fanout: Segments per level-1 pack (default :data:`PACK_FANOUT`; 0 never packs).
        pack_levels: Pack levels (default :data:`PACK_LEVELS`).
    """

    def __init__(
        self,
        location: StoreLocation,
        directory: str,
        writer_id: str,
        *,
        pack_fanout: int | None = None,
        pack_levels: int | None = None,
    ) -> None:
        self.location = location
        self.writer_id = writer_id
        self.directory = location.path(directory, writer_id)
        self._segment = 0
        self._fd: int | None = None
        self._size = 0
        fanout = PACK_FANOUT if pack_fanout is None else pack_fanout
        levels = PACK_LEVELS if pack_levels is None else pack_levels
        packing = location.mode != "append" and fanout > 1 and levels > 0
        #: Segments per pack of each level, smallest first (empty: this writer never packs).
        self._blocks = [fanout**level for level in range(1, levels + 1)] if packing else []
        #: Bytes of the segments not yet in a top-level pack; ``None``: the write failed, so
        #: whether the object exists is unknown until it is looked up.
        self._pieces: dict[int, bytes | None] = {}
        #: Packs written and not yet covered by a wider one.
        self._packs: list[tuple[int, int]] = []
        #: Segments that may exist as objects and were not deleted yet.
        self._loose: set[int] = set()
        #: Packs to write, in order (retried on the next write when the store refused one).
        self._due: list[tuple[int, int]] = []

    def write(self, records: Iterable[Record]) -> None:
        """Write records; when this returns they survive a crash of the process.

        On a local disk the records are appended and ``fdatasync``-ed; elsewhere they form one
        new immutable object (and, every :data:`PACK_FANOUT` writes, a pack is added).

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
        """Close the open segment; on object stores, pack what is not packed yet.

        Packing at close is best effort: the records are already durable, so a failure is only
        logged.
        """
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if not self._blocks or self._segment == 0:
            return
        last = self._segment - 1
        top = self._blocks[-1]
        first = last // top * top
        covered = any(a <= first and last <= b for a, b in [*self._packs, *self._due])
        if last > first and not covered:
            self._due.append((first, last))
        self._write_due()

    def _segment_path(self, number: int) -> str:
        return f"{self.directory}/{segment_name(number)}"

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
        """Write one new immutable segment object, then any pack it completes."""
        number = self._segment
        self._segment += 1
        try:
            self._put_object(self._segment_path(number), data)
        except BaseException:
            self._segment_done(number, None)
            raise
        self._segment_done(number, data)

    def _put_object(self, path: str, data: bytes) -> None:
        """Write a new object whole (one PUT, or a temporary file moved into place)."""
        fs = self.location.fs
        if self.location.mode == "put":
            fs.pipe_file(path, data)
            return
        fs.makedirs(self.directory, exist_ok=True)
        name = path.rsplit("/", 1)[1]
        temporary = f"{self.directory}/.{name}.{new_writer_id()}.tmp"
        with fs.open(temporary, "wb") as out:
            out.write(data)
        fs.mv(temporary, path)

    # -- packs --------------------------------------------------------------------------------

    def _segment_done(self, number: int, data: bytes | None) -> None:
        """Remember a segment for the packs, and write the packs it completes."""
        if not self._blocks:
            return
        self._pieces[number] = data
        self._loose.add(number)
        for block in self._blocks:
            if (number + 1) % block == 0:
                self._due.append((number + 1 - block, number))
        if self._due:
            self._write_due()

    def _write_due(self) -> None:
        """Write the due packs in order; stop at the first the store refuses."""
        errors = store_errors()
        while self._due:
            first, last = self._due[0]
            try:
                self._write_pack(first, last)
            except errors as exc:
                logger.warning(
                    "could not pack segments %d..%d of %s (they stay readable one by one; "
                    "packing is tried again on the next write): %s",
                    first,
                    last,
                    self.directory,
                    exc,
                )
                return
            self._due.pop(0)
        top = self._blocks[-1]
        keep_from = min([self._segment // top * top, *(a for a, _ in self._due)])
        for number in [n for n in self._pieces if n < keep_from]:
            del self._pieces[number]

    def _write_pack(self, first: int, last: int) -> None:
        """Write the pack of segments ``first..last``, then delete what it covers."""
        segments: list[tuple[int, bytes]] = []
        for number in range(first, last + 1):
            data = self._pieces.get(number)
            if data is None and number in self._pieces:
                data = self._recover(number)
            if data:
                segments.append((number, data))
        index = {"first": first, "last": last, "segments": [[n, len(d)] for n, d in segments]}
        head = json.dumps({"pack": index}, separators=(",", ":")).encode() + b"\n"
        self._put_object(
            f"{self.directory}/{pack_name(first, last)}",
            head + b"".join(data for _, data in segments),
        )
        covered = [(a, b) for a, b in self._packs if first <= a and b <= last]
        self._packs = [p for p in self._packs if p not in covered]
        self._packs.append((first, last))
        if self.location.prunes_packed:
            numbers = sorted(n for n in self._loose if first <= n <= last)
            paths = [self._segment_path(n) for n, _ in segments if n in self._loose]
            paths += [f"{self.directory}/{pack_name(a, b)}" for a, b in covered]
            self._loose.difference_update(numbers)
            self._delete(paths)

    def _recover(self, number: int) -> bytes:
        """Look up a segment whose write failed: its bytes if it landed after all, else ``b""``.

        A failed PUT may have been applied: packing what is there keeps every reader's view the
        same, whether it reads the segment or the pack.
        """
        try:
            data = bytes(self.location.fs.cat_file(self._segment_path(number)))
        except FileNotFoundError:
            data = b""
        self._pieces[number] = data
        return data

    def _delete(self, paths: list[str]) -> None:
        """Delete objects a durable pack covers (best effort: readers skip leftovers)."""
        if not paths:
            return
        fs = self.location.fs
        try:
            fs.rm(paths)
        except FileNotFoundError:
            for path in paths:  # a filesystem that stops at the first missing one
                try:
                    fs.rm_file(path)
                except FileNotFoundError:
                    continue
                except store_errors() as exc:
                    logger.debug("could not delete %s: %s", path, exc)
        except store_errors() as exc:
            logger.debug("could not delete %d packed objects of %s: %s", len(paths), self, exc)

    def __repr__(self) -> str:
        return f"LogWriter({self.directory!r})"


def _datasync(fd: int) -> None:
    """Flush a file's data (and size) to the device."""
    sync = getattr(os, "fdatasync", os.fsync)
    sync(fd)


#: A listed object: ``(kind, writer, first, last, size)``; ``kind`` is ``segment`` or ``pack``.
_Entry = tuple[str, str, int, int, int]


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
        #: Segment path -> bytes of it already read (from the segment or from a pack).
        self._consumed: dict[str, int] = {}
        #: Packs read, or found to hold nothing new.
        self._packs_done: set[str] = set()
        #: Per writer, the segment ranges of the packs read.
        self._ranges: dict[str, list[tuple[int, int]]] = {}
        self._warned: set[str] = set()
        #: Objects fetched so far (segments and packs), for diagnostics and benchmarks.
        self.objects_read = 0

    def poll(self) -> list[tuple[str, list[Record]]]:
        """Return the records that appeared since the last poll, grouped by writer.

        Returns:
            ``(writer_id, records)`` pairs; each writer's records are in the order written.
        """
        pieces: dict[str, list[tuple[int, list[Record]]]] = {}
        for _ in range(_POLL_ATTEMPTS):
            listing = self._list()
            vanished = self._read_packs(listing, pieces)
            vanished |= self._read_segments(listing, pieces)
            if not vanished:
                break
        else:
            logger.debug("objects of %s kept vanishing; the next poll reads them", self.directory)
        out = []
        for writer, parts in pieces.items():
            parts.sort(key=lambda part: part[0])
            records = [record for _, chunk in parts for record in chunk]
            if records:
                out.append((writer, records))
        return out

    # -- listing ------------------------------------------------------------------------------

    def _list(self) -> dict[str, _Entry]:
        """Return the segments and packs under the directory (empty if it does not exist)."""
        if self.location.is_local:
            return _list_local(self.directory)
        fs = self.location.fs
        fs.invalidate_cache(self.directory)
        try:
            found = fs.find(self.directory, detail=True)
        except FileNotFoundError:
            return {}
        out: dict[str, _Entry] = {}
        prefix = len(self.directory) + 1
        for path, info in found.items():
            path = path.rstrip("/")
            writer, _, name = path[prefix:].partition("/")
            parsed = _parse_name(name.rsplit("/", 1)[-1])
            if parsed is not None:
                kind, first, last = parsed
                out[path] = (kind, writer, first, last, int(info.get("size") or 0))
        return out

    def _in_read_pack(self, writer: str, first: int, last: int) -> bool:
        return any(a <= first and last <= b for a, b in self._ranges.get(writer, ()))

    # -- packs --------------------------------------------------------------------------------

    def _read_packs(
        self, listing: dict[str, _Entry], pieces: dict[str, list[tuple[int, list[Record]]]]
    ) -> bool:
        """Read the packs that hold something new, widest first; return whether one vanished."""
        packs = [
            (path, entry)
            for path, entry in listing.items()
            if entry[0] == "pack" and entry[1] != self.skip_writer and path not in self._packs_done
        ]
        packs.sort(key=lambda item: (item[1][2] - item[1][3], item[1][2]))
        wanted: list[tuple[str, _Entry]] = []
        planned: dict[str, list[tuple[int, int]]] = {}
        for path, entry in packs:
            _, writer, first, last, _ = entry
            nothing_new = (
                entry[4] == 0
                or self._in_read_pack(writer, first, last)
                or self._all_consumed(writer, first, last)
            )
            if nothing_new:
                self._packs_done.add(path)
                continue
            if any(a <= first and last <= b for a, b in planned.get(writer, ())):
                continue
            planned.setdefault(writer, []).append((first, last))
            wanted.append((path, entry))
        vanished = False
        fetched = self._fetch([(path, 0, entry[4]) for path, entry in wanted])
        for path, entry in wanted:
            data = fetched.get(path)
            if data is None:
                vanished = True
                continue
            self._take_pack(path, entry, data, pieces)
        return vanished

    def _all_consumed(self, writer: str, first: int, last: int) -> bool:
        """Whether every segment of a range was read one by one already."""
        base = f"{self.directory}/{writer}/"
        consumed = self._consumed
        return all(consumed.get(base + segment_name(n), 0) > 0 for n in range(first, last + 1))

    def _take_pack(
        self,
        path: str,
        entry: _Entry,
        data: bytes,
        pieces: dict[str, list[tuple[int, list[Record]]]],
    ) -> None:
        """Take the segments of a pack that were not read yet."""
        _, writer, first, last, _ = entry
        self._packs_done.add(path)
        head, _, body = data.partition(b"\n")
        try:
            segments = [(int(n), int(size)) for n, size in json.loads(head)["pack"]["segments"]]
        except (ValueError, KeyError, TypeError):
            logger.warning("skipping %s: its index line is unreadable", path)
            return
        base = f"{self.directory}/{writer}/"
        offset = 0
        for number, size in segments:
            chunk = body[offset : offset + size]
            offset += size
            segment = base + segment_name(number)
            done = self._consumed.get(segment, 0)
            if done < size:
                records = self._decode(path, chunk[done:])
                self._consumed[segment] = size
                pieces.setdefault(writer, []).append((number, records))
        self._ranges.setdefault(writer, []).append((first, last))

    # -- segments -----------------------------------------------------------------------------

    def _read_segments(
        self, listing: dict[str, _Entry], pieces: dict[str, list[tuple[int, list[Record]]]]
    ) -> bool:
        """Read what is new in the segments no pack covers; return whether one vanished."""
        wanted: list[tuple[str, str, int, int, int]] = []
        for path in sorted(listing):
            kind, writer, number, _, size = listing[path]
            if kind != "segment" or writer == self.skip_writer:
                continue
            done = self._consumed.get(path, 0)
            if size <= done:
                continue
            if number >= 0 and self._in_read_pack(writer, number, number):
                self._consumed[path] = size
                continue
            wanted.append((path, writer, number, done, size))
        fetched = self._fetch([(path, done, size) for path, _, _, done, size in wanted])
        vanished = False
        for path, writer, number, done, _ in wanted:
            data = fetched.get(path)
            if data is None:
                vanished = True
                continue
            self._take_segment(path, writer, number, done, data, pieces)
        return vanished

    def _take_segment(
        self,
        path: str,
        writer: str,
        number: int,
        start: int,
        data: bytes,
        pieces: dict[str, list[tuple[int, list[Record]]]],
    ) -> None:
        """Take the complete lines of a segment read from ``start``."""
        cut = data.rfind(b"\n")
        if cut < 0:
            return
        self._consumed[path] = start + cut + 1
        pieces.setdefault(writer, []).append((number, self._decode(path, data[: cut + 1])))

    # -- reading ------------------------------------------------------------------------------

    def _fetch(self, ranges: list[tuple[str, int, int]]) -> dict[str, bytes]:
        """Read ``(path, start, end)`` byte ranges, concurrently where the filesystem can.

        The ranges are explicit (sizes come from the listing), so no filesystem looks an object
        up in a possibly stale cache first. Objects that vanished are absent from the result.

        Raises:
            OSError: The store failed for another reason than a missing object.
        """
        out: dict[str, bytes] = {}
        if not ranges:
            return out
        if self.location.is_local:
            for path, start, end in ranges:
                try:
                    with open(path, "rb") as stream:
                        stream.seek(start)
                        out[path] = stream.read(end - start)
                except FileNotFoundError:
                    continue
        else:
            paths = [path for path, _, _ in ranges]
            starts = [start for _, start, _ in ranges]
            ends = [end for _, _, end in ranges]
            results = self.location.fs.cat_ranges(paths, starts, ends, on_error="return")
            for path, value in zip(paths, results, strict=True):
                if isinstance(value, FileNotFoundError):
                    continue
                if isinstance(value, BaseException):
                    raise value
                out[path] = bytes(value)
        self.objects_read += len(out)
        return out

    def _decode(self, path: str, data: bytes) -> list[Record]:
        """Decode complete JSON lines; warn once per object about unreadable ones."""
        records: list[Record] = []
        for line in data.splitlines():
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


def _list_local(directory: str) -> dict[str, _Entry]:
    """List ``<directory>/<writer>/<segment or pack>`` files of a local disk with their sizes."""
    out: dict[str, _Entry] = {}
    try:
        writers = list(os.scandir(directory))
    except FileNotFoundError:
        return out
    for writer in writers:
        if not writer.is_dir() or writer.name.startswith("."):
            continue
        try:
            entries = list(os.scandir(writer.path))
        except FileNotFoundError:
            continue
        for entry in entries:
            parsed = _parse_name(entry.name)
            if parsed is None:
                continue
            try:
                size = entry.stat().st_size
            except FileNotFoundError:
                continue
            kind, first, last = parsed
            out[f"{directory}/{writer.name}/{entry.name}"] = (kind, writer.name, first, last, size)
    return out
