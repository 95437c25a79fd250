"""The sender process: metric batches sent to the server by a child process.

Why a process: a Python thread that sends HTTP requests needs the interpreter lock to build each
request and to read each answer, and every socket call hands the lock to the training loop and
takes it back. With one small request per training step, that costs the training loop several
hundred microseconds per step (the benchmark ``benchmarks/bench_trainer_fit.py`` shows it), no
matter how little the thread does. A child process has its own interpreter: the training loop
pays for one message per delivery cycle instead of one request per step.

The writer (:mod:`~.writer`) uses it for metric batches to a server reached without a proxy or
client certificates, over ``http://`` or ``https://`` (verified with the CA bundle the HTTP
backend's session uses); everything else, every retry and every check still goes through the
writer's own threads. When the child cannot start, or stops, the writer sends
from its threads again, and the batches the child had not answered count as "may have landed"
and are checked like any other lost answer.

Messages go over the child's standard input and output, each one a 4-byte big-endian length
followed by a pickle::

    parent -> child   ("open", host, port, prefix, timeout, connections, tls)  first, once
                      ("send", path, headers, [(token, step, when, items), ...])
    child -> parent   ("ready",)                                                once connected
                      ("done", [(token, status, retry_after, body), ...])
                      where a request that got no answer has status -1, and retry_after and
                      body are the transport error's class name and message

The child exits as soon as its input closes (the parent closed it, or died), and ignores
SIGINT and SIGTERM: a Ctrl-C or a scheduler's SIGTERM is for the parent, which decides what
happens to the run and still needs the child to deliver what is pending.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import json
import logging
import os
import pickle
import queue
import selectors
import signal
import socket
import ssl
import struct
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import IO, Any

__all__ = ["Answer", "BatchTarget", "SenderProcess", "main"]

logger = logging.getLogger(__name__)

#: One answer: (token, status or -1, Retry-After header or error class, body or error message).
Answer = tuple[int, int, Any, Any]

#: Host, port, path prefix, timeout, and for TLS (verify, CA file, CA directory), else None.
BatchTarget = tuple[str, int, str, float, "tuple[bool, str | None, str | None] | None"]

#: Seconds the child keeps collecting answers before it reports them, while requests it was
#: given are still running: one message per burst rather than one per request.
LINGER = 0.02

_LENGTH = struct.Struct(">I")


def _write(sink: IO[bytes], message: object) -> None:
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    sink.write(_LENGTH.pack(len(data)) + data)
    sink.flush()


def _read(source: IO[bytes]) -> Any:
    """Read one message; ``None`` at the end of the stream."""
    head = source.read(_LENGTH.size)
    if len(head) < _LENGTH.size:
        return None
    (size,) = _LENGTH.unpack(head)
    data = source.read(size)
    if len(data) < size:
        return None
    return pickle.loads(data)


# -- parent side ------------------------------------------------------------------------------


class SenderProcess:
    """A child process that posts metric batches to one server and reports the answers.

    Create it with :meth:`start`. Answers arrive on a background thread, through
    ``on_answers``; ``exited`` turns true once the child has stopped and every answer it sent
    has been handed over.

    Args:
        process: The started child.
        on_answers: Called (on the reader thread) with each message of answers.
        on_exit: Called (on the reader thread) once the child's output has ended.
    """

    def __init__(
        self,
        process: subprocess.Popen[bytes],
        on_answers: Callable[[list[Answer]], None],
        on_exit: Callable[[], None],
    ) -> None:
        self._process = process
        self._on_answers = on_answers
        self._on_exit = on_exit
        self._outgoing: queue.SimpleQueue[tuple[Any, ...] | None] = queue.SimpleQueue()
        self.ready = False
        self.exited = False
        #: Answers received so far (each one a batch request the child finished).
        self.answered = 0
        self._feeder = threading.Thread(target=self._feed, name="deardiary-courier-in", daemon=True)
        self._reader = threading.Thread(
            target=self._read_answers, name="deardiary-courier-out", daemon=True
        )
        self._feeder.start()
        self._reader.start()

    @classmethod
    def start(
        cls,
        target: BatchTarget,
        connections: int,
        on_answers: Callable[[list[Answer]], None],
        on_exit: Callable[[], None],
    ) -> SenderProcess | None:
        """Start the child; ``None`` (and a log line) when no process can be started here.

        Args:
            target: Where and how to post (:meth:`HTTPBackend.batch_target
                <deardiary_lightning.backends.http.HTTPBackend.batch_target>`).
            connections: Requests the child keeps in flight at once (one connection each).
            on_answers: Called (on a background thread) with each message of answers.
            on_exit: Called (on a background thread) once the child has stopped.
        """
        if os.name != "posix":
            return None  # the child's selector loop needs pipes it can poll
        if not sys.executable:
            logger.info("no Python executable to start the sender process; sending from threads")
            return None
        script = os.path.abspath(__file__)
        if not os.path.isfile(script):
            logger.info("the sender process needs %s as a file; sending from threads", script)
            return None
        # -I: the child needs the standard library only, whatever the environment says.
        command = [sys.executable, "-I", script]
        try:
            process = subprocess.Popen(
                command,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                close_fds=True,
                start_new_session=True,
            )
        except OSError as exc:
            logger.info("could not start the sender process (%s); sending from threads", exc)
            return None
        sender = cls(process, on_answers, on_exit)
        sender._outgoing.put(("open", *target[:4], connections, target[4]))
        _started.add(sender)
        return sender

    @property
    def pid(self) -> int:
        """The child's process id."""
        return self._process.pid

    def send(
        self,
        path: str,
        headers: dict[str, str],
        batches: Sequence[tuple[int, int, datetime, list[tuple[str, float]]]],
    ) -> None:
        """Hand batches to the child; returns at once.

        Args:
            path: The batch route's path after the base URL.
            headers: The request headers (content type, authorization).
            batches: ``(token, step, recorded_at, [(key, value), ...])`` per request; the
                token comes back with the answer.
        """
        self._outgoing.put(("send", path, headers, list(batches)))

    def stop(self, timeout: float) -> None:
        """Close the child's input, wait up to ``timeout`` seconds for it to exit, then kill it."""
        self._outgoing.put(None)
        try:
            self._process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait(timeout=5.0)
        self._feeder.join(timeout=1.0)
        self._reader.join(timeout=1.0)

    def _feed(self) -> None:
        """Write the queued messages to the child (on its own thread: a full pipe blocks)."""
        sink = self._process.stdin
        assert sink is not None
        try:
            while True:
                message = self._outgoing.get()
                if message is None:
                    break
                _write(sink, message)
        except (OSError, ValueError):
            pass  # the child is gone: the reader reports it
        finally:
            with contextlib.suppress(OSError):
                sink.close()

    def _read_answers(self) -> None:
        source = self._process.stdout
        assert source is not None
        try:
            while True:
                message = _read(source)
                if message is None:
                    break
                if message[0] == "ready":
                    self.ready = True
                elif message[0] == "done":
                    self.answered += len(message[1])
                    self._on_answers(message[1])
        except Exception:  # pragma: no cover - a bug; the writer falls back to its threads
            logger.exception("reading the DearDiary sender process failed")
        finally:
            self.ready = False
            self.exited = True
            source.close()
            self._on_exit()


_started: weakref.WeakSet[SenderProcess] = weakref.WeakSet()


def _close_pipes_after_fork() -> None:
    """In a forked process (a DataLoader worker...): let go of the pipes to the children.

    Otherwise the child would not see its input close when the process that started it closes
    it or dies, for as long as the forked process lives.
    """
    senders = list(_started)
    if not senders:
        return
    # Point the descriptors at /dev/null rather than close them: the file objects still own
    # the numbers, and closing them later must not close a file this process opened since.
    null = os.open(os.devnull, os.O_RDWR)
    try:
        for sender in senders:
            for pipe in (sender._process.stdin, sender._process.stdout):
                if pipe is not None:
                    with contextlib.suppress(OSError, ValueError):
                        os.dup2(null, pipe.fileno())
    finally:
        os.close(null)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_close_pipes_after_fork)


# -- child side -------------------------------------------------------------------------------
#
# The child runs this file as a script (``python -I courier.py``), so everything below uses the
# standard library only: it starts in a few tens of milliseconds and takes little memory. One
# thread, non-blocking sockets and a selector: no interpreter lock to share, and the fewest
# system calls per request.

#: Seconds a queued batch waits for the first connection before more connections are used:
#: one connection keeps up with a fast server (fewer threads busy on it, less CPU on both
#: sides); a slow or distant one gets several, well before the writer's spool deadline.
SPREAD_AFTER = 0.1

_ANSWER_HEAD_LIMIT = 64 * 1024


class _Lost(Exception):
    """The exchange failed; ``kind`` is the transport error's class name."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


class _Connection:
    """One kept-alive connection and the request on it, if any."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.connected = False  # the TCP connection is up
        self.handshaking = False  # TLS: the handshake has not finished
        self.wants = selectors.EVENT_WRITE  # what the next step waits for
        self.token: int | None = None
        self.deadline = 0.0
        self.outgoing = b""
        self.sent_any = False
        self.incoming = bytearray()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


def _tls_context(verify: bool, cafile: str | None, capath: str | None) -> ssl.SSLContext:
    """The client TLS context: the CA bundle the parent's HTTP session uses, or none."""
    if verify:
        return ssl.create_default_context(cafile=cafile, capath=capath)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


class _Child:
    """Posts the batches it is given over up to ``connections`` kept-alive connections."""

    def __init__(
        self,
        host: str,
        port: int,
        prefix: str,
        timeout: float,
        connections: int,
        tls: tuple[bool, str | None, str | None] | None = None,
    ) -> None:
        self._host = host
        self._port = port
        self._prefix = prefix
        self._timeout = timeout
        self._limit = max(1, connections)
        self._tls = _tls_context(*tls) if tls is not None else None
        default_port = 443 if tls is not None else 80
        name = f"[{host}]" if ":" in host and not host.startswith("[") else host
        self._host_header = name if port == default_port else f"{name}:{port}"
        self._selector = selectors.DefaultSelector()
        self._idle: list[_Connection] = []
        self._busy: list[_Connection] = []
        self._jobs: collections.deque[tuple[float, bytes, int]] = collections.deque()
        self._answers: list[Answer] = []
        self._first_answer = 0.0

    # requests ...................................................................................

    def take(self, path: str, headers: dict[str, str], batches: list[tuple[Any, ...]]) -> None:
        """Queue one request per batch."""
        now = time.monotonic()
        head = f"POST {self._prefix}{path} HTTP/1.1\r\nHost: {self._host_header}\r\n"
        head += "Accept-Encoding: identity\r\n"
        head += "".join(f"{name}: {value}\r\n" for name, value in headers.items())
        for token, step, when, items in batches:
            body = {
                "metrics": [{"key": key, "value": value} for key, value in items],
                "step": step,
                # As wire.format_datetime: naive, milliseconds.
                "recorded_at": when.isoformat(timespec="milliseconds"),
            }
            try:
                data = json.dumps(body, allow_nan=False, separators=(",", ":")).encode()
            except (TypeError, ValueError) as exc:
                self._answer(token, -1, "ConnectError", f"the batch cannot be encoded: {exc}")
                continue
            request = f"{head}Content-Length: {len(data)}\r\n\r\n".encode() + data
            self._jobs.append((now, request, token))

    def _start_jobs(self, now: float) -> None:
        """Put queued requests on idle connections, opening connections as needed."""
        while self._jobs:
            spread = now - self._jobs[0][0] >= SPREAD_AFTER
            allowed = self._limit if spread else 1
            if self._idle:
                connection = self._idle.pop()
            elif len(self._busy) < allowed:
                try:
                    connection = self._open()
                except _Lost as exc:
                    _, _, token = self._jobs.popleft()
                    self._answer(token, -1, exc.kind, str(exc))
                    continue
            else:
                return
            _, request, token = self._jobs.popleft()
            connection.token = token
            connection.deadline = now + self._timeout
            connection.outgoing = request
            connection.sent_any = False
            connection.incoming.clear()
            self._busy.append(connection)
            self._advance(connection)

    def _open(self) -> _Connection:
        try:
            family, kind, proto, _, address = socket.getaddrinfo(
                self._host, self._port, type=socket.SOCK_STREAM
            )[0]
            sock = socket.socket(family, kind, proto)
        except OSError as exc:
            msg = f"could not connect to the DearDiary server ({exc}); is it running?"
            raise _Lost("ConnectError", msg) from exc
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        connection = _Connection(sock)
        error = sock.connect_ex(address)
        if error == 0:
            self._connected(connection)
        elif error not in (errno.EINPROGRESS, errno.EWOULDBLOCK, errno.EAGAIN):
            connection.close()
            msg = f"could not connect to the DearDiary server ({os.strerror(error)})"
            raise _Lost("ConnectError", msg)
        return connection

    def _connected(self, connection: _Connection) -> None:
        connection.connected = True
        if self._tls is not None:
            connection.sock = self._tls.wrap_socket(
                connection.sock, server_hostname=self._host, do_handshake_on_connect=False
            )
            connection.handshaking = True

    def _advance(self, connection: _Connection) -> None:
        """Move the exchange on a busy connection as far as it goes without waiting."""
        if connection.connected and connection.handshaking:
            try:
                connection.sock.do_handshake()  # type: ignore[attr-defined]
            except ssl.SSLWantReadError:
                self._wait_for(connection, selectors.EVENT_READ)
                return
            except ssl.SSLWantWriteError:
                self._wait_for(connection, selectors.EVENT_WRITE)
                return
            except OSError as exc:
                # Nothing of the request was sent: a certificate the CA bundle does not
                # accept, a server that does not speak TLS...
                token = connection.token
                self._drop(connection)
                assert token is not None
                msg = f"the TLS handshake with the DearDiary server failed ({exc}); not applied"
                self._answer(token, -1, "ConnectError", msg)
                return
            connection.handshaking = False
        if not connection.connected:
            self._wait_for(connection, selectors.EVENT_WRITE)
            return
        while connection.outgoing:
            try:
                sent = connection.sock.send(connection.outgoing)
            except (BlockingIOError, InterruptedError, ssl.SSLWantWriteError):
                self._wait_for(connection, selectors.EVENT_WRITE)
                return
            except ssl.SSLWantReadError:
                self._wait_for(connection, selectors.EVENT_READ)
                return
            except OSError as exc:
                self._fail(connection, exc)
                return
            connection.sent_any = connection.sent_any or sent > 0
            connection.outgoing = connection.outgoing[sent:]
        self._read(connection)

    def _wait_for(self, connection: _Connection, events: int) -> None:
        connection.wants = events
        try:
            self._selector.modify(connection.sock, events, connection)
        except KeyError:
            self._selector.register(connection.sock, events, connection)

    # answers ....................................................................................

    def ready(self, connection: _Connection) -> None:
        """Move on a connection that the selector reported."""
        if connection.token is None:
            self._check_idle(connection)
            return
        if not connection.connected:
            error = connection.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if error:
                token = connection.token
                self._drop(connection)
                msg = f"could not connect to the DearDiary server ({os.strerror(error)})"
                self._answer(token, -1, "ConnectError", msg)
                return
            self._connected(connection)
        self._advance(connection)

    def _check_idle(self, connection: _Connection) -> None:
        """An idle connection became readable: the server closed it, or (TLS) sent tickets."""
        if self._tls is not None:
            try:
                data = connection.sock.recv(65536)
            except (ssl.SSLWantReadError, BlockingIOError, InterruptedError):
                return  # protocol records only (session tickets): still usable
            except OSError:
                data = b""
            if data:
                logger.debug("unexpected %d bytes on an idle connection", len(data))
        self._drop(connection)

    def _read(self, connection: _Connection) -> None:
        while True:
            try:
                data = connection.sock.recv(65536)
            except (BlockingIOError, InterruptedError, ssl.SSLWantReadError):
                self._wait_for(connection, selectors.EVENT_READ)
                return
            except ssl.SSLWantWriteError:
                self._wait_for(connection, selectors.EVENT_WRITE)
                return
            except OSError as exc:
                self._fail(connection, exc)
                return
            if not data:
                whole = _parse(connection.incoming, closed=True) if connection.incoming else None
                if whole is not None:  # an answer that ends when the connection does
                    self._finish(connection, *whole)
                    return
                self._fail(connection, ConnectionResetError("the server closed the connection"))
                return
            connection.incoming += data
            try:
                answer = _parse(connection.incoming)
            except ValueError as exc:
                self._fail(connection, exc)
                return
            if answer is not None:
                self._finish(connection, *answer)
                return

    def _finish(
        self, connection: _Connection, status: int, headers: dict[str, str], body: bytes
    ) -> None:
        token = connection.token
        assert token is not None
        self._busy.remove(connection)
        connection.token = None
        if headers.get("connection", "").lower() == "close":
            self._drop(connection)
        else:
            self._idle.append(connection)
            self._wait_for(connection, selectors.EVENT_READ)
        if status == 201:
            self._answer(token, 201, None, b"")
        else:
            self._answer(token, status, headers.get("retry-after"), body)

    def _fail(self, connection: _Connection, exc: BaseException) -> None:
        token = connection.token
        self._drop(connection)
        if token is None:
            return
        if not connection.sent_any:
            msg = f"the connection failed before the request was sent ({exc}); not applied"
            self._answer(token, -1, "ConnectError", msg)
            return
        msg = (
            f"the connection failed before the answer arrived ({type(exc).__name__}); "
            "the request may have been applied"
        )
        self._answer(token, -1, "ResponseLostError", msg)

    def _drop(self, connection: _Connection) -> None:
        connection.token = None
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(connection.sock)
        with contextlib.suppress(ValueError):
            self._busy.remove(connection)
        with contextlib.suppress(ValueError):
            self._idle.remove(connection)
        connection.close()

    def expire(self, now: float) -> None:
        """Give up on requests that have waited longer than the timeout for their answer."""
        for connection in [c for c in self._busy if c.deadline <= now]:
            token = connection.token
            self._drop(connection)
            assert token is not None
            if not connection.sent_any:
                msg = "could not connect to the DearDiary server in time; not applied"
                self._answer(token, -1, "ConnectError", msg)
            else:
                msg = "the server did not answer in time; the request may have been applied"
                self._answer(token, -1, "ReadTimeoutError", msg)

    def _answer(self, token: int, status: int, extra: Any, body: Any) -> None:
        if not self._answers:
            self._first_answer = time.monotonic()
        self._answers.append((token, status, extra, body))

    def report(self, sink: IO[bytes], now: float) -> None:
        """Send the collected answers when nothing else is running, or they have waited."""
        if not self._answers:
            return
        if (self._busy or self._jobs) and now - self._first_answer < LINGER:
            return
        answers, self._answers = self._answers, []
        _write(sink, ("done", answers))

    def wait(self, now: float) -> float | None:
        """Seconds the loop may sleep before something here needs attention."""
        moments = [c.deadline for c in self._busy]
        if self._answers:
            moments.append(self._first_answer + LINGER)
        if self._jobs and self._jobs[0][0] + SPREAD_AFTER > now:
            # When queued batches may start using more connections.
            moments.append(self._jobs[0][0] + SPREAD_AFTER)
        if not moments:
            return None
        return max(0.0, min(moments) - now)

    def run(self, source: IO[bytes], sink: IO[bytes]) -> None:
        """Serve until the parent closes the input."""
        fd = source.fileno()
        os.set_blocking(fd, False)
        self._selector.register(fd, selectors.EVENT_READ, None)
        pending = bytearray()
        while True:
            now = time.monotonic()
            self._start_jobs(now)
            self.report(sink, now)
            events = self._selector.select(self.wait(now))
            now = time.monotonic()
            for key, _ in events:
                if key.data is None:
                    if not self._take_input(fd, pending):
                        return
                elif key.data.sock.fileno() != -1:  # not dropped earlier in this round
                    self.ready(key.data)
            self.expire(now)

    def _take_input(self, fd: int, pending: bytearray) -> bool:
        """Read what the parent wrote; ``False`` once the input has closed."""
        try:
            data = os.read(fd, 1 << 20)
        except (BlockingIOError, InterruptedError):
            return True
        if not data:
            return False
        pending += data
        while len(pending) >= _LENGTH.size:
            (size,) = _LENGTH.unpack_from(pending)
            if len(pending) < _LENGTH.size + size:
                break
            message = pickle.loads(pending[_LENGTH.size : _LENGTH.size + size])
            del pending[: _LENGTH.size + size]
            _, path, headers, batches = message
            self.take(path, headers, batches)
        return True


def _parse(buffer: bytearray, *, closed: bool = False) -> tuple[int, dict[str, str], bytes] | None:
    """Read one whole answer from the start of ``buffer``; ``None`` while it is incomplete.

    Handles ``Content-Length`` and chunked bodies, bodies that end with the connection
    (``closed``: the server has closed it), and skips ``1xx`` interim answers.

    Raises:
        ValueError: The bytes are not an HTTP/1.x answer.
    """
    while True:
        end = buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(buffer) > _ANSWER_HEAD_LIMIT:
                raise ValueError("answer headers too long")
            return None
        lines = bytes(buffer[:end]).decode("latin-1").split("\r\n")
        version, _, rest = lines[0].partition(" ")
        if not version.startswith("HTTP/1."):
            raise ValueError(f"not an HTTP/1.x answer: {lines[0][:40]!r}")
        status = int(rest[:3])
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if 100 <= status < 200:
            del buffer[: end + 4]
            continue
        start = end + 4
        if headers.get("transfer-encoding", "").lower() == "chunked":
            body = _dechunk(buffer, start)
            if body is None:
                return None
            return status, headers, body
        if "content-length" not in headers and status not in (204, 304):
            if not closed:
                return None  # the body runs until the server closes the connection
            headers["connection"] = "close"
            body = bytes(buffer[start:])
            del buffer[:]
            return status, headers, body
        length = int(headers.get("content-length", "0"))
        if len(buffer) < start + length:
            return None
        body = bytes(buffer[start : start + length])
        del buffer[: start + length]
        return status, headers, body


def _dechunk(buffer: bytearray, start: int) -> bytes | None:
    """Decode a chunked body that starts at ``start``; ``None`` while it is incomplete."""
    body = bytearray()
    at = start
    while True:
        line_end = buffer.find(b"\r\n", at)
        if line_end < 0:
            return None
        size = int(bytes(buffer[at:line_end]).split(b";", 1)[0], 16)
        at = line_end + 2
        if size == 0:
            trailer_end = buffer.find(b"\r\n\r\n", at - 2)
            if trailer_end < 0:
                return None
            del buffer[: trailer_end + 4]
            return bytes(body)
        if len(buffer) < at + size + 2:
            return None
        body += buffer[at : at + size]
        at += size + 2


def main() -> None:
    """Run the child: read the opening message, then post what arrives until input ends."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    source, sink = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr  # only messages go to the parent's pipe

    # Read the opening message from the file descriptor itself: a buffered read could take
    # the start of the next message, which the loop reads from the same descriptor.
    fd = source.fileno()
    head = _read_exactly(fd, _LENGTH.size)
    body = _read_exactly(fd, _LENGTH.unpack(head)[0]) if head is not None else None
    if body is None:
        return
    _, host, port, prefix, timeout, connections, tls = pickle.loads(body)
    child = _Child(host, port, prefix, timeout, connections, tls)
    _write(sink, ("ready",))
    child.run(source, sink)


def _read_exactly(fd: int, size: int) -> bytes | None:
    data = b""
    while len(data) < size:
        chunk = os.read(fd, size - len(data))
        if not chunk:
            return None
        data += chunk
    return data


if __name__ == "__main__":
    main()
