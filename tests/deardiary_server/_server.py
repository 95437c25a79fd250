"""The HTTP side of the test server: threads, keep-alive, faults, outages and control routes.

:class:`DearDiaryTestServer` serves :class:`~._api.Api` on ``127.0.0.1`` with a
``ThreadingHTTPServer`` speaking HTTP/1.1 with keep-alive. Fault rules are applied around the
API (never to ``/_test/...`` control routes), and an outage closes the listening socket and
every open connection, then listens again on the same port.
"""

from __future__ import annotations

import contextlib
import http
import logging
import shutil
import socket
import ssl
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

from ._api import Api, Response, generic_response
from ._body import CHUNK_SIZE, BodyError, BodyReader
from ._db import ConstraintError, Database, Id
from ._faults import FAULT_KINDS, FaultInjector, FaultRule
from ._wire import JSON_CONTENT_TYPE, GenericError, dumps, read_json

logger = logging.getLogger(__name__)

_WRITE_METHODS = ("POST", "PATCH", "DELETE")


class _HTTPServer(ThreadingHTTPServer):
    """A threading server that knows its owner and keeps quiet about broken connections."""

    daemon_threads = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], owner: DearDiaryTestServer) -> None:
        self.owner = owner
        super().__init__(address, _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        logger.debug("connection from %s ended with an error", client_address, exc_info=True)


class _Handler(BaseHTTPRequestHandler):
    """Hands every request to the owning server; silent, keep-alive, no Nagle delay."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    timeout = 300
    server: _HTTPServer

    def setup(self) -> None:
        super().setup()
        self.server.owner._track(self.connection, add=True)

    def finish(self) -> None:
        try:
            super().finish()
        except OSError:
            pass
        finally:
            self.server.owner._track(self.connection, add=False)

    def log_message(self, format: str, *args: Any) -> None:
        """Never log requests (they may carry tokens)."""

    def do_GET(self) -> None:
        self.server.owner._serve(self)

    do_POST = do_PATCH = do_DELETE = do_PUT = do_OPTIONS = do_HEAD = do_GET


class DearDiaryTestServer:
    """A DearDiary v0.9.1-compatible server on 127.0.0.1, backed by sqlite.

    Args:
        auth: Require tokens (``DEARDIARY_ENABLE_AUTH``).
        id_kind: ``"int"`` (v0.9.1 sequences) or ``"uuid"`` (the ``c0df1b0`` build).
        token_lifetime: Token lifetime in seconds (the real server uses 24 hours).
        data_dir: Where the database file and the resource bytes live; a temporary directory
            (removed by :meth:`stop`) by default. A directory that already holds a database is
            reused, like a server restarted on the same files.
        port: The port; 0 picks a free one. Outages keep the port.
        seed: Seed of the fault injector's random source.
        tls: Serve HTTPS with this server-side context (the URL is then ``https://``).
    """

    def __init__(
        self,
        auth: bool = False,
        id_kind: str = "int",
        token_lifetime: float = 86400.0,
        data_dir: str | Path | None = None,
        port: int = 0,
        seed: int = 0,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        if id_kind not in ("int", "uuid"):
            msg = f"id_kind must be 'int' or 'uuid', got {id_kind!r}"
            raise ValueError(msg)
        self.auth = auth
        self.id_kind = id_kind
        self.token_lifetime = token_lifetime
        self._data_dir_arg = None if data_dir is None else Path(data_dir)
        self._port = port
        self._tls = tls
        self._faults = FaultInjector(seed)

        self._state_lock = threading.RLock()
        self._stats_lock = threading.Lock()
        self._connections: set[socket.socket] = set()
        self._counters = {"requests": 0, "writes_applied": 0, "connections": 0}
        self._responses: dict[str, int] = {}
        self._httpd: _HTTPServer | None = None
        self._serve_thread: threading.Thread | None = None
        self._timers: list[threading.Timer] = []
        self._owns_data_dir = False
        self._stopped = False
        self._db: Database | None = None
        self._api: Api | None = None
        self.data_dir: Path | None = None

    # --- lifecycle ----------------------------------------------------------------------------

    def start(self) -> DearDiaryTestServer:
        """Open the database and start listening; returns the server itself."""
        with self._state_lock:
            if self._api is not None:
                raise RuntimeError("the server is already started")
            if self._data_dir_arg is None:
                self.data_dir = Path(tempfile.mkdtemp(prefix="deardiary-server-"))
                self._owns_data_dir = True
            else:
                self.data_dir = self._data_dir_arg
                self.data_dir.mkdir(parents=True, exist_ok=True)

            self._db = Database(self.data_dir / "deardiary.sqlite", self.id_kind)
            self._api = Api(
                self._db,
                auth=self.auth,
                token_lifetime=self.token_lifetime,
                artifact_dir=self.data_dir / "artifacts",
            )
            self._listen()
        return self

    def stop(self) -> None:
        """Stop listening, close every connection and the database; idempotent."""
        with self._state_lock:
            if self._stopped or self._api is None:
                self._stopped = True
                return
            self._stopped = True
            for timer in self._timers:
                timer.cancel()
            self._timers.clear()
        self._unlisten()

        deadline = time.monotonic() + 5.0
        while self._connections and time.monotonic() < deadline:
            time.sleep(0.01)
        if self._db is not None:
            self._db.close()
        if self._owns_data_dir and self.data_dir is not None:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> DearDiaryTestServer:
        return self if self._api is not None else self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def port(self) -> int:
        """The listening port (kept across outages)."""
        return self._port

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT`` (``https://`` with TLS)."""
        scheme = "https" if self._tls is not None else "http"
        return f"{scheme}://127.0.0.1:{self._port}"

    @property
    def api(self) -> Api:
        """The route implementation (for white-box helpers)."""
        if self._api is None:
            raise RuntimeError("start() the server first")
        return self._api

    def _listen(self) -> None:
        """Bind the port and serve in a background thread."""
        httpd = _HTTPServer(("127.0.0.1", self._port), self)
        self._port = httpd.server_address[1]
        if self._tls is not None:
            # The handshake runs when a request handler first reads, on its own thread.
            httpd.socket = self._tls.wrap_socket(
                httpd.socket, server_side=True, do_handshake_on_connect=False
            )
        thread = threading.Thread(
            target=httpd.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"deardiary-server-{self._port}",
            daemon=True,
        )
        thread.start()
        self._httpd, self._serve_thread = httpd, thread

    def _unlisten(self) -> None:
        """Close the listening socket and every open connection."""
        with self._state_lock:
            httpd, thread = self._httpd, self._serve_thread
            self._httpd = self._serve_thread = None
        if httpd is not None:
            httpd.shutdown()
            httpd.server_close()
        if thread is not None:
            thread.join(timeout=5.0)

        with self._stats_lock:
            connections = list(self._connections)
        for connection in connections:
            _shutdown(connection)

    def _track(self, connection: socket.socket, *, add: bool) -> None:
        with self._stats_lock:
            if add:
                self._connections.add(connection)
                self._counters["connections"] += 1
            else:
                self._connections.discard(connection)

    # --- outages ------------------------------------------------------------------------------

    @property
    def listening(self) -> bool:
        """Whether the server accepts connections (false during an outage)."""
        return self._httpd is not None

    def begin_outage(self) -> None:
        """Stop listening now: new connections are refused and open ones are closed."""
        self._unlisten()

    def end_outage(self) -> None:
        """Listen again on the same port (no-op when already listening or stopped)."""
        with self._state_lock:
            if self._stopped or self._httpd is not None:
                return
            deadline = time.monotonic() + 10.0
            while True:
                try:
                    self._listen()
                    return
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)

    def outage(self, seconds: float) -> None:
        """Refuse connections for ``seconds``, then listen again on the same port."""
        self.begin_outage()
        timer = threading.Timer(seconds, self._end_outage_quietly)
        timer.daemon = True
        with self._state_lock:
            self._timers.append(timer)
        timer.start()

    def _end_outage_quietly(self) -> None:
        try:
            self.end_outage()
        except OSError:
            logger.exception("could not listen again on port %s after an outage", self._port)

    # --- faults and counters ------------------------------------------------------------------

    def add_fault(self, rule: FaultRule) -> None:
        """Append a fault rule (see :class:`FaultRule`)."""
        self._faults.add(rule)

    def clear_faults(self) -> None:
        """Remove every fault rule."""
        self._faults.clear()

    @property
    def faults(self) -> list[FaultRule]:
        """The active fault rules."""
        return self._faults.rules()

    @property
    def stats(self) -> dict[str, Any]:
        """Counters: ``requests`` (outside ``/_test``), ``faults`` fired per kind,
        ``writes_applied`` (POST/PATCH/DELETE whose handler succeeded, dropped answers
        included), ``responses`` by status code (answers actually sent) and ``connections``
        accepted (control routes included)."""
        with self._stats_lock:
            stats: dict[str, Any] = dict(self._counters)
            stats["responses"] = dict(self._responses)
        stats["faults"] = {kind: self._faults.fired[kind] for kind in FAULT_KINDS}
        return stats

    def _count(self, name: str) -> None:
        with self._stats_lock:
            self._counters[name] += 1

    # --- direct helpers for tests ---------------------------------------------------------------

    def create_user(
        self,
        username: str,
        password: str,
        is_admin: bool = False,
        *,
        first_name: str = "",
        last_name: str = "",
    ) -> Id:
        """Insert a user straight into the database and return its id.

        Raises:
            ValueError: The username is taken or empty.
        """
        try:
            return self.api.create_user(
                username, password, is_admin=is_admin, first_name=first_name, last_name=last_name
            )
        except ConstraintError as exc:
            msg = f"cannot create user {username!r}: the name is empty or taken"
            raise ValueError(msg) from exc

    def grant(
        self,
        user_id: Id,
        project_id: Id,
        create: bool = True,
        read: bool = True,
        update: bool = True,
        delete: bool = True,
    ) -> Id:
        """Give a user permissions on a project (insert or overwrite the row); returns its id."""
        db = self.api.db
        flags = [int(create), int(read), int(update), int(delete)]
        existing = db.row(
            "SELECT id FROM user_permission WHERE user_id = ? AND project_id = ?",
            (user_id, project_id),
        )
        if existing is not None:
            db.write(
                "UPDATE user_permission SET create_permission = ?, read_permission = ?,"
                " update_permission = ?, delete_permission = ? WHERE id = ?",
                [*flags, existing["id"]],
            )
            permission_id: Id = existing["id"]
            return permission_id
        return db.insert(
            "user_permission",
            {
                "user_id": user_id,
                "project_id": project_id,
                "create_permission": flags[0],
                "read_permission": flags[1],
                "update_permission": flags[2],
                "delete_permission": flags[3],
            },
        )

    def sign_in_token(self, username: str, *, lifetime: float | None = None) -> str:
        """Mint a token for a user without a request (a negative lifetime gives an expired one).

        Raises:
            KeyError: No such user.
        """
        user = self.api.db.row('SELECT * FROM "user" WHERE username = ?', (username,))
        if user is None:
            raise KeyError(f"no user named {username!r}")
        return self.api.token_for(user, lifetime)

    def query(self, sql: str, params: tuple[Any, ...] | list[Any] = ()) -> list[dict[str, Any]]:
        """Run SQL on the server's database and return the rows as dicts.

        Tables are named as upstream (``user``, ``project``, ``experiment``, ``iteration``,
        ``parameter``, ``metric``, ``resource``, ``tag``, ``model``, ``model_version``, ...);
        booleans are 0/1 and date-times text ``YYYY-MM-DDTHH:MM:SS.sss``.
        """
        return self.api.db.rows(sql, params)

    # --- request handling -----------------------------------------------------------------------

    def _serve(self, handler: _Handler) -> None:
        """Answer one request: control route, or faults around the API."""
        method = handler.command
        target = handler.path
        split = urlsplit(target)
        path = split.path

        try:
            body = BodyReader(handler.rfile, handler.headers)
        except BodyError:
            handler.close_connection = True
            self._send(handler, generic_response(400))
            return

        try:
            if path == "/_test" or path.startswith("/_test/"):
                self._control(handler, method, path, body)
                return

            self._count("requests")
            decision = self._faults.decide(method, path)
            if decision.delay:
                time.sleep(decision.delay)
            rule = decision.rule

            if rule is not None and rule.kind in ("status", "drop_before"):
                body.drain()
                if rule.kind == "drop_before":
                    _drop(handler)
                else:
                    self._send(handler, _fault_response(rule))
                return

            response = self.api.handle(method, target, path, split.query, handler.headers, body)
            body.drain()
            if method in _WRITE_METHODS and response.status < 300 and not _is_auth(path):
                self._count("writes_applied")

            if rule is not None and rule.kind == "drop_after":
                _drop(handler)
                return
            self._send(handler, response)
        except (BodyError, OSError) as exc:
            logger.debug("connection broken during %s %s: %r", method, path, exc)
            handler.close_connection = True

    def _send(self, handler: _Handler, response: Response, *, count: bool = True) -> None:
        """Write a response; small bodies go out with the headers in one write."""
        size = response.file.stat().st_size if response.file is not None else len(response.body)
        try:
            phrase = http.HTTPStatus(response.status).phrase
        except ValueError:
            phrase = "Unknown"

        lines = [f"HTTP/1.1 {response.status} {phrase}", f"Date: {handler.date_time_string()}"]
        if response.content_type is not None:
            lines.append(f"Content-Type: {response.content_type}")
        lines.append(f"Content-Length: {size}")
        lines.extend(f"{name}: {value}" for name, value in response.headers)
        if handler.close_connection:
            lines.append("Connection: close")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

        if count:
            with self._stats_lock:
                key = str(response.status)
                self._responses[key] = self._responses.get(key, 0) + 1

        if handler.command == "HEAD":
            handler.wfile.write(head)
        elif response.file is None:
            handler.wfile.write(head + response.body)
        else:
            handler.wfile.write(head)
            with response.file.open("rb") as stream:
                while chunk := stream.read(CHUNK_SIZE):
                    handler.wfile.write(chunk)

    # --- control routes -----------------------------------------------------------------------

    def _control(self, handler: _Handler, method: str, path: str, body: BodyReader) -> None:
        """``/_test/...``: fault rules, outages, counters and users, without auth or faults."""
        route = (method, path.rstrip("/"))
        outage_seconds: float | None = None
        try:
            if route == ("POST", "/_test/faults"):
                self.add_fault(FaultRule.from_json(_control_json(body)))
                response = Response.json(201, {"faults": len(self.faults)})
            elif route == ("DELETE", "/_test/faults"):
                self.clear_faults()
                response = Response.json(200, {"message": "OK"})
            elif route == ("GET", "/_test/faults"):
                response = Response.json(200, [rule.to_json() for rule in self.faults])
            elif route == ("GET", "/_test/stats"):
                response = Response.json(200, self.stats)
            elif route == ("POST", "/_test/outage"):
                outage_seconds = float(_control_json(body)["seconds"])
                response = Response.json(200, {"message": "OK", "seconds": outage_seconds})
                handler.close_connection = True
            elif route == ("POST", "/_test/users"):
                data = _control_json(body)
                user_id = self.create_user(
                    str(data["username"]), str(data["password"]), bool(data.get("is_admin"))
                )
                response = Response.json(201, {"user_id": user_id})
            elif route == ("POST", "/_test/token"):
                data = _control_json(body)
                token = self.sign_in_token(str(data["username"]), lifetime=data.get("lifetime"))
                response = Response.json(200, {"access_token": token})
            else:
                response = Response(404)
        except (KeyError, TypeError, ValueError, GenericError) as exc:
            response = Response.json(400, {"message": f"bad control request: {exc}"})

        body.drain()
        self._send(handler, response, count=False)
        if outage_seconds is not None:
            # After the answer is out: the outage closes this connection too.
            threading.Thread(
                target=self.outage, args=(outage_seconds,), name="deardiary-outage", daemon=True
            ).start()


def _control_json(body: BodyReader) -> dict[str, Any]:
    data = read_json(body.read_all() or b"{}")
    if not isinstance(data, dict):
        raise TypeError("the body must be a JSON object")
    return data


def _fault_response(rule: FaultRule) -> Response:
    """The answer of a ``status`` fault: the rule's body, or the framework's generic one."""
    if rule.body is not None:
        response = Response(rule.status, dumps(rule.body), JSON_CONTENT_TYPE)
    else:
        response = generic_response(rule.status)
    response.headers.extend(rule.headers.items())
    return response


def _shutdown(connection: socket.socket) -> None:
    with contextlib.suppress(OSError):
        connection.shutdown(socket.SHUT_RDWR)


def _drop(handler: _Handler) -> None:
    """Close the connection without an answer."""
    handler.close_connection = True
    _shutdown(handler.connection)


def _is_auth(path: str) -> bool:
    """Whether a path is one of the sign-in routes (which write nothing)."""
    segments = [segment for segment in path.split("/") if segment]
    return bool(segments) and segments[0] == "auth"
