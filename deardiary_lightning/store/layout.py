"""Where a local store keeps its files, how it names them, and the format version check.

A store is a directory (or an object-store prefix) reached through fsspec::

    <root>/
      deardiary-store.json          format marker: {"format": ..., "version": 1, ...}
      log/<writer-id>/<seq>.jsonl   append-only log segments, one directory per writer
      log/<writer-id>/<a>-<b>.pack  packs: the segments a..b of one writer in one object
      blobs/<blob-id>               resource bytes, written once, never modified
      sync/<target-key>/...         sync journals, one per target server

Every process (every open store, in fact) writes under its own *writer id*, so two writers never
touch the same file. How a writer adds records depends on what the filesystem can do:

- ``append`` (local disks): records are appended to the writer's current segment, flushed and
  ``fdatasync``-ed before the call returns; a segment is closed after :data:`SEGMENT_BYTES`.
- ``put`` (object stores and memory): each write is one new immutable object, written with a
  single PUT (atomic and durable once it returns).
- ``rename`` (other filesystems): each write goes to a hidden temporary name, then is moved into
  place.

In the last two modes a writer also packs its small segments into larger immutable *pack*
objects (see :mod:`deardiary_lightning.store.log`), so reading a long run back fetches a few
objects, not one per write.

Format versions: version 1 has segments only (packs, if any, sit beside the segments they
cover); version 2 allows a writer to delete segments (and smaller packs) once a pack covering
them exists. Object stores are created as version 2; local disks, which never pack, stay at
version 1 so that older packages keep reading them.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import sys
import time
from dataclasses import dataclass
from typing import Any

from fsspec import AbstractFileSystem
from fsspec.core import url_to_fs
from fsspec.implementations.local import LocalFileSystem

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "MARKER_NAME",
    "SEGMENT_BYTES",
    "StoreFormatError",
    "StoreLocation",
    "new_writer_id",
    "open_location",
    "store_errors",
]

logger = logging.getLogger(__name__)

#: The ``format`` value of the marker file.
FORMAT_NAME = "deardiary-local-store"

#: The newest layout version this package can read (and writes on object stores).
FORMAT_VERSION = 2

#: The version of stores on local disks, where nothing is packed (older packages read them).
APPEND_FORMAT_VERSION = 1

#: The first version in which segments covered by a pack may be deleted.
PRUNING_VERSION = 2

#: Name of the marker file at the root of a store.
MARKER_NAME = "deardiary-store.json"

#: Size after which an appended segment is closed and the writer starts the next one.
SEGMENT_BYTES = 16 * 1024 * 1024

_OBJECT_STORES = frozenset(
    {"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "adl", "oci", "memory", "r2", "tos"}
)

_BASE36 = "0123456789abcdefghijklmnopqrstuvwxyz"


class StoreFormatError(RuntimeError):
    """The store was written by a newer version of the package, or is not a store at all."""


def store_errors() -> tuple[type[BaseException], ...]:
    """Return the exception classes that mean "the store could not be reached or written".

    fsspec implementations raise ``OSError`` for most failures, but s3fs lets botocore's own
    errors through for some of them (no route to the endpoint, no credentials). Those are only
    added when botocore is already imported, so a local store never pays for importing it.
    """
    errors: list[type[BaseException]] = [OSError]
    botocore = sys.modules.get("botocore.exceptions")
    if botocore is not None:
        errors.extend(getattr(botocore, name) for name in ("BotoCoreError", "ClientError"))
    return tuple(errors)


def _base36(number: int, width: int) -> str:
    """Write a non-negative integer in lower-case base 36, left-padded to ``width``."""
    digits = []
    while number:
        number, rest = divmod(number, 36)
        digits.append(_BASE36[rest])
    return "".join(reversed(digits)).rjust(width, "0")


def new_writer_id() -> str:
    """Return a fresh writer id: 9 base-36 digits of milliseconds, then 8 random ones.

    The ids sort by creation time and carry 41 random bits, so two processes starting in the
    same millisecond still differ.
    """
    millis = time.time_ns() // 1_000_000
    return _base36(millis, 9) + _base36(secrets.randbits(41), 8)


@dataclass
class StoreLocation:
    """An opened store root: the filesystem, the path inside it and how writes are made.

    Attributes:
        fs: The fsspec filesystem.
        root: The store's path inside ``fs`` (no trailing slash).
        url: The store's URL, with the protocol, for messages.
        mode: ``"append"``, ``"put"`` or ``"rename"`` (see the module docstring).
        version: The store's format version, once its marker was read or written.
    """

    fs: AbstractFileSystem
    root: str
    url: str
    mode: str
    version: int | None = None

    @property
    def prunes_packed(self) -> bool:
        """Whether writers may delete segments that a pack covers (format version 2 on)."""
        return self.version is not None and self.version >= PRUNING_VERSION

    @property
    def is_local(self) -> bool:
        """Whether the store is on a local disk (``os`` calls work on its paths)."""
        return self.mode == "append"

    def path(self, *parts: str) -> str:
        """Join ``parts`` under the root."""
        return "/".join([self.root, *parts])

    def read_marker(self) -> dict[str, Any] | None:
        """Return the decoded marker file, or ``None`` when the store does not exist yet."""
        try:
            raw = self.fs.cat_file(self.path(MARKER_NAME))
        except FileNotFoundError:
            return None
        try:
            marker = json.loads(raw)
        except ValueError as exc:
            msg = (
                f"{self.url}/{MARKER_NAME} is not valid JSON ({exc}); this does not look like "
                "a DearDiary local store: point to another location or repair the file"
            )
            raise StoreFormatError(msg) from None
        if not isinstance(marker, dict):
            msg = f"{self.url}/{MARKER_NAME} is not a JSON object; it is not a local store"
            raise StoreFormatError(msg)
        return marker

    def check_marker(self) -> bool:
        """Check the format version; return whether the store exists already.

        Raises:
            StoreFormatError: The store has another format or a newer version.
        """
        marker = self.read_marker()
        if marker is None:
            return False
        if marker.get("format") != FORMAT_NAME:
            msg = (
                f"{self.url} has a {MARKER_NAME} of format {marker.get('format')!r}, not "
                f"{FORMAT_NAME!r}; point to a DearDiary local store"
            )
            raise StoreFormatError(msg)
        version = marker.get("version")
        if not isinstance(version, int) or version > FORMAT_VERSION:
            msg = (
                f"{self.url} uses local-store format version {version!r}, newer than version "
                f"{FORMAT_VERSION} that this deardiary_lightning understands: upgrade the "
                "package (pip install -U deardiary-lightning) to open it"
            )
            raise StoreFormatError(msg)
        self.version = version
        return True

    def ensure_marker(self) -> None:
        """Create the marker file if the store has none (the first write does this)."""
        if self.check_marker():
            return
        from deardiary_lightning import __version__

        version = APPEND_FORMAT_VERSION if self.is_local else FORMAT_VERSION
        marker = {
            "format": FORMAT_NAME,
            "version": version,
            "created_by": f"deardiary-lightning {__version__}",
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        self.put_small(self.path(MARKER_NAME), (json.dumps(marker, indent=2) + "\n").encode())
        self.version = version

    def put_small(self, path: str, data: bytes) -> None:
        """Write a small file whole and durably, replacing it atomically where possible."""
        parent = path.rsplit("/", 1)[0]
        if self.mode == "put":
            self.fs.pipe_file(path, data)
            return
        self.fs.makedirs(parent, exist_ok=True)
        temporary = f"{parent}/.{path.rsplit('/', 1)[1]}.{new_writer_id()}.tmp"
        if self.is_local:
            with open(temporary, "wb") as out:
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
            os.replace(temporary, path)
            fsync_directory(parent)
            return
        with self.fs.open(temporary, "wb") as out:
            out.write(data)
        self.fs.mv(temporary, path)


def fsync_directory(path: str) -> None:
    """Make a new directory entry durable (no-op where directories cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def open_location(url: str, storage_options: dict[str, Any]) -> StoreLocation:
    """Resolve a path or fsspec URL into a :class:`StoreLocation`.

    Args:
        url: A plain path, ``file://``, ``memory://``, ``s3://`` or any fsspec URL.
        storage_options: Options for the fsspec filesystem (credentials, endpoint, ...).

    Returns:
        The location; nothing is created on the filesystem.
    """
    fs, root = url_to_fs(url, **storage_options)
    root = root.rstrip("/") or root
    protocols = (fs.protocol,) if isinstance(fs.protocol, str) else tuple(fs.protocol)
    if isinstance(fs, LocalFileSystem):
        mode = "append"
    elif _OBJECT_STORES.intersection(protocols):
        mode = "put"
    else:
        mode = "rename"
    return StoreLocation(fs=fs, root=root, url=fs.unstrip_protocol(root), mode=mode)
