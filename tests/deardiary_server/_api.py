"""DearDiary v0.9.1 behind one function: route, authenticate, guard and run a request.

This module knows nothing about sockets. :class:`Api` takes a parsed request (method, target,
headers and a body stream) and returns a :class:`Response`; the HTTP plumbing and the fault
injection live in ``_server``. The behaviour follows the REST contract in
``shared/deardiary-rest-api.md`` (sections 1-7, 9 and the quirks of section 10), including the
places where the real server is surprising: empty ``SET`` lists that fail, deletes stopped
halfway by foreign keys, batch ids in hash order, and so on.
"""

from __future__ import annotations

import hashlib
import http
import logging
import secrets
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from email.message import Message
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote

from ._auth import (
    check_password,
    decode_token,
    hash_password,
    issue_token,
    skewed_unix_now,
    token_expiry,
)
from ._body import BodyError, BodyReader, MultipartForm, multipart_boundary, parse_multipart
from ._db import ConstraintError, Database, Id
from ._wire import (
    JSON_CONTENT_TYPE,
    ApiError,
    Field,
    GenericError,
    conflict,
    crash,
    dumps,
    format_datetime,
    not_found,
    now_text,
    parse_body,
    server_error,
    try_parse_int,
    unprocessable,
)

logger = logging.getLogger(__name__)

PACKAGE_VERSION = "0.9.1"
DEFAULT_USERNAME = "default"
DEFAULT_PASSWORD = "default"

CORS_HEADERS = (
    ("Access-Control-Allow-Origin", "*"),
    ("Access-Control-Allow-Headers", "Authorization, Content-Type"),
    ("Access-Control-Allow-Methods", "GET, POST, PATCH, DELETE, OPTIONS"),
    ("Access-Control-Max-Age", "600"),
)

_ACTION_BY_METHOD = {"GET": "read", "POST": "create", "PATCH": "update", "DELETE": "delete"}


@dataclass
class Response:
    """An answer: status, headers and either a body or a file to stream."""

    status: int
    body: bytes = b""
    content_type: str | None = None
    headers: list[tuple[str, str]] = field(default_factory=list)
    file: Path | None = None

    @classmethod
    def json(cls, status: int, payload: Any) -> Response:
        """A JSON answer."""
        return cls(status, dumps(payload), JSON_CONTENT_TYPE)


@dataclass
class Request:
    """A routed request as the handlers see it."""

    method: str
    path: str
    target: str
    query: dict[str, str]
    headers: Message
    body: BodyReader
    params: dict[str, str] = field(default_factory=dict)
    user: dict[str, Any] | None = None


Handler = Callable[["Api", Request], Response]


@dataclass(frozen=True)
class Guard:
    """The route's authorisation rule (section 2.7).

    ``kind`` is ``open``, ``token``, ``admin``, ``self`` or ``project``; a project guard resolves
    the owning project from the path parameter ``param`` through ``resolver`` (an entity name)
    and needs the permission ``action`` (``None``: derived from the method).
    """

    kind: str
    resolver: str = ""
    param: str = "id"
    action: str | None = None


OPEN = Guard("open")
TOKEN = Guard("token")
ADMIN = Guard("admin")
SELF = Guard("self")


def _project_guard(resolver: str, param: str = "id", action: str | None = None) -> Guard:
    return Guard("project", resolver, param, action)


@dataclass
class Route:
    """A path pattern (``{name}`` segments are variables) and its methods."""

    segments: tuple[str, ...]
    endpoints: dict[str, tuple[Guard, Handler]]

    def bind(self, segments: Sequence[str]) -> dict[str, str] | None:
        """The path variables when ``segments`` fit this pattern, else ``None``."""
        if len(segments) != len(self.segments):
            return None
        params: dict[str, str] = {}
        for pattern, segment in zip(self.segments, segments, strict=True):
            if pattern.startswith("{"):
                params[pattern[1:-1]] = segment
            elif pattern != segment:
                return None
        return params

    def rank(self) -> tuple[int, ...]:
        """Literal segments win over variables, left to right (like HTTP.jl's router)."""
        return tuple(1 if pattern.startswith("{") else 0 for pattern in self.segments)


# --- serialisers ------------------------------------------------------------------------------


def _user_json(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": row["id"],
        "first_name": row["first_name"],
        "last_name": row["last_name"],
        "username": row["username"],
        "created_date": format_datetime(row["created_date"]),
        "is_admin": bool(row["is_admin"]),
    }


def _permission_json(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": row["id"],
        "user_id": row["user_id"],
        "project_id": row["project_id"],
        "create_permission": bool(row["create_permission"]),
        "read_permission": bool(row["read_permission"]),
        "update_permission": bool(row["update_permission"]),
        "delete_permission": bool(row["delete_permission"]),
    }


def _project_json(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": row["id"],
        "name": row["name"],
        "description": row["description"],
        "created_date": format_datetime(row["created_date"]),
    }


def _experiment_json(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": row["id"],
        "project_id": row["project_id"],
        "status_id": row["status_id"],
        "name": row["name"],
        "description": row["description"],
        "created_date": format_datetime(row["created_date"]),
        "end_date": format_datetime(row["end_date"]),
    }


def _iteration_json(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": row["id"],
        "experiment_id": row["experiment_id"],
        "notes": row["notes"],
        "created_date": format_datetime(row["created_date"]),
        "end_date": format_datetime(row["end_date"]),
        "parent_iteration_id": row["parent_iteration_id"],
        "status_id": row["status_id"],
        "error_message": row["error_message"],
        "julia_version": row["julia_version"],
        "git_sha": row["git_sha"],
        "git_dirty": bool(row["git_dirty"]),
        "entrypoint": row["entrypoint"],
        "project_toml": row["project_toml"],
        "manifest_toml": row["manifest_toml"],
    }


def _parameter_json(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": row["id"],
        "iteration_id": row["iteration_id"],
        "key": row["key"],
        "value": row["value"],
    }


def _metric_json(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": row["id"],
        "iteration_id": row["iteration_id"],
        "key": row["key"],
        "value": float(row["value"]),
        "step": row["step"],
        "recorded_at": format_datetime(row["recorded_at"]),
    }


def _resource_json(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": row["id"],
        "experiment_id": row["experiment_id"],
        "name": row["name"],
        "description": row["description"],
        "created_date": format_datetime(row["created_date"]),
        "updated_date": format_datetime(row["updated_date"]),
        "backend": row["backend"],
        "uri": row["uri"],
        "size_bytes": row["size_bytes"],
        "content_hash": row["content_hash"],
    }


def _tag_json(row: dict[str, Any]) -> dict[str, Any]:
    return {"id": row["id"], "value": row["value"]}


def _model_json(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": row["id"],
        "project_id": row["project_id"],
        "name": row["name"],
        "description": row["description"],
        "created_date": format_datetime(row["created_date"]),
        "updated_date": format_datetime(row["updated_date"]),
    }


def _modelversion_json(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": row["id"],
        "model_id": row["model_id"],
        "version": row["version"],
        "iteration_id": row["iteration_id"],
        "resource_id": row["resource_id"],
        "stage_id": row["stage_id"],
        "description": row["description"],
        "created_date": format_datetime(row["created_date"]),
        "updated_date": format_datetime(row["updated_date"]),
    }


def _differs(row: dict[str, Any], given: dict[str, Any]) -> bool:
    """DearDiary's change test: a null field counts as a change from any stored value."""
    for name, value in given.items():
        stored = row[name]
        if value is None:
            if stored is not None:
                return True
        elif value != stored:
            return True
    return False


def _created(name: str, new_id: Id) -> Response:
    return Response.json(201, {f"{name}_id": new_id})


_UPDATED = {"message": "UPDATED"}
_OK = {"message": "OK"}

# --- payloads ---------------------------------------------------------------------------------

_SIGN_IN: Sequence[Field] = (("username", "str", True), ("password", "str", True))
_USER_CREATE: Sequence[Field] = (
    ("first_name", "str", True),
    ("last_name", "str", True),
    ("username", "str", True),
    ("password", "str", True),
)
_USER_UPDATE: Sequence[Field] = (
    ("first_name", "str", False),
    ("last_name", "str", False),
    ("password", "str", False),
    ("is_admin", "bool", False),
)
_PROJECT_CREATE: Sequence[Field] = (("name", "str", True),)
_PROJECT_UPDATE: Sequence[Field] = (("name", "str", False), ("description", "str", False))
_PERMISSION_FLAGS = (
    "create_permission",
    "read_permission",
    "update_permission",
    "delete_permission",
)
_PERMISSION_CREATE: Sequence[Field] = tuple((flag, "bool", True) for flag in _PERMISSION_FLAGS)
_PERMISSION_UPDATE: Sequence[Field] = tuple((flag, "bool", False) for flag in _PERMISSION_FLAGS)
_EXPERIMENT_CREATE: Sequence[Field] = (("status_id", "int", True), ("name", "str", True))
_EXPERIMENT_UPDATE: Sequence[Field] = (
    ("status_id", "int", False),
    ("name", "str", False),
    ("description", "str", False),
    ("end_date", "datetime", False),
)
_ITERATION_UPDATE: Sequence[Field] = (
    ("notes", "str", False),
    ("end_date", "datetime", False),
    ("status_id", "int", False),
    ("error_message", "str", False),
)
_SNAPSHOT: Sequence[Field] = (
    ("julia_version", "str", True),
    ("git_sha", "str", True),
    ("git_dirty", "bool", True),
    ("entrypoint", "str", True),
    ("project_toml", "str", True),
    ("manifest_toml", "str", True),
)
_PARAMETER_CREATE: Sequence[Field] = (("key", "str", True), ("value", "str", True))
_PARAMETER_UPDATE: Sequence[Field] = (("key", "str", False), ("value", "str", False))
_METRIC_CREATE: Sequence[Field] = (
    ("key", "str", True),
    ("value", "float", True),
    ("step", "int", False),
    ("recorded_at", "datetime", False),
)
_METRIC_BATCH: Sequence[Field] = (
    ("metrics", "metrics", True),
    ("step", "int", False),
    ("recorded_at", "datetime", False),
)
_METRIC_UPDATE: Sequence[Field] = (
    ("key", "str", False),
    ("value", "float", False),
    ("step", "int", False),
    ("recorded_at", "datetime", False),
)
_TAG_CREATE: Sequence[Field] = (("value", "str", True),)
_MODEL_CREATE: Sequence[Field] = (("name", "str", True), ("description", "str", False))
_MODEL_UPDATE: Sequence[Field] = (("name", "str", False), ("description", "str", False))
_MODELVERSION_CREATE: Sequence[Field] = (
    ("iteration_id", "id", True),
    ("resource_id", "id", False),
    ("description", "str", False),
)
_MODELVERSION_UPDATE: Sequence[Field] = (
    ("stage_id", "int", False),
    ("description", "str", False),
    ("resource_id", "id", False),
)


class Api:
    """The DearDiary routes over one database.

    Args:
        db: The database.
        auth: Whether tokens are required (``DEARDIARY_ENABLE_AUTH``).
        token_lifetime: Token lifetime in seconds.
        artifact_dir: Where resource bytes are stored (the filesystem backend).
    """

    def __init__(
        self, db: Database, *, auth: bool, token_lifetime: float, artifact_dir: Path
    ) -> None:
        self.db = db
        self.auth = auth
        self.token_lifetime = token_lifetime
        self.artifact_dir = artifact_dir
        self.artifact_dir.mkdir(parents=True, exist_ok=True)

        secret = db.get_meta("jwt_secret")
        if secret is None:
            secret = secrets.token_hex(32)
            db.set_meta("jwt_secret", secret)
        self.jwt_secret = secret

        self._seed_default_user()
        self.routes = _build_routes()

    # --- set-up and direct helpers -------------------------------------------------------------

    @property
    def id_kind(self) -> str:
        return self.db.id_kind

    def _seed_default_user(self) -> None:
        """Insert ``default``/``default`` unless present (the insert burns an id either way)."""
        self.db.insert(
            "user",
            {
                "first_name": "Default User",
                "last_name": "",
                "username": DEFAULT_USERNAME,
                "password_hash": hash_password(DEFAULT_PASSWORD),
                "is_admin": 1,
                "created_date": now_text(),
            },
            ignore=True,
        )

    def default_user(self) -> dict[str, Any]:
        """The seeded admin."""
        row = self.db.row('SELECT * FROM "user" WHERE username = ?', (DEFAULT_USERNAME,))
        if row is None:
            raise crash("the default user is missing")
        return row

    def create_user(
        self,
        username: str,
        password: str,
        *,
        is_admin: bool = False,
        first_name: str = "",
        last_name: str = "",
    ) -> Id:
        """Insert a user directly (raises :class:`ConstraintError` on a taken name)."""
        return self.db.insert(
            "user",
            {
                "first_name": first_name,
                "last_name": last_name,
                "username": username,
                "password_hash": hash_password(password),
                "is_admin": int(is_admin),
                "created_date": now_text(),
            },
        )

    def token_for(self, user: dict[str, Any], lifetime: float | None = None) -> str:
        """Sign a token for a user row."""
        life = self.token_lifetime if lifetime is None else lifetime
        return issue_token(user["username"], user["id"], self.jwt_secret, life)

    # --- dispatch --------------------------------------------------------------------------------

    def match(self, method: str, segments: Sequence[str]) -> tuple[Route, dict[str, str]] | None:
        """Find the route of a path: one that has the method, else any that fits the path."""
        candidates: list[tuple[tuple[int, ...], Route, dict[str, str]]] = []
        for route in self.routes:
            params = route.bind(segments)
            if params is not None:
                candidates.append((route.rank(), route, params))
        if not candidates:
            return None

        candidates.sort(key=lambda item: item[0])
        for _, route, params in candidates:
            if method in route.endpoints:
                return route, params
        _, route, params = candidates[0]
        return route, params

    def handle(
        self, method: str, target: str, path: str, query: str, headers: Message, body: BodyReader
    ) -> Response:
        """Answer one request as DearDiary does.

        Args:
            method: The HTTP method.
            target: The raw request target (path and query).
            path: The path part of the target.
            query: The query string.
            headers: The request headers.
            body: The request body stream (whatever is left unread is drained by the caller).

        Returns:
            The response; unknown paths get an empty 404 without CORS headers.
        """
        segments = [segment for segment in path.split("/") if segment]
        found = self.match(method, segments)
        if found is None:
            return Response(404)

        route, params = found
        request = Request(
            method=method,
            path=path,
            target=target,
            query=dict(parse_qsl(query, keep_blank_values=True)),
            headers=headers,
            body=body,
            params=params,
        )
        response = self._run(route, request)
        response.headers.extend(CORS_HEADERS)
        return response

    def _run(self, route: Route, request: Request) -> Response:
        """CORS preflight, authentication, method check, guard and handler, errors mapped."""
        try:
            if request.method == "OPTIONS":
                return Response(200)
            request.user = self._authenticate(request)
            endpoint = route.endpoints.get(request.method)
            if endpoint is None:
                return Response(405)
            guard, handler = endpoint
            self._check_guard(guard, request)
            return handler(self, request)
        except ApiError as exc:
            return Response.json(exc.status, {"code": exc.code, "message": exc.message})
        except GenericError as exc:
            return generic_response(exc.status)
        except BodyError:
            raise
        except Exception as exc:  # the framework answers any uncaught exception with a 500
            logger.debug("uncaught %r on %s %s", exc, request.method, request.path)
            return generic_response(500)

    # --- authentication and guards ---------------------------------------------------------------

    def _is_open(self, request: Request) -> bool:
        if request.method == "POST" and request.target in ("/auth", "/auth/"):
            return True
        return request.method == "GET" and request.target.startswith("/health")

    def _authenticate(self, request: Request) -> dict[str, Any] | None:
        """The acting user: ``default`` without auth, the token's user with it (section 2.5)."""
        if not self.auth:
            return self.default_user()
        if self._is_open(request):
            return None

        # The header name is matched exactly (a lower-cased name counts as missing); when the
        # header is repeated, the headers are folded into a dictionary and the last one wins.
        values = [v for k, v in request.headers.items() if k == "Authorization"]
        if not values:
            raise ApiError(401, "TOKEN_MISSING", "Missing authorization header")
        value = values[-1]
        if " " not in value:
            raise crash("authorization header without a space")

        claims = decode_token(value.split(" ")[1], self.jwt_secret)
        if claims is None:
            raise ApiError(401, "TOKEN_INVALID", "Invalid token")
        if any(name not in claims for name in ("sub", "id", "exp")):
            raise ApiError(401, "TOKEN_PAYLOAD_INVALID", "Invalid token payload")

        # A null exp counts as expired; only an integer exp (Julia's Bool is an integer too)
        # is compared with the skewed server clock.
        expiry = claims["exp"]
        if expiry is None or (isinstance(expiry, int) and expiry < skewed_unix_now()):
            raise ApiError(401, "TOKEN_EXPIRED", "Token has expired")

        user_id = claims["id"]
        if self.id_kind == "int":
            valid = isinstance(user_id, int) and not isinstance(user_id, bool) and user_id > 0
        else:
            valid = isinstance(user_id, str) and user_id != ""
        if not valid:
            raise ApiError(401, "TOKEN_PAYLOAD_INVALID", "Invalid token payload")

        user = self.db.get("user", user_id)
        if user is None:
            raise ApiError(401, "USER_NOT_FOUND", "User not found")
        return user

    def _is_admin(self, request: Request) -> bool:
        return not self.auth or (request.user is not None and bool(request.user["is_admin"]))

    def _check_guard(self, guard: Guard, request: Request) -> None:
        """Apply the route's guard for non-admins (admins and auth-off requests pass)."""
        if guard.kind in ("open", "token") or self._is_admin(request):
            return
        assert request.user is not None

        if guard.kind == "admin":
            raise ApiError(403, "ADMIN_REQUIRED", "Admin privileges required")

        raw = request.params[guard.param]
        if guard.kind == "self":
            target = self._parse_id(raw)
            if target is None:
                raise not_found()
            if target != request.user["id"]:
                raise ApiError(403, "SAME_USER_REQUIRED", "Same user required")
            return

        project_id = self._owning_project(guard.resolver, raw)
        if project_id is None:
            raise not_found()
        action = guard.action or _ACTION_BY_METHOD[request.method]
        permission = self.db.row(
            "SELECT * FROM user_permission WHERE user_id = ? AND project_id = ?",
            (request.user["id"], project_id),
        )
        if permission is None or not permission[f"{action}_permission"]:
            raise ApiError(403, "PROJECT_PERMISSION_REQUIRED", "Project permission required")

    def _parse_id(self, raw: str) -> Id | None:
        """A raw path segment read as an id by a guard (Julia's ``tryparse``; any string for
        UUIDs), ``None`` when it is not one. Guards do not decode ``%xx`` escapes."""
        if self.id_kind == "uuid":
            return raw
        return try_parse_int(raw)

    def _owning_project(self, resolver: str, raw: str) -> Id | None:
        """The project that owns the entity named in the URL, ``None`` when unresolvable."""
        entity_id = self._parse_id(raw)
        if entity_id is None:
            return None
        if resolver == "project":
            # URLs that carry a project id directly are not checked for existence.
            return entity_id

        sql = {
            "experiment": "SELECT project_id FROM experiment WHERE id = ?",
            "iteration": (
                "SELECT e.project_id FROM iteration i JOIN experiment e ON e.id = i.experiment_id"
                " WHERE i.id = ?"
            ),
            "parameter": (
                "SELECT e.project_id FROM parameter p JOIN iteration i ON i.id = p.iteration_id"
                " JOIN experiment e ON e.id = i.experiment_id WHERE p.id = ?"
            ),
            "metric": (
                "SELECT e.project_id FROM metric m JOIN iteration i ON i.id = m.iteration_id"
                " JOIN experiment e ON e.id = i.experiment_id WHERE m.id = ?"
            ),
            "resource": (
                "SELECT e.project_id FROM resource r JOIN experiment e ON e.id = r.experiment_id"
                " WHERE r.id = ?"
            ),
            "model": "SELECT project_id FROM model WHERE id = ?",
            "modelversion": (
                "SELECT m.project_id FROM model_version v JOIN model m ON m.id = v.model_id"
                " WHERE v.id = ?"
            ),
        }[resolver]
        project_id: Id | None = self.db.scalar(sql, (entity_id,))
        return project_id

    # --- shared handler helpers ----------------------------------------------------------------

    def _path_id(self, request: Request, name: str = "id") -> Id:
        """A path id as the framework converts it for the handler: ``%xx`` escapes decoded,
        then parsed; a non-integer is a generic 500 (int build)."""
        value = self._parse_id(unquote(request.params[name]))
        if value is None:
            raise crash(f"path parameter {name} is not an integer")
        return value

    def _json(self, request: Request, fields: Sequence[Field]) -> dict[str, Any]:
        return parse_body(request.body.read_all(), fields, self.id_kind)

    def _insert(self, table: str, values: dict[str, Any], message: str) -> Id:
        """Insert a row; unique failures are 409, other constraint failures 422, anything
        else 500, all with the route's one ``message``."""
        try:
            return self.db.insert(table, values)
        except ConstraintError as exc:
            if exc.kind == "unique":
                raise conflict(message) from exc
            if exc.kind in ("check", "foreign_key", "not_null"):
                raise unprocessable(message) from exc
            raise server_error(message) from exc

    def _update(self, table: str, row_id: Id, values: dict[str, Any], message: str) -> None:
        """Update a row; check and foreign-key failures are 422, everything else 500."""
        try:
            self.db.update(table, row_id, values)
        except ConstraintError as exc:
            if exc.kind in ("check", "foreign_key", "not_null"):
                raise unprocessable(message) from exc
            raise server_error(message) from exc

    def _patch(
        self,
        table: str,
        row: dict[str, Any],
        given: dict[str, Any],
        message: str,
        *,
        stamp: bool = False,
    ) -> bool:
        """Compare, then write the non-null fields (plus ``updated_date`` when ``stamp``).

        Returns:
            Whether the update ran (``False``: nothing differed, nothing was written).
        """
        if not _differs(row, given):
            return False
        values = {name: value for name, value in given.items() if value is not None}
        if stamp:
            values["updated_date"] = now_text()
        self._update(table, row["id"], values, message)
        return True

    def _page(
        self,
        request: Request,
        table: str,
        where: str,
        params: Sequence[Any],
        order: str,
        serialise: Callable[[dict[str, Any]], dict[str, Any]],
    ) -> Response:
        """A page envelope (section 4): limit 0..200 (default 50), offset >= 0."""
        limit = try_parse_int(request.query.get("limit"))
        limit = 50 if limit is None else min(max(limit, 0), 200)
        offset = try_parse_int(request.query.get("offset"))
        offset = 0 if offset is None else max(offset, 0)

        total = self.db.scalar(f'SELECT COUNT(*) FROM "{table}" WHERE {where}', params)
        rows = self.db.rows(
            f'SELECT * FROM "{table}" WHERE {where} ORDER BY {order} LIMIT ? OFFSET ?',
            [*params, limit, offset],
        )
        payload = {"data": [serialise(row) for row in rows], "total": total}
        payload.update(limit=limit, offset=offset)
        return Response.json(200, payload)

    def _by_creation(self) -> str:
        """Order of the lists the UUID build sorts by ``created_date`` (insertion otherwise)."""
        return "created_date, rowid" if self.id_kind == "uuid" else "rowid"

    def _get_or_404(self, table: str, row_id: Id, message: str) -> dict[str, Any]:
        row = self.db.get(table, row_id)
        if row is None:
            raise not_found(message)
        return row

    def _open_iteration(self, iteration_id: Id, message: str) -> dict[str, Any]:
        """The iteration of a create: missing or ended is 422 (nothing written)."""
        iteration = self.db.get("iteration", iteration_id)
        if iteration is None or iteration["end_date"] is not None:
            raise unprocessable(message)
        return iteration

    def _token_envelope(self, user: dict[str, Any]) -> Response:
        token = self.token_for(user)
        return Response.json(
            200,
            {
                "access_token": token,
                "token_type": "Bearer",
                "expires_at": token_expiry(token),
                "user": _user_json(user),
            },
        )

    # --- health and auth ----------------------------------------------------------------------

    def health(self, request: Request) -> Response:
        return Response.json(
            200,
            {
                "app_name": "DearDiary",
                "package_version": PACKAGE_VERSION,
                "server_time": format_datetime(now_text()),
            },
        )

    def sign_in(self, request: Request) -> Response:
        body = self._json(request, _SIGN_IN)
        user = self.db.row('SELECT * FROM "user" WHERE username = ?', (body["username"],))
        if user is None:
            raise ApiError(404, "USER_NOT_FOUND", "User not found")
        if not check_password(body["password"], user["password_hash"]):
            raise ApiError(401, "INVALID_CREDENTIALS", "Invalid credentials")
        return self._token_envelope(user)

    def refresh(self, request: Request) -> Response:
        assert request.user is not None
        return self._token_envelope(request.user)

    def me(self, request: Request) -> Response:
        assert request.user is not None
        user = self.db.get("user", request.user["id"])
        if user is None:
            raise ApiError(404, "USER_NOT_FOUND", "User not found")
        return Response.json(200, _user_json(user))

    # --- users --------------------------------------------------------------------------------

    def list_users(self, request: Request) -> Response:
        rows = self.db.rows('SELECT * FROM "user" ORDER BY rowid')
        return Response.json(200, [_user_json(row) for row in rows])

    def get_user(self, request: Request) -> Response:
        user = self.db.get("user", self._path_id(request))
        if user is None:
            raise ApiError(404, "USER_NOT_FOUND", "User not found")
        return Response.json(200, _user_json(user))

    def user_permissions(self, request: Request) -> Response:
        rows = self.db.rows(
            "SELECT * FROM user_permission WHERE user_id = ? ORDER BY rowid",
            (self._path_id(request),),
        )
        return Response.json(200, [_permission_json(row) for row in rows])

    def create_user_route(self, request: Request) -> Response:
        body = self._json(request, _USER_CREATE)
        values = {
            "first_name": body["first_name"],
            "last_name": body["last_name"],
            "username": body["username"],
            "password_hash": hash_password(body["password"]),
            "is_admin": 0,
            "created_date": now_text(),
        }
        return _created("user", self._insert("user", values, "Failed to create user"))

    def update_user(self, request: Request) -> Response:
        user_id = self._path_id(request)
        body = self._json(request, _USER_UPDATE)
        if body["is_admin"] is not None and not self._is_admin(request):
            raise ApiError(
                403, "ADMIN_REQUIRED", "Admin privileges required to change admin status"
            )

        user = self.db.get("user", user_id)
        if user is None or (user["username"] == DEFAULT_USERNAME and body["is_admin"] is False):
            raise unprocessable("Failed to update user")

        given = {
            "first_name": body["first_name"],
            "last_name": body["last_name"],
            "is_admin": body["is_admin"],
        }
        password = body["password"]
        if password is None and not _differs(user, given):
            return Response.json(200, _UPDATED)

        values = {name: value for name, value in given.items() if value is not None}
        if password is not None:
            values["password_hash"] = hash_password(password)
        self._update("user", user_id, values, "Failed to update user")
        return Response.json(200, _UPDATED)

    def delete_user(self, request: Request) -> Response:
        user_id = self._path_id(request)
        user = self.db.get("user", user_id)
        if user is None or user["username"] == DEFAULT_USERNAME:
            raise server_error("Failed to delete user")
        try:
            self.db.write("DELETE FROM user_permission WHERE user_id = ?", (user_id,))
            self.db.delete("user", user_id)
        except ConstraintError as exc:
            raise server_error("Failed to delete user") from exc
        return Response.json(200, _OK)

    # --- projects -----------------------------------------------------------------------------

    def list_projects(self, request: Request) -> Response:
        if self._is_admin(request):
            rows = self.db.rows("SELECT * FROM project ORDER BY rowid")
        else:
            assert request.user is not None
            rows = self.db.rows(
                "SELECT p.* FROM project p JOIN user_permission u ON u.project_id = p.id"
                " WHERE u.user_id = ? AND u.read_permission = 1 ORDER BY p.rowid",
                (request.user["id"],),
            )
        return Response.json(200, [_project_json(row) for row in rows])

    def get_project(self, request: Request) -> Response:
        row = self._get_or_404("project", self._path_id(request), "Project not found")
        return Response.json(200, _project_json(row))

    def project_members(self, request: Request) -> Response:
        rows = self.db.rows(
            "SELECT * FROM user_permission WHERE project_id = ? ORDER BY rowid",
            (self._path_id(request),),
        )
        return Response.json(200, [_permission_json(row) for row in rows])

    def create_project(self, request: Request) -> Response:
        body = self._json(request, _PROJECT_CREATE)
        values = {"name": body["name"], "description": "", "created_date": now_text()}
        project_id = self._insert("project", values, "Failed to create project")
        assert request.user is not None
        try:
            self.db.insert(
                "user_permission",
                {
                    "user_id": request.user["id"],
                    "project_id": project_id,
                    "create_permission": 0,
                    "read_permission": 1,
                    "update_permission": 0,
                    "delete_permission": 0,
                },
            )
        except ConstraintError:
            logger.debug("creator permission row of project %s not written", project_id)
        return _created("project", project_id)

    def update_project(self, request: Request) -> Response:
        project_id = self._path_id(request)
        body = self._json(request, _PROJECT_UPDATE)
        project = self.db.get("project", project_id)
        if project is None:
            raise unprocessable("Failed to update project")
        self._patch("project", project, body, "Failed to update project")
        return Response.json(200, _UPDATED)

    def delete_project(self, request: Request) -> Response:
        project_id = self._path_id(request)
        project = self.db.get("project", project_id)
        if project is None:
            raise crash("project not found while deleting")

        experiments = self.db.rows(
            "SELECT id FROM experiment WHERE project_id = ? ORDER BY rowid", (project_id,)
        )
        for experiment in experiments:
            self._delete_experiment_cascade(experiment["id"])
        try:
            self.db.write("DELETE FROM user_permission WHERE project_id = ?", (project_id,))
            self.db.delete("project", project_id)
        except ConstraintError as exc:
            raise server_error("Failed to delete project") from exc
        return Response.json(200, _OK)

    # --- user permissions ---------------------------------------------------------------------

    def get_permission(self, request: Request) -> Response:
        row = self.db.row(
            "SELECT * FROM user_permission WHERE user_id = ? AND project_id = ?",
            (self._path_id(request, "user_id"), self._path_id(request, "project_id")),
        )
        if row is None:
            raise not_found("User permission not found")
        return Response.json(200, _permission_json(row))

    def create_permission(self, request: Request) -> Response:
        user_id = self._path_id(request, "user_id")
        project_id = self._path_id(request, "project_id")
        body = self._json(request, _PERMISSION_CREATE)
        message = "Failed to create user permission"
        # Both ends are looked up first, so a missing one burns no id.
        if self.db.get("user", user_id) is None or self.db.get("project", project_id) is None:
            raise unprocessable(message)
        values = {"user_id": user_id, "project_id": project_id}
        values.update({flag: int(body[flag]) for flag in _PERMISSION_FLAGS})
        return _created("userpermission", self._insert("user_permission", values, message))

    def update_permission(self, request: Request) -> Response:
        permission_id = self._path_id(request)
        body = self._json(request, _PERMISSION_UPDATE)
        row = self.db.get("user_permission", permission_id)
        if row is None:
            raise unprocessable("Failed to update user permission")
        given = {flag: None if body[flag] is None else int(body[flag]) for flag in body}
        self._patch("user_permission", row, given, "Failed to update user permission")
        return Response.json(200, _UPDATED)

    def delete_permission(self, request: Request) -> Response:
        self.db.delete("user_permission", self._path_id(request))
        return Response.json(200, _OK)

    # --- experiments --------------------------------------------------------------------------

    def get_experiment(self, request: Request) -> Response:
        row = self._get_or_404("experiment", self._path_id(request), "Experiment not found")
        return Response.json(200, _experiment_json(row))

    def list_experiments(self, request: Request) -> Response:
        return self._page(
            request,
            "experiment",
            "project_id = ?",
            (self._path_id(request),),
            self._by_creation(),
            _experiment_json,
        )

    def create_experiment(self, request: Request) -> Response:
        project_id = self._path_id(request)
        body = self._json(request, _EXPERIMENT_CREATE)
        message = "Failed to create experiment"
        if self.db.get("project", project_id) is None or body["status_id"] != 1:
            raise unprocessable(message)
        values = {
            "project_id": project_id,
            "status_id": body["status_id"],
            "name": body["name"],
            "description": "",
            "created_date": now_text(),
        }
        return _created("experiment", self._insert("experiment", values, message))

    def update_experiment(self, request: Request) -> Response:
        experiment_id = self._path_id(request)
        body = self._json(request, _EXPERIMENT_UPDATE)
        message = "Failed to update experiment"
        row = self.db.get("experiment", experiment_id)
        if row is None or body["status_id"] not in (1, 2, 3):
            raise unprocessable(message)

        # Re-opening (status 1 on an experiment that has an end date) clears the end date and
        # ignores a given one. Status 1 on an experiment without an end date is no re-opening:
        # a given end date is stored like any other field.
        reopen = body["status_id"] == 1 and row["end_date"] is not None
        if reopen:
            body["end_date"] = None
        if _differs(row, body) or reopen:
            values = {name: value for name, value in body.items() if value is not None}
            if reopen:
                values["end_date"] = None
            self._update("experiment", experiment_id, values, message)
        return Response.json(200, _UPDATED)

    def delete_experiment(self, request: Request) -> Response:
        experiment_id = self._path_id(request)
        if self.db.get("experiment", experiment_id) is None:
            raise crash("experiment not found while deleting")
        if not self._delete_experiment_cascade(experiment_id):
            raise server_error("Failed to delete experiment")
        return Response.json(200, _OK)

    def _delete_experiment_cascade(self, experiment_id: Id) -> bool:
        """Iterations and resources (failures ignored), then the experiment."""
        for iteration in self.db.rows(
            "SELECT id FROM iteration WHERE experiment_id = ? ORDER BY rowid", (experiment_id,)
        ):
            self._delete_iteration_cascade(iteration["id"])
        for resource in self.db.rows(
            "SELECT * FROM resource WHERE experiment_id = ? ORDER BY rowid", (experiment_id,)
        ):
            self._delete_resource_row(resource)
        try:
            self.db.delete("experiment", experiment_id)
        except ConstraintError:
            return False
        return True

    # --- iterations ---------------------------------------------------------------------------

    def get_iteration(self, request: Request) -> Response:
        row = self._get_or_404("iteration", self._path_id(request), "Iteration not found")
        return Response.json(200, _iteration_json(row))

    def list_iterations(self, request: Request) -> Response:
        return self._page(
            request,
            "iteration",
            "experiment_id = ?",
            (self._path_id(request),),
            self._by_creation(),
            _iteration_json,
        )

    def child_iterations(self, request: Request) -> Response:
        order = "created_date, rowid" if self.id_kind == "uuid" else "id"
        rows = self.db.rows(
            f"SELECT * FROM iteration WHERE parent_iteration_id = ? ORDER BY {order}",
            (self._path_id(request),),
        )
        return Response.json(200, [_iteration_json(row) for row in rows])

    def create_iteration(self, request: Request) -> Response:
        experiment_id = self._path_id(request)
        parent_id: Id | None = None
        if "parent_iteration_id" in request.query:
            raw = request.query["parent_iteration_id"]
            parent_id = raw if self.id_kind == "uuid" else try_parse_int(raw)
            if parent_id is None:
                raise unprocessable("parent_iteration_id must be an integer")

        experiment = self.db.get("experiment", experiment_id)
        if experiment is None or experiment["status_id"] != 1:
            raise unprocessable("Failed to create iteration")
        if parent_id is not None:
            parent = self.db.get("iteration", parent_id)
            if parent is None or parent["experiment_id"] != experiment_id:
                raise unprocessable("Failed to create iteration")

        values = {
            "experiment_id": experiment_id,
            "parent_iteration_id": parent_id,
            "created_date": now_text(),
        }
        return _created(
            "iteration", self._insert("iteration", values, "Failed to create iteration")
        )

    def update_iteration(self, request: Request) -> Response:
        iteration_id = self._path_id(request)
        body = self._json(request, _ITERATION_UPDATE)
        message = "Failed to update iteration"
        row = self.db.get("iteration", iteration_id)
        if row is None or row["end_date"] is not None:
            raise unprocessable(message)
        self._patch("iteration", row, body, message)
        return Response.json(200, _UPDATED)

    def snapshot(self, request: Request) -> Response:
        iteration_id = self._path_id(request)
        body = self._json(request, _SNAPSHOT)
        if self.db.get("iteration", iteration_id) is None:
            raise not_found("Iteration not found")
        body["git_dirty"] = int(body["git_dirty"])
        self._update("iteration", iteration_id, body, "Failed to attach snapshot")
        return Response.json(200, _UPDATED)

    def delete_iteration(self, request: Request) -> Response:
        iteration_id = self._path_id(request)
        if self.db.get("iteration", iteration_id) is None:
            raise crash("iteration not found while deleting")
        if not self._delete_iteration_cascade(iteration_id):
            raise server_error("Failed to delete iteration")
        return Response.json(200, _OK)

    def _delete_iteration_cascade(self, iteration_id: Id) -> bool:
        """Parameters, metrics, the children's parent link, then the iteration."""
        self.db.write("DELETE FROM parameter WHERE iteration_id = ?", (iteration_id,))
        self.db.write("DELETE FROM metric WHERE iteration_id = ?", (iteration_id,))

        # DuckDB refuses to clear the indexed parent column of a child that is itself
        # referenced (by its metrics, parameters, tags, children or model versions).
        children = self.db.rows(
            "SELECT id FROM iteration WHERE parent_iteration_id = ?", (iteration_id,)
        )
        for child in children:
            if self._iteration_referenced(child["id"]):
                return False
        try:
            self.db.write(
                "UPDATE iteration SET parent_iteration_id = NULL WHERE parent_iteration_id = ?",
                (iteration_id,),
            )
            self.db.delete("iteration", iteration_id)
        except ConstraintError:
            return False
        return True

    def _iteration_referenced(self, iteration_id: Id) -> bool:
        checks = (
            "SELECT 1 FROM parameter WHERE iteration_id = ? LIMIT 1",
            "SELECT 1 FROM metric WHERE iteration_id = ? LIMIT 1",
            "SELECT 1 FROM iteration_tag WHERE iteration_id = ? LIMIT 1",
            "SELECT 1 FROM iteration WHERE parent_iteration_id = ? LIMIT 1",
            "SELECT 1 FROM model_version WHERE iteration_id = ? LIMIT 1",
        )
        return any(self.db.scalar(sql, (iteration_id,)) is not None for sql in checks)

    # --- parameters ---------------------------------------------------------------------------

    def get_parameter(self, request: Request) -> Response:
        row = self._get_or_404("parameter", self._path_id(request), "Parameter not found")
        return Response.json(200, _parameter_json(row))

    def list_parameters(self, request: Request) -> Response:
        return self._page(
            request,
            "parameter",
            "iteration_id = ?",
            (self._path_id(request),),
            "rowid",
            _parameter_json,
        )

    def create_parameter(self, request: Request) -> Response:
        iteration_id = self._path_id(request)
        body = self._json(request, _PARAMETER_CREATE)
        message = "Failed to create parameter"
        self._open_iteration(iteration_id, message)
        values = {"iteration_id": iteration_id, "key": body["key"], "value": body["value"]}
        return _created("parameter", self._insert("parameter", values, message))

    def _with_iteration_end(self, table: str, row_id: Id) -> dict[str, Any] | None:
        """A parameter or metric with the ``end_date`` of its iteration, ``None`` if missing."""
        return self.db.row(
            f'SELECT c.*, i.end_date AS _ended FROM "{table}" c'
            " JOIN iteration i ON i.id = c.iteration_id WHERE c.id = ?",
            (row_id,),
        )

    def update_parameter(self, request: Request) -> Response:
        parameter_id = self._path_id(request)
        body = self._json(request, _PARAMETER_UPDATE)
        message = "Failed to update parameter"
        row = self._with_iteration_end("parameter", parameter_id)
        if row is None or row["_ended"] is not None:
            raise unprocessable(message)
        self._patch("parameter", row, body, message)
        return Response.json(200, _UPDATED)

    def delete_parameter(self, request: Request) -> Response:
        return self._delete_iteration_child(request, "parameter")

    def _delete_iteration_child(self, request: Request, table: str) -> Response:
        """Delete a parameter or metric: missing or ended iteration is 500 ``SERVER_ERROR``."""
        row_id = self._path_id(request)
        row = self._with_iteration_end(table, row_id)
        if row is None or row["_ended"] is not None:
            raise server_error(f"Failed to delete {table}")
        self.db.delete(table, row_id)
        return Response.json(200, _OK)

    # --- metrics ------------------------------------------------------------------------------

    def get_metric(self, request: Request) -> Response:
        row = self._get_or_404("metric", self._path_id(request), "Metric not found")
        return Response.json(200, _metric_json(row))

    def list_metrics(self, request: Request) -> Response:
        order = "step, recorded_at, rowid" if self.id_kind == "uuid" else "step, id"
        return self._page(
            request,
            "metric",
            "iteration_id = ?",
            (self._path_id(request),),
            order,
            _metric_json,
        )

    def _next_step(self, iteration_id: Id, key: str) -> int:
        """Automatic step: the largest stored step of (iteration, key) plus one, or 0."""
        largest = self.db.scalar(
            "SELECT MAX(step) FROM metric WHERE iteration_id = ? AND key = ?", (iteration_id, key)
        )
        return 0 if largest is None else int(largest) + 1

    def _insert_metric(
        self,
        iteration_id: Id,
        key: str,
        value: float,
        step: int | None,
        recorded_at: str,
        message: str,
    ) -> Id:
        values = {
            "iteration_id": iteration_id,
            "key": key,
            "value": value,
            "step": self._next_step(iteration_id, key) if step is None else step,
            "recorded_at": recorded_at,
        }
        return self._insert("metric", values, message)

    def create_metric(self, request: Request) -> Response:
        iteration_id = self._path_id(request)
        body = self._json(request, _METRIC_CREATE)
        message = "Failed to create metric"
        self._open_iteration(iteration_id, message)
        metric_id = self._insert_metric(
            iteration_id,
            body["key"],
            body["value"],
            body["step"],
            body["recorded_at"] or now_text(),
            message,
        )
        return _created("metric", metric_id)

    def create_metrics(self, request: Request) -> Response:
        iteration_id = self._path_id(request)
        body = self._json(request, _METRIC_BATCH)
        message = "Failed to log metrics"
        self._open_iteration(iteration_id, message)

        # Repeated keys collapse (last value wins) and rows go in in the map's own order,
        # which is not the request order: here, the order of a hash of the key.
        values = {item["key"]: item["value"] for item in body["metrics"]}
        ordered = sorted(values, key=lambda key: hashlib.sha1(key.encode("utf-8")).hexdigest())
        recorded_at = body["recorded_at"] or now_text()

        # Not atomic: the first failing insert stops the loop, earlier rows stay.
        metric_ids = [
            self._insert_metric(iteration_id, key, values[key], body["step"], recorded_at, message)
            for key in ordered
        ]
        return Response.json(201, {"metric_ids": metric_ids})

    def update_metric(self, request: Request) -> Response:
        metric_id = self._path_id(request)
        body = self._json(request, _METRIC_UPDATE)
        message = "Failed to update metric"
        row = self._with_iteration_end("metric", metric_id)
        if row is None or row["_ended"] is not None:
            raise unprocessable(message)
        self._patch("metric", row, body, message)
        return Response.json(200, _UPDATED)

    def delete_metric(self, request: Request) -> Response:
        return self._delete_iteration_child(request, "metric")

    # --- resources ----------------------------------------------------------------------------

    def get_resource(self, request: Request) -> Response:
        row = self._get_or_404("resource", self._path_id(request), "Resource not found")
        return Response.json(200, _resource_json(row))

    def resource_data(self, request: Request) -> Response:
        row = self._get_or_404("resource", self._path_id(request), "Resource not found")
        path = _uri_path(row["uri"])
        if not path.is_file():
            raise crash("resource bytes are missing")
        return Response(200, content_type="application/octet-stream", file=path)

    def list_resources(self, request: Request) -> Response:
        return self._page(
            request,
            "resource",
            "experiment_id = ?",
            (self._path_id(request),),
            self._by_creation(),
            _resource_json,
        )

    def _new_artifact_path(self) -> Path:
        return self.artifact_dir / f"{uuid.uuid4().hex}.bin"

    def _read_form(self, request: Request) -> MultipartForm:
        """Stream a multipart body (the data part straight to disk); not multipart is a 500."""
        boundary = multipart_boundary(request.headers.get("Content-Type"))
        if boundary is None:
            raise crash("the body is not multipart/form-data")
        return parse_multipart(request.body, boundary, ("data",), self._new_artifact_path)

    def create_resource(self, request: Request) -> Response:
        experiment_id = self._path_id(request)
        form = self._read_form(request)
        try:
            data = form.files.get("data")
            if "name" not in form.texts or data is None:
                raise unprocessable("Multipart fields 'name' and 'data' are required")
            experiment = self.db.get("experiment", experiment_id)
            if experiment is None or experiment["status_id"] != 1:
                raise unprocessable("Failed to create resource")

            values = {
                "experiment_id": experiment_id,
                "name": form.texts["name"],
                "description": "",
                "created_date": now_text(),
                "backend": "filesystem",
                "uri": _path_uri(data.path),
                "size_bytes": data.size,
                "content_hash": data.sha256,
            }
            resource_id = self._insert("resource", values, "Failed to create resource")
        except BaseException:
            form.discard_files()
            raise
        return _created("resource", resource_id)

    def update_resource(self, request: Request) -> Response:
        resource_id = self._path_id(request)
        form = self._read_form(request)
        data = form.files.get("data")
        message = "Failed to update resource"
        try:
            row = self.db.get("resource", resource_id)
            if row is None:
                raise unprocessable(message)

            given: dict[str, Any] = {
                "name": form.texts.get("name"),
                "description": form.texts.get("description"),
            }
            # The server compares new bytes with the row's inline data column, which an
            # external (filesystem) store leaves empty: an absent data part counts as a change,
            # and so do any non-empty bytes, even the stored ones.
            if not (_differs(row, given) or data is None or data.size > 0):
                form.discard_files()
                return Response.json(200, _UPDATED)

            values = {name: value for name, value in given.items() if value is not None}
            if data is not None:
                values.update(
                    uri=_path_uri(data.path), size_bytes=data.size, content_hash=data.sha256
                )
            values["updated_date"] = now_text()
            self._update("resource", resource_id, values, message)
        except BaseException:
            form.discard_files()
            raise

        if data is not None:
            _uri_path(row["uri"]).unlink(missing_ok=True)
        return Response.json(200, _UPDATED)

    def delete_resource(self, request: Request) -> Response:
        row = self.db.get("resource", self._path_id(request))
        if row is None or not self._delete_resource_row(row):
            raise server_error("Failed to delete resource")
        return Response.json(200, _OK)

    def _delete_resource_row(self, row: dict[str, Any]) -> bool:
        """The stored bytes first, then the row (which a model version can still block)."""
        _uri_path(row["uri"]).unlink(missing_ok=True)
        try:
            self.db.delete("resource", row["id"])
        except ConstraintError:
            return False
        return True

    # --- tags ---------------------------------------------------------------------------------

    def get_tag(self, request: Request) -> Response:
        row = self._get_or_404("tag", self._path_id(request), "Tag not found")
        return Response.json(200, _tag_json(row))

    def list_tags(self, request: Request, kind: str) -> Response:
        rows = self.db.rows(
            f"SELECT t.* FROM {kind}_tag a JOIN tag t ON t.id = a.tag_id WHERE a.{kind}_id = ?"
            " ORDER BY a.rowid",
            (self._path_id(request),),
        )
        return Response.json(200, [_tag_json(row) for row in rows])

    def add_tag(self, request: Request, kind: str) -> Response:
        parent_id = self._path_id(request)
        body = self._json(request, _TAG_CREATE)
        message = f"Failed to attach tag to {kind}"
        parent = self.db.get(kind, parent_id)
        if parent is None or (kind == "iteration" and parent["end_date"] is not None):
            raise unprocessable(message)

        # The tag row is looked up by value and inserted only when new (a known value burns
        # no tag id). The insert's result is ignored and the row read back, which crashes
        # when there is none (an empty value fails the insert).
        find_tag = "SELECT id FROM tag WHERE value = ?"
        tag_id = self.db.scalar(find_tag, (body["value"],))
        if tag_id is None:
            self.db.insert("tag", {"value": body["value"]}, ignore=True)
            tag_id = self.db.scalar(find_tag, (body["value"],))
        if tag_id is None:
            raise crash("tag row missing after insert")
        association = {f"{kind}_id": parent_id, "tag_id": tag_id}
        association_id = self._insert(f"{kind}_tag", association, message)
        return _created("association", association_id)

    def delete_tag(self, request: Request) -> Response:
        try:
            self.db.delete("tag", self._path_id(request))
        except ConstraintError as exc:
            raise server_error("Failed to delete tag") from exc
        return Response.json(200, _OK)

    # --- models -------------------------------------------------------------------------------

    def get_model(self, request: Request) -> Response:
        row = self._get_or_404("model", self._path_id(request), "Model not found")
        return Response.json(200, _model_json(row))

    def list_models(self, request: Request) -> Response:
        return self._page(
            request,
            "model",
            "project_id = ?",
            (self._path_id(request),),
            self._by_creation(),
            _model_json,
        )

    def create_model(self, request: Request) -> Response:
        project_id = self._path_id(request)
        body = self._json(request, _MODEL_CREATE)
        message = "Failed to create model"
        if self.db.get("project", project_id) is None:
            raise unprocessable(message)
        values = {
            "project_id": project_id,
            "name": body["name"],
            "description": "",
            "created_date": now_text(),
        }
        model_id = self._insert("model", values, message)
        if body["description"] is not None:
            # Written by a second update, which stamps updated_date at once; its outcome is
            # not checked.
            try:
                self.db.update(
                    "model",
                    model_id,
                    {"description": body["description"], "updated_date": now_text()},
                )
            except ConstraintError:
                logger.debug("description of model %s not written", model_id)
        return _created("model", model_id)

    def update_model(self, request: Request) -> Response:
        model_id = self._path_id(request)
        body = self._json(request, _MODEL_UPDATE)
        message = "Failed to update model"
        row = self.db.get("model", model_id)
        if row is None:
            raise unprocessable(message)
        if not _differs(row, body):
            return Response.json(200, _UPDATED)

        has_versions = self.db.scalar(
            "SELECT 1 FROM model_version WHERE model_id = ? LIMIT 1", (model_id,)
        )
        if body["name"] is not None and has_versions is not None:
            # DuckDB refuses to update a unique column of a row referenced by a foreign key.
            raise unprocessable(message)
        self._patch("model", row, body, message, stamp=True)
        return Response.json(200, _UPDATED)

    def delete_model(self, request: Request) -> Response:
        model_id = self._path_id(request)
        if self.db.get("model", model_id) is None:
            raise server_error("Failed to delete model")
        try:
            self.db.write("DELETE FROM model_version WHERE model_id = ?", (model_id,))
            self.db.delete("model", model_id)
        except ConstraintError as exc:
            raise server_error("Failed to delete model") from exc
        return Response.json(200, _OK)

    # --- model versions -----------------------------------------------------------------------

    def get_modelversion(self, request: Request) -> Response:
        row = self._get_or_404("model_version", self._path_id(request), "Model version not found")
        return Response.json(200, _modelversion_json(row))

    def list_modelversions(self, request: Request) -> Response:
        return self._page(
            request,
            "model_version",
            "model_id = ?",
            (self._path_id(request),),
            "version, rowid",
            _modelversion_json,
        )

    def _in_project(self, table: str, row_id: Id, project_id: Id) -> bool:
        """Whether an iteration or resource belongs to an experiment of the project."""
        sql = {
            "iteration": "SELECT e.project_id FROM iteration i"
            " JOIN experiment e ON e.id = i.experiment_id WHERE i.id = ?",
            "resource": "SELECT e.project_id FROM resource r"
            " JOIN experiment e ON e.id = r.experiment_id WHERE r.id = ?",
        }[table]
        owner = self.db.scalar(sql, (row_id,))
        return owner is not None and owner == project_id

    def create_modelversion(self, request: Request) -> Response:
        model_id = self._path_id(request)
        body = self._json(request, _MODELVERSION_CREATE)
        message = "Failed to create model version"
        model = self.db.get("model", model_id)
        if model is None:
            raise unprocessable(message)
        if not self._in_project("iteration", body["iteration_id"], model["project_id"]):
            raise unprocessable(message)
        resource_id = body["resource_id"]
        if resource_id is not None and not self._in_project(
            "resource", resource_id, model["project_id"]
        ):
            raise unprocessable(message)

        # The version number is "highest + 1", computed inside the insert statement.
        new_id = self.db.next_id("model_version")
        try:
            self.db.write(
                "INSERT INTO model_version (id, model_id, version, iteration_id, resource_id,"
                " stage_id, description, created_date) VALUES (?, ?,"
                " (SELECT COALESCE(MAX(version), 0) + 1 FROM model_version WHERE model_id = ?),"
                " ?, ?, 1, ?, ?)",
                (
                    new_id,
                    model_id,
                    model_id,
                    body["iteration_id"],
                    resource_id,
                    body["description"] or "",
                    now_text(),
                ),
            )
        except ConstraintError as exc:
            if exc.kind == "unique":
                raise conflict(message) from exc
            raise unprocessable(message) from exc
        return _created("modelversion", new_id)

    def update_modelversion(self, request: Request) -> Response:
        version_id = self._path_id(request)
        body = self._json(request, _MODELVERSION_UPDATE)
        message = "Failed to update model version"
        row = self.db.get("model_version", version_id)
        if row is None:
            raise unprocessable(message)
        resource_id = body["resource_id"]
        if resource_id is not None:
            model = self.db.get("model", row["model_id"])
            if model is None or not self._in_project("resource", resource_id, model["project_id"]):
                raise unprocessable(message)

        updated = self._patch("model_version", row, body, message, stamp=True)
        if updated and body["stage_id"] == 3:
            # A promotion to PRODUCTION that was written demotes the other PRODUCTION versions
            # to ARCHIVED, stamping them too, in a second statement.
            self.db.write(
                "UPDATE model_version SET stage_id = 4, updated_date = ?"
                " WHERE model_id = ? AND stage_id = 3 AND id <> ?",
                (now_text(), row["model_id"], version_id),
            )
        return Response.json(200, _UPDATED)

    def delete_modelversion(self, request: Request) -> Response:
        self.db.delete("model_version", self._path_id(request))
        return Response.json(200, _OK)


def generic_response(status: int) -> Response:
    """The framework's own error body, ``{"message": "<status>: <reason>"}``."""
    try:
        reason = http.HTTPStatus(status).phrase
    except ValueError:
        reason = "Error"
    return Response.json(status, {"message": f"{status}: {reason}"})


def _path_uri(path: Path) -> str:
    return "file://" + path.resolve().as_posix()


def _uri_path(uri: str) -> Path:
    return Path(uri.removeprefix("file://"))


def _build_routes() -> list[Route]:
    """The route table of section 5."""
    a = Api
    pg = _project_guard

    def tags(kind: str) -> dict[str, tuple[Guard, Handler]]:
        return {
            "GET": (pg(kind), lambda api, r: api.list_tags(r, kind)),
            "POST": (pg(kind), lambda api, r: api.add_tag(r, kind)),
        }

    table: list[tuple[str, dict[str, tuple[Guard, Handler]]]] = [
        ("/health", {"GET": (OPEN, a.health)}),
        ("/auth", {"POST": (OPEN, a.sign_in)}),
        ("/auth/refresh", {"POST": (TOKEN, a.refresh)}),
        ("/auth/me", {"GET": (TOKEN, a.me)}),
        ("/user", {"GET": (ADMIN, a.list_users), "POST": (ADMIN, a.create_user_route)}),
        (
            "/user/{id}",
            {
                "GET": (SELF, a.get_user),
                "PATCH": (SELF, a.update_user),
                "DELETE": (SELF, a.delete_user),
            },
        ),
        ("/user/{id}/permissions", {"GET": (SELF, a.user_permissions)}),
        ("/project", {"GET": (TOKEN, a.list_projects), "POST": (ADMIN, a.create_project)}),
        (
            "/project/{id}",
            {
                "GET": (pg("project"), a.get_project),
                "PATCH": (ADMIN, a.update_project),
                "DELETE": (ADMIN, a.delete_project),
            },
        ),
        ("/project/{id}/members", {"GET": (pg("project"), a.project_members)}),
        (
            "/userpermission/user/{user_id}/project/{project_id}",
            {"GET": (ADMIN, a.get_permission), "POST": (ADMIN, a.create_permission)},
        ),
        (
            "/userpermission/{id}",
            {"PATCH": (ADMIN, a.update_permission), "DELETE": (ADMIN, a.delete_permission)},
        ),
        (
            "/experiment/{id}",
            {
                "GET": (pg("experiment"), a.get_experiment),
                "PATCH": (pg("experiment"), a.update_experiment),
                "DELETE": (pg("experiment"), a.delete_experiment),
            },
        ),
        (
            "/experiment/project/{id}",
            {
                "GET": (pg("project"), a.list_experiments),
                "POST": (pg("project"), a.create_experiment),
            },
        ),
        (
            "/iteration/{id}",
            {
                "GET": (pg("iteration"), a.get_iteration),
                "PATCH": (pg("iteration"), a.update_iteration),
                "DELETE": (pg("iteration"), a.delete_iteration),
            },
        ),
        (
            "/iteration/experiment/{id}",
            {
                "GET": (pg("experiment"), a.list_iterations),
                "POST": (pg("experiment"), a.create_iteration),
            },
        ),
        ("/iteration/{id}/children", {"GET": (pg("iteration"), a.child_iterations)}),
        (
            "/iteration/{id}/snapshot",
            {"POST": (pg("iteration", action="update"), a.snapshot)},
        ),
        (
            "/parameter/{id}",
            {
                "GET": (pg("parameter"), a.get_parameter),
                "PATCH": (pg("parameter"), a.update_parameter),
                "DELETE": (pg("parameter"), a.delete_parameter),
            },
        ),
        (
            "/parameter/iteration/{id}",
            {
                "GET": (pg("iteration"), a.list_parameters),
                "POST": (pg("iteration"), a.create_parameter),
            },
        ),
        (
            "/metric/{id}",
            {
                "GET": (pg("metric"), a.get_metric),
                "PATCH": (pg("metric"), a.update_metric),
                "DELETE": (pg("metric"), a.delete_metric),
            },
        ),
        (
            "/metric/iteration/{id}",
            {
                "GET": (pg("iteration"), a.list_metrics),
                "POST": (pg("iteration"), a.create_metric),
            },
        ),
        ("/metric/iteration/{id}/batch", {"POST": (pg("iteration"), a.create_metrics)}),
        (
            "/resource/{id}",
            {
                "GET": (pg("resource"), a.get_resource),
                "PATCH": (pg("resource"), a.update_resource),
                "DELETE": (pg("resource"), a.delete_resource),
            },
        ),
        ("/resource/{id}/data", {"GET": (pg("resource"), a.resource_data)}),
        (
            "/resource/experiment/{id}",
            {
                "GET": (pg("experiment"), a.list_resources),
                "POST": (pg("experiment"), a.create_resource),
            },
        ),
        ("/tag/{id}", {"GET": (ADMIN, a.get_tag), "DELETE": (ADMIN, a.delete_tag)}),
        ("/tag/project/{id}", tags("project")),
        ("/tag/experiment/{id}", tags("experiment")),
        ("/tag/iteration/{id}", tags("iteration")),
        (
            "/model/{id}",
            {
                "GET": (pg("model"), a.get_model),
                "PATCH": (pg("model"), a.update_model),
                "DELETE": (pg("model"), a.delete_model),
            },
        ),
        (
            "/model/project/{id}",
            {"GET": (pg("project"), a.list_models), "POST": (pg("project"), a.create_model)},
        ),
        (
            "/modelversion/{id}",
            {
                "GET": (pg("modelversion"), a.get_modelversion),
                "PATCH": (pg("modelversion"), a.update_modelversion),
                "DELETE": (pg("modelversion"), a.delete_modelversion),
            },
        ),
        (
            "/modelversion/model/{id}",
            {
                "GET": (pg("model"), a.list_modelversions),
                "POST": (pg("model"), a.create_modelversion),
            },
        ),
    ]
    return [Route(tuple(s for s in path.split("/") if s), endpoints) for path, endpoints in table]
