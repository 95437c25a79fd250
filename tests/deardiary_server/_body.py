"""Request bodies read as streams: Content-Length or chunked framing, and multipart forms.

Uploads can be several hundred megabytes, so nothing here holds a whole body in memory: the
multipart parser reads the socket in chunks and writes file parts straight to disk, hashing them
on the way.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from email.message import Message
from pathlib import Path
from typing import BinaryIO, Protocol

CHUNK_SIZE = 256 * 1024

_MULTIPART_TYPE = re.compile(r'^multipart/form-data; boundary=([^\s;"]{1,70})$')
_MAX_PART_HEADER = 64 * 1024

# The part header rules of the server's parser (HTTP.jl): a ``Content-Disposition`` line
# (only these two spellings of the name) reading ``form-data;`` and then parameters, which are
# ``key="value"`` pairs (value up to the next double quote) or bare flags, each optionally
# followed by ``;``. Reading stops at the first text that is neither.
_DISPOSITION = re.compile(r"[Cc]ontent-[Dd]isposition:[ \t]*form-data;[ \t]*(.*)")
_TOKEN = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_PARAMETER_PAIR = re.compile(rf'[ \t]*({_TOKEN})[ \t]*=[ \t]*"(.*?)";?')
_PARAMETER_FLAG = re.compile(rf"[ \t]*({_TOKEN});?")


class _Input(Protocol):
    """The connection's buffered input stream."""

    def read(self, size: int = -1, /) -> bytes: ...

    def readline(self, size: int | None = -1, /) -> bytes: ...


class BodyError(Exception):
    """The request framing is broken (bad length, bad chunk header, or the peer went away)."""


class MultipartError(Exception):
    """The body is not a well-formed multipart form."""


class BodyReader:
    """Read a request body in pieces, honouring ``Content-Length`` or chunked encoding.

    Args:
        rfile: The connection's buffered input.
        headers: The request headers.
    """

    def __init__(self, rfile: _Input, headers: Message) -> None:
        self._rfile = rfile
        self._chunked = "chunked" in (headers.get("Transfer-Encoding") or "").lower()
        self._chunk_left = 0
        self._remaining = 0
        self.done = False

        if not self._chunked:
            length = (headers.get("Content-Length") or "0").strip()
            if not length.isdigit():
                raise BodyError(f"bad Content-Length {length!r}")
            self._remaining = int(length)
            self.done = self._remaining == 0

    def read(self, size: int = CHUNK_SIZE) -> bytes:
        """Return up to ``size`` bytes of the body; ``b""`` once it is exhausted."""
        if self.done:
            return b""
        if self._chunked:
            return self._read_chunked(size)

        data = self._rfile.read(min(size, self._remaining))
        if not data:
            raise BodyError("the client closed the connection in the middle of the body")
        self._remaining -= len(data)
        self.done = self._remaining == 0
        return data

    def _read_chunked(self, size: int) -> bytes:
        """One piece of a chunked body (reads the next chunk header when needed)."""
        if self._chunk_left == 0:
            line = self._rfile.readline(1024)
            try:
                self._chunk_left = int(line.split(b";")[0].strip(), 16)
            except ValueError as exc:
                raise BodyError("bad chunk header") from exc

            if self._chunk_left == 0:
                self._skip_trailers()
                self.done = True
                return b""

        data = self._rfile.read(min(size, self._chunk_left))
        if not data:
            raise BodyError("the client closed the connection in the middle of a chunk")
        self._chunk_left -= len(data)
        if self._chunk_left == 0 and self._rfile.readline(1024) not in (b"\r\n", b"\n"):
            raise BodyError("chunk not followed by CRLF")
        return data

    def _skip_trailers(self) -> None:
        """Consume the trailer section that ends a chunked body."""
        while True:
            line = self._rfile.readline(65536)
            if not line:
                raise BodyError("the client closed the connection in the trailers")
            if line in (b"\r\n", b"\n"):
                return

    def read_all(self) -> bytes:
        """The rest of the body as one bytes object (for small JSON bodies)."""
        parts: list[bytes] = []
        while piece := self.read():
            parts.append(piece)
        return b"".join(parts)

    def drain(self) -> None:
        """Read and discard whatever is left, so the connection can serve the next request."""
        while self.read():
            pass


@dataclass
class StoredFile:
    """A file part written to disk: where, how big, its SHA-256."""

    path: Path
    size: int
    sha256: str


@dataclass
class MultipartForm:
    """The parts of a multipart form: text parts by name, file parts as stored files."""

    texts: dict[str, str] = field(default_factory=dict)
    files: dict[str, StoredFile] = field(default_factory=dict)

    def discard_files(self) -> None:
        """Delete the stored files (the request was refused)."""
        for stored in self.files.values():
            stored.path.unlink(missing_ok=True)
        self.files.clear()


def multipart_boundary(content_type: str | None) -> str | None:
    """The boundary when the header reads exactly ``multipart/form-data; boundary=<value>``."""
    match = _MULTIPART_TYPE.match(content_type or "")
    return match.group(1) if match else None


class _PartSink:
    """Where the bytes of the current part go: a file, a text buffer, or nowhere."""

    def __init__(self, name: str | None, to_file: bool, new_path: Callable[[], Path]) -> None:
        self.name = name
        self.text = bytearray()
        self.path: Path | None = None
        self._file: BinaryIO | None = None
        self._hash = hashlib.sha256()
        self.size = 0
        self._keep_text = name is not None and not to_file
        if name is not None and to_file:
            self.path = new_path()
            self._file = self.path.open("wb")

    def write(self, data: bytes) -> None:
        if not data:
            return
        if self._file is not None:
            self._file.write(data)
            self._hash.update(data)
            self.size += len(data)
        elif self._keep_text:
            self.text += data

    def close(self) -> StoredFile | None:
        if self._file is None or self.path is None:
            return None
        self._file.close()
        return StoredFile(self.path, self.size, self._hash.hexdigest())

    def abort(self) -> None:
        if self._file is not None and self.path is not None:
            self._file.close()
            self.path.unlink(missing_ok=True)


def _part_name(header_block: bytes) -> str:
    """The ``name`` of a part from its ``Content-Disposition: form-data; name="..."`` header.

    Raises:
        MultipartError: The part has no such header, or the header has no quoted ``name``
            (the server's parser then fails on the whole request).
    """
    lines = header_block.decode("utf-8", "replace").split("\r\n")
    found = next((m for m in map(_DISPOSITION.fullmatch, lines) if m is not None), None)
    if found is None:
        raise MultipartError("a part without a Content-Disposition: form-data header")

    parameters = found.group(1)
    name: str | None = None
    while parameters:
        pair = _PARAMETER_PAIR.match(parameters)
        if pair is not None:
            if pair.group(1) == "name":
                name = pair.group(2)
            parameters = parameters[pair.end() :]
            continue
        flag = _PARAMETER_FLAG.match(parameters)
        if flag is None:
            break
        parameters = parameters[flag.end() :]
    if name is None:
        raise MultipartError('a part without a quoted name="..." parameter')
    return name


def parse_multipart(
    body: BodyReader,
    boundary: str,
    file_parts: Collection[str],
    new_path: Callable[[], Path],
) -> MultipartForm:
    """Parse a multipart form from a body stream without holding file parts in memory.

    Args:
        body: The request body.
        boundary: The boundary from the ``Content-Type`` header.
        file_parts: Names of the parts to stream to disk; other parts are kept as text.
        new_path: Gives a fresh file path for each file part.

    Returns:
        The parsed form. A repeated part name keeps the first part (the server looks parts up
        by name and takes the first).

    Raises:
        MultipartError: The body does not follow the multipart framing, a part has no header
            block or no ``Content-Disposition: form-data`` header with a quoted ``name``, or
            the closing delimiter is not followed by a line break. The server's parser fails
            on all of these.
        BodyError: The request framing broke while reading.
    """
    # A CRLF in front makes the first delimiter look like every other one.
    delimiter = b"\r\n--" + boundary.encode("latin-1")
    keep = len(delimiter) - 1
    buffer = b"\r\n"
    form = MultipartForm()
    sink: _PartSink | None = None
    state = "preamble"

    def more() -> bool:
        nonlocal buffer
        piece = body.read()
        buffer += piece
        return bool(piece)

    try:
        while True:
            if state in ("preamble", "body"):
                index = buffer.find(delimiter)
                if index < 0:
                    if sink is not None and len(buffer) > keep:
                        sink.write(buffer[:-keep])
                        buffer = buffer[-keep:]
                    elif sink is None and len(buffer) > keep:
                        buffer = buffer[-keep:]
                    if not more():
                        raise MultipartError("the body ended inside a part")
                    continue

                if sink is not None:
                    sink.write(buffer[:index])
                    _finish_part(sink, form)
                    sink = None
                buffer = buffer[index + len(delimiter) :]
                state = "delimiter"

            elif state == "delimiter":
                if len(buffer) < 2 and more():
                    continue
                line_end = buffer.find(b"\r\n")
                if buffer.startswith(b"--"):
                    # The closing delimiter, which needs its line break too (blanks allowed).
                    if line_end < 0 and len(buffer) <= 1024 and more():
                        continue
                    if line_end < 0 or buffer[2:line_end].strip(b" \t"):
                        raise MultipartError("the closing delimiter is not followed by CRLF")
                    body.drain()
                    return form
                if line_end < 0:
                    if len(buffer) > 1024 or not more():
                        raise MultipartError("no line break after a delimiter")
                    continue
                if buffer[:line_end].strip(b" \t"):
                    raise MultipartError("text after a delimiter")
                buffer = buffer[line_end + 2 :]
                state = "headers"

            else:  # headers
                if buffer.startswith(b"\r\n"):
                    raise MultipartError("a part without headers")
                end = buffer.find(b"\r\n\r\n")
                if end < 0:
                    if len(buffer) > _MAX_PART_HEADER or not more():
                        raise MultipartError("unterminated part headers")
                    continue
                header_block, buffer = buffer[:end], buffer[end + 4 :]

                name = _part_name(header_block)
                if name in form.texts or name in form.files:
                    # Only the first part of a name counts: read past this one.
                    sink = _PartSink(None, False, new_path)
                else:
                    sink = _PartSink(name, name in file_parts, new_path)
                state = "body"
    except BaseException:
        if sink is not None:
            sink.abort()
        form.discard_files()
        raise


def _finish_part(sink: _PartSink, form: MultipartForm) -> None:
    """Record a completed part in the form (skipped parts have no name)."""
    if sink.name is None:
        return
    stored = sink.close()
    if stored is not None:
        form.files[sink.name] = stored
    else:
        form.texts[sink.name] = bytes(sink.text).decode("utf-8", "replace")
