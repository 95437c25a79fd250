"""The HTTP backend: DearDiary's REST API over ``requests``.

Each call goes through the same few steps: build the URL from opaque ids, attach the token,
send, translate ``requests`` failures into :mod:`~deardiary_lightning.errors` (one boundary,
:meth:`HTTPBackend._send`), read the error envelope (or its absence), decode the body.

Metric batches, one small request per training step, skip ``requests``: on a plain
``http://`` server reached without a proxy they go through a lane of kept-alive
``http.client`` connections (:class:`_DirectLane`) that costs about a third of the CPU, with
the same errors.

Server quirks handled here (numbers refer to section 10 of the REST API notes):

- error bodies with the envelope, without it (generic 400/500) and empty (404/405) (1);
- ``PATCH /experiment`` always carries ``status_id`` (3; the client supplies it);
- the batch route collapses repeated keys and returns ids out of order (4; the client sends
  distinct keys and documents the order);
- nothing is retried here: a create is not idempotent (5); the delivery pipeline decides;
- date-times are sent naive with millisecond precision, and the server's clock offset is
  measured from ``/health`` (6);
- parameter values go out as non-empty JSON strings (7; the client converts);
- ``NaN``/``Infinity`` are never written: JSON is encoded with ``allow_nan=False`` (8);
- ``Authorization`` spelled exactly, ``Bearer <token>`` with one space (17);
- resource create and update are multipart with the parts ``name``, ``description`` and
  ``data`` and an unquoted boundary, streamed from the file (18);
- the token's ``expires_at`` is skewed by the server's UTC offset, so the refresh schedule is
  kept on this machine's monotonic clock (6).
"""

from __future__ import annotations

import base64
import binascii
import email.utils
import http.client
import json
import logging
import math
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import datetime, timedelta, timezone
from typing import Any, BinaryIO, TypeVar, Union
from urllib.parse import quote, urlsplit

import requests
import urllib3.exceptions
from requests.structures import CaseInsensitiveDict
from requests.utils import DEFAULT_CA_BUNDLE_PATH
from urllib3.util.wait import wait_for_read

from deardiary_lightning.backends.base import Backend, ReadableStream
from deardiary_lightning.entities import (
    AuthInfo,
    Experiment,
    Health,
    Id,
    Iteration,
    Metric,
    Model,
    ModelVersion,
    PaginatedResponse,
    Pagination,
    Parameter,
    Project,
    Resource,
    Tag,
    User,
    _Entity,
)
from deardiary_lightning.errors import (
    APIError,
    ConnectError,
    ReadTimeoutError,
    ResponseLostError,
    TokenExpiredError,
    TransportError,
    api_error_for,
)
from deardiary_lightning.wire import format_datetime

__all__ = ["HTTPBackend"]

logger = logging.getLogger(__name__)

E = TypeVar("E", bound=_Entity)

#: Bytes read from a file per chunk while uploading.
UPLOAD_CHUNK = 1024 * 1024

#: Share of a token's lifetime after which it is refreshed before the next request.
REFRESH_AT = 0.8


class HTTPBackend(Backend):
    """Talks to a DearDiary server.

    Args:
        url: The server's base URL, for example ``http://127.0.0.1:9000``.
        username: Sign in with ``POST /auth`` (with ``password``).
        password: The password; kept in memory only, to sign in again when the token expires.
        token: A bearer token to use as it is.
        timeout: Seconds to wait for the connection and for each read.
        session: A ``requests.Session`` to use (its adapters, proxies, certificates).

    Raises:
        ValueError: The URL carries credentials or is not ``http(s)://``.
        AuthenticationError: The server refused the username or password.
        TransportError: The server could not be reached while signing in.
    """

    def __init__(
        self,
        url: str,
        *,
        username: str | None = None,
        password: str | None = None,
        token: str | None = None,
        timeout: float = 30.0,
        session: requests.Session | None = None,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            msg = f"{url!r} is not an http:// or https:// URL of a DearDiary server"
            raise ValueError(msg)
        if parts.username or parts.password:
            msg = "the server URL carries credentials; pass username and password separately"
            raise ValueError(msg)
        self.url = url.rstrip("/")
        self.timeout = timeout
        self._session = session or _session_for(self.url)
        self._own_session = session is None
        self._lane = (
            _DirectLane.for_session(self.url, self._session, timeout) if not session else None
        )
        self._username = username
        self._password = password
        self._token = token
        self._token_deadline: float | None = _deadline_from_jwt(token) if token else None
        self._auth_lock = threading.Lock()
        self._offset: timedelta | None = None
        if username is not None and password is not None:
            self._sign_in()

    def __repr__(self) -> str:
        auth = "token=***" if self._token else "no auth"
        return f"HTTPBackend({self.url!r}, {auth})"

    def close(self) -> None:
        """Close the pooled connections."""
        self._session.close()
        if self._lane is not None:
            self._lane.close()

    # -- session ------------------------------------------------------------------------------

    def health(self) -> Health:
        """Call ``GET /health`` (open also when auth is on)."""
        return Health.from_wire(self._json("GET", "/health", auth=False))

    def whoami(self) -> User:
        """Call ``GET /auth/me``."""
        return User.from_wire(self._json("GET", "/auth/me"))

    def refresh_token(self) -> AuthInfo:
        """Call ``POST /auth/refresh`` and use the new token from now on."""
        with self._auth_lock:
            return self._adopt_token(self._json("POST", "/auth/refresh", refresh=False))

    def server_utc_offset(self) -> timedelta:
        """Estimate the server clock's offset from UTC from ``/health``, once.

        The server stamps naive local times. The difference between its clock and UTC,
        rounded to 15 minutes, converts time-zone-aware values to its convention.
        """
        if self._offset is None:
            server_time = self.health().server_time
            if server_time is None:
                self._offset = timedelta(0)
            else:
                now = datetime.now(timezone.utc).replace(tzinfo=None)
                quarters = round((server_time - now).total_seconds() / 900)
                self._offset = timedelta(minutes=15 * quarters)
        return self._offset

    # -- projects -----------------------------------------------------------------------------

    def create_project(self, name: str) -> Id:
        """``POST /project/``."""
        return self._create("POST", "/project/", "project_id", {"name": name})

    def get_project(self, project_id: Id) -> Project | None:
        """``GET /project/{id}``."""
        return self._get_one(Project, "/project/{}", project_id)

    def list_projects(self) -> list[Project]:
        """``GET /project/`` (a bare array)."""
        return [Project.from_wire(row) for row in self._json("GET", "/project/")]

    # -- experiments --------------------------------------------------------------------------

    def create_experiment(self, project_id: Id, name: str) -> Id:
        """``POST /experiment/project/{project_id}`` with ``status_id`` 1."""
        path = _path("/experiment/project/{}", project_id)
        return self._create("POST", path, "experiment_id", {"status_id": 1, "name": name})

    def get_experiment(self, experiment_id: Id) -> Experiment | None:
        """``GET /experiment/{id}``."""
        return self._get_one(Experiment, "/experiment/{}", experiment_id)

    def list_experiments(self, project_id: Id, page: Pagination) -> PaginatedResponse[Experiment]:
        """``GET /experiment/project/{project_id}``, one page."""
        return self._page(Experiment, _path("/experiment/project/{}", project_id), page)

    def update_experiment(
        self,
        experiment_id: Id,
        *,
        status_id: int,
        name: str | None,
        description: str | None,
        end_date: datetime | None,
    ) -> None:
        """``PATCH /experiment/{id}``, always with ``status_id`` (the server needs it)."""
        body = {
            "status_id": status_id,
            "name": name,
            "description": description,
            "end_date": _datetime_or_none(end_date),
        }
        self._json("PATCH", _path("/experiment/{}", experiment_id), body=_drop_none(body))

    # -- iterations ---------------------------------------------------------------------------

    def create_iteration(self, experiment_id: Id, parent_iteration_id: Id | None) -> Id:
        """``POST /iteration/experiment/{experiment_id}[?parent_iteration_id=]`` (no body)."""
        params = (
            None
            if parent_iteration_id is None
            else {"parent_iteration_id": str(parent_iteration_id)}
        )
        path = _path("/iteration/experiment/{}", experiment_id)
        return self._create("POST", path, "iteration_id", None, params=params)

    def get_iteration(self, iteration_id: Id) -> Iteration | None:
        """``GET /iteration/{id}``."""
        return self._get_one(Iteration, "/iteration/{}", iteration_id)

    def list_iterations(self, experiment_id: Id, page: Pagination) -> PaginatedResponse[Iteration]:
        """``GET /iteration/experiment/{experiment_id}``, one page."""
        return self._page(Iteration, _path("/iteration/experiment/{}", experiment_id), page)

    def list_child_iterations(self, iteration_id: Id) -> list[Iteration]:
        """``GET /iteration/{id}/children`` (a bare array)."""
        rows = self._json("GET", _path("/iteration/{}/children", iteration_id))
        return [Iteration.from_wire(row) for row in rows]

    def update_iteration(
        self,
        iteration_id: Id,
        *,
        notes: str | None,
        end_date: datetime | None,
        status_id: int | None,
        error_message: str | None,
    ) -> None:
        """``PATCH /iteration/{id}``; status and end date go in one request."""
        body = {
            "notes": notes,
            "end_date": _datetime_or_none(end_date),
            "status_id": status_id,
            "error_message": error_message,
        }
        self._json("PATCH", _path("/iteration/{}", iteration_id), body=_drop_none(body))

    # -- tags ---------------------------------------------------------------------------------

    def add_tag(self, target: str, target_id: Id, value: str) -> Id:
        """``POST /tag/{target}/{id}``; returns the association id."""
        path = _path("/tag/" + target + "/{}", target_id)
        return self._create("POST", path, "association_id", {"value": value})

    def list_tags(self, target: str, target_id: Id) -> list[Tag]:
        """``GET /tag/{target}/{id}`` (a bare array)."""
        rows = self._json("GET", _path("/tag/" + target + "/{}", target_id))
        return [Tag.from_wire(row) for row in rows]

    # -- parameters ---------------------------------------------------------------------------

    def create_parameter(self, iteration_id: Id, key: str, value: str) -> Id:
        """``POST /parameter/iteration/{iteration_id}``."""
        path = _path("/parameter/iteration/{}", iteration_id)
        return self._create("POST", path, "parameter_id", {"key": key, "value": value})

    def get_parameter(self, parameter_id: Id) -> Parameter | None:
        """``GET /parameter/{id}``."""
        return self._get_one(Parameter, "/parameter/{}", parameter_id)

    def list_parameters(self, iteration_id: Id, page: Pagination) -> PaginatedResponse[Parameter]:
        """``GET /parameter/iteration/{iteration_id}``, one page."""
        return self._page(Parameter, _path("/parameter/iteration/{}", iteration_id), page)

    def update_parameter(self, parameter_id: Id, *, key: str | None, value: str | None) -> None:
        """``PATCH /parameter/{id}``."""
        body = _drop_none({"key": key, "value": value})
        self._json("PATCH", _path("/parameter/{}", parameter_id), body=body)

    def delete_parameter(self, parameter_id: Id) -> None:
        """``DELETE /parameter/{id}``."""
        self._json("DELETE", _path("/parameter/{}", parameter_id))

    # -- metrics ------------------------------------------------------------------------------

    def create_metric(
        self,
        iteration_id: Id,
        key: str,
        value: float,
        *,
        step: int | None,
        recorded_at: datetime | None,
    ) -> Id:
        """``POST /metric/iteration/{iteration_id}``."""
        body = {
            "key": key,
            "value": value,
            "step": step,
            "recorded_at": _datetime_or_none(recorded_at),
        }
        path = _path("/metric/iteration/{}", iteration_id)
        return self._create("POST", path, "metric_id", _drop_none(body))

    def log_metrics(
        self,
        iteration_id: Id,
        metrics: Sequence[tuple[str, float]],
        *,
        step: int | None,
        recorded_at: datetime | None,
    ) -> list[Id]:
        """``POST /metric/iteration/{iteration_id}/batch``; ids come back unordered."""
        body = _batch_body(metrics, step, recorded_at)
        answer = self._json(
            "POST", self.batch_path(iteration_id), body=body, expect=201, direct=True
        )
        return list(answer["metric_ids"])

    # -- metric batches sent by another process -----------------------------------------------

    def batch_path(self, iteration_id: Id) -> str:
        """The path (after the base URL) of ``POST /metric/iteration/{id}/batch``."""
        return _path("/metric/iteration/{}/batch", iteration_id)

    @property
    def batch_target(
        self,
    ) -> tuple[str, int, str, float, tuple[bool, str | None, str | None] | None] | None:
        """Where another process can post metric batches itself, or ``None`` when it cannot.

        Returns:
            ``(host, port, path prefix, timeout, tls)``, where ``tls`` is ``None`` for
            ``http://`` and ``(verify, CA file, CA directory)`` for ``https://``, taken from
            this backend's session (``REQUESTS_CA_BUNDLE``, ``CURL_CA_BUNDLE`` or certifi's
            bundle). ``None`` with a session given by the caller, a proxy, client
            certificates or session-level auth, which only ``requests`` applies.
        """
        session = self._session
        parts = urlsplit(self.url)
        if (
            not self._own_session
            or session.proxies
            or session.auth
            or session.cert
            or not parts.hostname
        ):
            return None
        https = parts.scheme == "https"
        try:
            port = parts.port or (443 if https else 80)
        except ValueError:
            return None
        tls: tuple[bool, str | None, str | None] | None = None
        if https:
            verify = session.verify
            if verify is False:
                tls = (False, None, None)
            else:
                where = verify if isinstance(verify, str) else DEFAULT_CA_BUNDLE_PATH
                tls = (True, None, where) if os.path.isdir(where) else (True, where, None)
        return parts.hostname, port, parts.path.rstrip("/"), self.timeout, tls

    def batch_headers(self) -> dict[str, str] | None:
        """The headers of a metric batch request, or ``None`` when the token is due a refresh.

        Never refreshes (no network): a caller that gets ``None`` sends through this backend,
        which refreshes the token first.
        """
        deadline = self._token_deadline
        if deadline is not None and time.monotonic() >= deadline:
            return None
        headers = {"Content-Type": "application/json; charset=utf-8"}
        if self._token:
            headers["Authorization"] = "Bearer " + self._token
        return headers

    def read_batch_answer(
        self, path: str, status: int, headers: Mapping[str, str], content: bytes
    ) -> list[Id]:
        """Read the answer to a metric batch that another process sent through a direct lane.

        Args:
            path: The request path (:meth:`batch_path`).
            status: The answer's status code.
            headers: The answer's headers.
            content: The answer's body.

        Returns:
            The ids of the points written (unordered).

        Raises:
            APIError: The server refused the batch (the subclass of the status and code).
            ResponseLostError: The answer was not the JSON the server sends.
        """
        url = self.url + path
        answer = _Answer("POST", url, status, CaseInsensitiveDict(headers), content)
        return list(self._decode(answer, 201)["metric_ids"])

    def lost_batch_error(self, path: str, kind: str, message: str) -> TransportError:
        """Rebuild the transport error another process met while sending a metric batch.

        Args:
            path: The request path (:meth:`batch_path`).
            kind: The error's class name: ``ConnectError``, ``ReadTimeoutError`` or anything
                else for :class:`ResponseLostError` (the request may have been applied).
            message: What happened.
        """
        error_class: type[TransportError] = {
            "ConnectError": ConnectError,
            "ReadTimeoutError": ReadTimeoutError,
        }.get(kind, ResponseLostError)
        return error_class(message, method="POST", url=self.url + path)

    def get_metric(self, metric_id: Id) -> Metric | None:
        """``GET /metric/{id}``."""
        return self._get_one(Metric, "/metric/{}", metric_id)

    def list_metrics(self, iteration_id: Id, page: Pagination) -> PaginatedResponse[Metric]:
        """``GET /metric/iteration/{iteration_id}``, one page, by step."""
        return self._page(Metric, _path("/metric/iteration/{}", iteration_id), page)

    def update_metric(
        self,
        metric_id: Id,
        *,
        key: str | None,
        value: float | None,
        step: int | None,
        recorded_at: datetime | None,
    ) -> None:
        """``PATCH /metric/{id}``."""
        body = {
            "key": key,
            "value": value,
            "step": step,
            "recorded_at": _datetime_or_none(recorded_at),
        }
        self._json("PATCH", _path("/metric/{}", metric_id), body=_drop_none(body))

    def delete_metric(self, metric_id: Id) -> None:
        """``DELETE /metric/{id}``."""
        self._json("DELETE", _path("/metric/{}", metric_id))

    # -- resources ----------------------------------------------------------------------------

    def create_resource(self, experiment_id: Id, name: str, data: BinaryIO, size: int | None) -> Id:
        """``POST /resource/experiment/{experiment_id}`` as streamed multipart."""
        body = _MultipartStream([("name", name.encode())], ("data", name, data, size))
        path = _path("/resource/experiment/{}", experiment_id)
        answer = self._json("POST", path, raw=body, expect=201)
        return _field(answer, "resource_id")

    def get_resource(self, resource_id: Id) -> Resource | None:
        """``GET /resource/{id}`` (metadata only)."""
        return self._get_one(Resource, "/resource/{}", resource_id)

    def list_resources(self, experiment_id: Id, page: Pagination) -> PaginatedResponse[Resource]:
        """``GET /resource/experiment/{experiment_id}``, one page."""
        return self._page(Resource, _path("/resource/experiment/{}", experiment_id), page)

    def update_resource(
        self,
        resource_id: Id,
        *,
        name: str | None,
        description: str | None,
        data: BinaryIO | None,
        size: int | None,
    ) -> None:
        """``PATCH /resource/{id}`` as multipart with only the given parts."""
        fields = [
            (part, text.encode())
            for part, text in (("name", name), ("description", description))
            if text is not None
        ]
        file_part = None if data is None else ("data", name or "data", data, size)
        body = _MultipartStream(fields, file_part)
        self._json("PATCH", _path("/resource/{}", resource_id), raw=body)

    def delete_resource(self, resource_id: Id) -> None:
        """``DELETE /resource/{id}``."""
        self._json("DELETE", _path("/resource/{}", resource_id))

    def open_resource_data(self, resource_id: Id) -> ReadableStream | None:
        """``GET /resource/{id}/data``, streamed: the caller reads chunks and closes."""
        response = self._send("GET", _path("/resource/{}/data", resource_id), stream=True)
        assert isinstance(response, requests.Response)  # streams never take the direct lane
        if _entity_missing(response):
            response.close()
            return None
        if response.status_code != 200:
            try:
                raise self._api_error(response)
            finally:
                response.close()
        response.raw.decode_content = True
        return _ResponseStream(response, self._where("GET", response.url))

    # -- model registry -----------------------------------------------------------------------

    def create_model(self, project_id: Id, name: str, description: str | None) -> Id:
        """``POST /model/project/{project_id}``."""
        body = _drop_none({"name": name, "description": description})
        return self._create("POST", _path("/model/project/{}", project_id), "model_id", body)

    def get_model(self, model_id: Id) -> Model | None:
        """``GET /model/{id}``."""
        return self._get_one(Model, "/model/{}", model_id)

    def list_models(self, project_id: Id, page: Pagination) -> PaginatedResponse[Model]:
        """``GET /model/project/{project_id}``, one page."""
        return self._page(Model, _path("/model/project/{}", project_id), page)

    def update_model(self, model_id: Id, *, name: str | None, description: str | None) -> None:
        """``PATCH /model/{id}``."""
        body = _drop_none({"name": name, "description": description})
        self._json("PATCH", _path("/model/{}", model_id), body=body)

    def create_model_version(
        self,
        model_id: Id,
        iteration_id: Id,
        resource_id: Id | None,
        description: str | None,
    ) -> Id:
        """``POST /modelversion/model/{model_id}``; ids keep their JSON type."""
        body = _drop_none(
            {"iteration_id": iteration_id, "resource_id": resource_id, "description": description}
        )
        path = _path("/modelversion/model/{}", model_id)
        return self._create("POST", path, "modelversion_id", body)

    def get_model_version(self, version_id: Id) -> ModelVersion | None:
        """``GET /modelversion/{id}``."""
        return self._get_one(ModelVersion, "/modelversion/{}", version_id)

    def list_model_versions(
        self, model_id: Id, page: Pagination
    ) -> PaginatedResponse[ModelVersion]:
        """``GET /modelversion/model/{model_id}``, one page, by version."""
        return self._page(ModelVersion, _path("/modelversion/model/{}", model_id), page)

    def update_model_version(
        self,
        version_id: Id,
        *,
        stage_id: int | None,
        description: str | None,
        resource_id: Id | None,
    ) -> None:
        """``PATCH /modelversion/{id}``."""
        body = _drop_none(
            {"stage_id": stage_id, "description": description, "resource_id": resource_id}
        )
        self._json("PATCH", _path("/modelversion/{}", version_id), body=body)

    # -- request steps ------------------------------------------------------------------------

    def _create(
        self,
        method: str,
        path: str,
        field: str,
        body: Mapping[str, Any] | None,
        *,
        params: Mapping[str, str] | None = None,
    ) -> Id:
        """Send a create and return the new id from ``{"<field>": id}``."""
        answer = self._json(method, path, body=body, params=params, expect=201)
        return _field(answer, field)

    def _get_one(self, cls: type[E], template: str, entity_id: Id) -> E | None:
        """Read one entity; ``None`` on 404."""
        response = self._send("GET", _path(template, entity_id))
        if _entity_missing(response):
            return None
        return cls.from_wire(self._decode(response, 200))

    def _page(self, cls: type[E], path: str, page: Pagination) -> PaginatedResponse[E]:
        """Read one page of a paged list."""
        params = {"limit": str(page.limit), "offset": str(page.offset)}
        answer = self._json("GET", path, params=params)
        return PaginatedResponse(
            data=[cls.from_wire(row) for row in answer["data"]],
            total=int(answer["total"]),
            limit=int(answer["limit"]),
            offset=int(answer["offset"]),
        )

    def _json(
        self,
        method: str,
        path: str,
        *,
        body: Mapping[str, Any] | None = None,
        raw: _MultipartStream | None = None,
        params: Mapping[str, str] | None = None,
        expect: int = 200,
        auth: bool = True,
        refresh: bool = True,
        direct: bool = False,
    ) -> Any:
        """Send a request and return its decoded JSON answer, or raise.

        ``direct`` sends a JSON request through the direct lane when the backend has one (see
        :class:`_DirectLane`); the per-step metric batches use it.
        """
        response = self._send(
            method,
            path,
            body=body,
            raw=raw,
            params=params,
            auth=auth,
            refresh=refresh,
            direct=direct and raw is None and params is None,
        )
        return self._decode(response, expect)

    def _send(
        self,
        method: str,
        path: str,
        *,
        body: Mapping[str, Any] | None = None,
        raw: _MultipartStream | None = None,
        params: Mapping[str, str] | None = None,
        stream: bool = False,
        auth: bool = True,
        refresh: bool = True,
        direct: bool = False,
    ) -> _Reply:
        """Send one request; sign in again once if the token expired and credentials exist.

        This is the only place ``requests`` exceptions are caught and translated (the direct
        lane translates its own).
        """
        if auth and refresh:
            self._refresh_if_due()
        send: Callable[..., _Reply] = (
            self._send_direct if direct and self._lane is not None else self._send_once
        )
        response = send(method, path, body, raw, params, stream, auth)
        if response.status_code == 401 and auth and self._can_sign_in() and raw is None:
            code = _error_code(response)
            if code in ("TOKEN_EXPIRED", "TOKEN_INVALID"):
                # A 401 means the request was refused, so sending it again cannot duplicate it.
                # TOKEN_INVALID follows a change of the server's signing secret.
                logger.info("token refused (%s); signing in again as %s", code, self._username)
                response.close()
                with self._auth_lock:
                    self._sign_in_locked()
                response = send(method, path, body, raw, params, stream, auth)
        return response

    def _send_once(
        self,
        method: str,
        path: str,
        body: Mapping[str, Any] | None,
        raw: _MultipartStream | None,
        params: Mapping[str, str] | None,
        stream: bool,
        auth: bool,
    ) -> requests.Response:
        """Send without any retry and map transport failures to the error tree."""
        url = self.url + path
        headers: dict[str, str] = {}
        data: Any = None
        if auth and self._token:
            headers["Authorization"] = "Bearer " + self._token
        if body is not None:
            headers["Content-Type"] = "application/json; charset=utf-8"
            data = _encode_json(body)
        elif raw is not None:
            headers["Content-Type"] = raw.content_type
            data = raw.as_request_body()
        start = time.perf_counter()
        try:
            response = self._session.request(
                method,
                url,
                params=params,
                data=data,
                headers=headers,
                timeout=self.timeout,
                stream=stream,
                allow_redirects=False,
            )
        except requests.RequestException as exc:
            raise _transport_error(exc, method, url) from exc
        logger.debug(
            "%s %s -> %s in %.1f ms",
            method,
            path,
            response.status_code,
            (time.perf_counter() - start) * 1000,
        )
        return response

    def _send_direct(
        self,
        method: str,
        path: str,
        body: Mapping[str, Any] | None,
        raw: _MultipartStream | None,
        params: Mapping[str, str] | None,
        stream: bool,
        auth: bool,
    ) -> _Reply:
        """Send a JSON request through the direct lane, without any retry."""
        assert self._lane is not None and raw is None and params is None and not stream
        headers = {"Content-Type": "application/json; charset=utf-8"}
        if auth and self._token:
            headers["Authorization"] = "Bearer " + self._token
        data = None if body is None else _encode_json(body)
        start = time.perf_counter()
        answer = self._lane.send(method, path, self.url + path, data, headers)
        if logger.isEnabledFor(logging.DEBUG):
            elapsed = (time.perf_counter() - start) * 1000
            logger.debug("%s %s -> %s in %.1f ms", method, path, answer.status_code, elapsed)
        return answer

    def _decode(self, response: _Reply, expect: int) -> Any:
        """Return the JSON of a successful answer or raise the matching :class:`APIError`."""
        if response.status_code >= 400:
            raise self._api_error(response)
        if response.status_code != expect and not (200 <= response.status_code < 300):
            raise self._api_error(response)
        try:
            return response.json()
        except ValueError as exc:
            where = self._where(response.request.method or "", response.url)
            msg = f"the server answered {response.status_code} with a body that is not JSON"
            raise ResponseLostError(msg, method=where[0], url=where[1]) from exc

    def _api_error(self, response: _Reply) -> APIError:
        """Build the error for a failed answer, reading the envelope when there is one."""
        code, message = _read_error_body(response)
        if response.status_code == 404 and code == "UNKNOWN":
            message = (
                "the server has no such route; check that the URL is the DearDiary server's "
                "base URL (no path, no API prefix)"
            )
        method, url = self._where(response.request.method or "", response.url)
        error = api_error_for(response.status_code, code, message, method=method, url=url)
        error.retry_after = _retry_after(response.headers.get("Retry-After"))
        return error

    def _where(self, method: str, url: str) -> tuple[str, str]:
        """Return method and the URL without its query string (which never holds secrets)."""
        return method, url.split("?", 1)[0]

    # -- authentication -----------------------------------------------------------------------

    def _can_sign_in(self) -> bool:
        return self._username is not None and self._password is not None

    def _sign_in(self) -> AuthInfo:
        """``POST /auth`` with the username and password."""
        with self._auth_lock:
            return self._sign_in_locked()

    def _sign_in_locked(self) -> AuthInfo:
        body = {"username": self._username, "password": self._password}
        response = self._send_once("POST", "/auth", body, None, None, False, False)
        return self._adopt_token(self._decode(response, 200))

    def _adopt_token(self, answer: Mapping[str, Any]) -> AuthInfo:
        """Keep a new token and schedule its refresh on this machine's monotonic clock."""
        self._token = str(answer["access_token"])
        self._token_deadline = _deadline_from_jwt(self._token)
        return AuthInfo(
            user=User.from_wire(answer["user"]),
            expires_at=int(answer["expires_at"]),
            token_type=str(answer.get("token_type", "Bearer")),
        )

    def _refresh_if_due(self) -> None:
        """Refresh the token once most of its lifetime has passed.

        The lifetime is read from the token's own ``exp`` against its first use here; the
        server's clock skew cancels out because only a duration is used.
        """
        deadline = self._token_deadline
        if deadline is None or time.monotonic() < deadline:
            return
        with self._auth_lock:
            if self._token_deadline is None or time.monotonic() < self._token_deadline:
                return
            try:
                answer = self._decode(
                    self._send_once("POST", "/auth/refresh", None, None, None, False, True), 200
                )
                self._adopt_token(answer)
                logger.debug("token refreshed")
            except TokenExpiredError:
                if not self._can_sign_in():
                    raise
                self._sign_in_locked()
            except (APIError, TransportError) as exc:
                # Keep the current token; the request itself will tell whether it still works.
                logger.warning("could not refresh the token (%s); will try again", exc)
                self._token_deadline = time.monotonic() + 30.0


# -- helpers ----------------------------------------------------------------------------------


class _Sent:
    """What an answer of the direct lane tells about its request (as ``Response.request``)."""

    def __init__(self, method: str) -> None:
        self.method: str | None = method


class _Answer:
    """An answer read by the direct lane, with the parts of ``requests.Response`` used here."""

    def __init__(
        self, method: str, url: str, status: int, headers: CaseInsensitiveDict[str], content: bytes
    ) -> None:
        self.request = _Sent(method)
        self.url = url
        self.status_code = status
        self.headers = headers
        self.content = content

    def json(self) -> Any:
        """Decode the body as JSON (raises ``ValueError`` when it is not)."""
        return json.loads(self.content)

    def close(self) -> None:
        """Nothing to release: the body has been read and the connection handed back."""


#: An answer from ``requests`` or from the direct lane.
_Reply = Union[requests.Response, _Answer]


class _DirectLane:
    """Keep-alive connections that send small JSON requests without ``requests``' layers.

    A metric batch is one small request per training step, and ``requests`` (sessions, hooks,
    cookies, adapters, urllib3's pool) costs about three times the CPU of the request itself
    on ``http.client``: CPU that background delivery takes from the training loop. The lane
    is used for plain ``http://`` servers reached without a proxy, with the backend's own
    session (whose settings then have no effect on these requests); its errors map to the
    same transport errors as ``requests``' (a connection that could not be opened: nothing
    was sent; anything after that: the request may have been applied).

    Args:
        host: The server's host.
        port: The server's port.
        prefix: The base URL's path, put before every request path.
        timeout: Seconds to wait for the connection and for each read.
    """

    def __init__(self, host: str, port: int, prefix: str, timeout: float) -> None:
        self._host = host
        self._port = port
        self._prefix = prefix
        self._timeout = timeout
        self._idle: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()
        self._closed = False

    @classmethod
    def for_session(cls, url: str, session: requests.Session, timeout: float) -> _DirectLane | None:
        """Return a lane for the backend's own session, or ``None`` when it cannot be used."""
        parts = urlsplit(url)
        if parts.scheme != "http" or session.proxies or session.auth or not parts.hostname:
            return None
        try:
            port = parts.port or 80
        except ValueError:
            return None
        return cls(parts.hostname, port, parts.path.rstrip("/"), timeout)

    def close(self) -> None:
        """Close the idle connections (those in use are closed when handed back)."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for connection in idle:
            connection.close()

    def send(
        self, method: str, path: str, url: str, data: bytes | None, headers: dict[str, str]
    ) -> _Answer:
        """Send one request and read its whole answer.

        Args:
            method: The HTTP method.
            path: The path after the base URL.
            url: The full URL (for errors and the answer).
            data: The body, or ``None``.
            headers: The request headers.

        Raises:
            ConnectError: No connection could be opened; nothing was sent.
            ReadTimeoutError: No answer in time; the request may have been applied.
            ResponseLostError: The connection failed after it was opened; the request may
                have been applied.
        """
        where = url.split("?", 1)[0]
        connection = self._connection(method, where)
        try:
            connection.request(method, self._prefix + path, body=data, headers=headers)
            response = connection.getresponse()
            content = response.read()
        except TimeoutError as exc:
            connection.close()
            msg = "the server did not answer in time; the request may have been applied"
            raise ReadTimeoutError(msg, method=method, url=where) from exc
        except (OSError, http.client.HTTPException) as exc:
            connection.close()
            msg = (
                f"the connection failed before the answer arrived ({type(exc).__name__}); "
                "the request may have been applied"
            )
            raise ResponseLostError(msg, method=method, url=where) from exc
        answer = _Answer(
            method, url, response.status, CaseInsensitiveDict(response.getheaders()), content
        )
        if response.will_close:
            connection.close()
        else:
            self._hand_back(connection)
        return answer

    def _connection(self, method: str, where: str) -> http.client.HTTPConnection:
        """Take an idle connection the server has not closed, or open a new one."""
        while True:
            with self._lock:
                connection = self._idle.pop() if self._idle else None
            if connection is None:
                break
            sock = connection.sock
            if sock is not None and not wait_for_read(sock, timeout=0.0):
                return connection
            # Readable while idle: the server closed it (or sent something unasked for).
            connection.close()
        connection = http.client.HTTPConnection(self._host, self._port, timeout=self._timeout)
        try:
            connection.connect()
            assert connection.sock is not None
            connection.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError as exc:
            connection.close()
            msg = "could not connect to the DearDiary server; is it running and is the URL right?"
            raise ConnectError(msg, method=method, url=where) from exc
        return connection

    def _hand_back(self, connection: http.client.HTTPConnection) -> None:
        with self._lock:
            if not self._closed:
                self._idle.append(connection)
                return
        connection.close()


def _session_for(url: str) -> requests.Session:
    """Open a session that reads the environment's network settings once, not per request.

    By default ``requests`` looks up proxies and ``NO_PROXY`` (a scan of every environment
    variable, twice), CA bundles and ``.netrc`` on every request: about a quarter of the CPU
    a small request costs. For one base URL the answers do not change, so they are read here,
    with the same rules, and the per-request lookup is turned off. A session passed by the
    caller is used as it is.
    """
    session = requests.Session()
    session.proxies.update(requests.utils.get_environ_proxies(url))
    bundle = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
    if bundle:
        session.verify = bundle
    netrc = requests.utils.get_netrc_auth(url)
    if netrc:
        session.auth = netrc
    session.trust_env = False
    return session


def _path(template: str, entity_id: Id) -> str:
    """Put an opaque id into a path, escaped so that no id can change the route."""
    return template.format(quote(str(entity_id), safe=""))


def _field(answer: Any, field: str) -> Id:
    """Read the id out of a create answer, keeping its JSON type."""
    value = answer[field]
    if not isinstance(value, (int, str)) or isinstance(value, bool):
        msg = f"the server answered a create with {field}={value!r}, which is not an id"
        raise TypeError(msg)
    return value


def _drop_none(body: Mapping[str, Any]) -> dict[str, Any]:
    """Leave out fields that are not given (the server reads absent and null alike)."""
    return {key: value for key, value in body.items() if value is not None}


def _datetime_or_none(value: datetime | None) -> str | None:
    return None if value is None else format_datetime(value)


def _batch_body(
    metrics: Sequence[tuple[str, float]], step: int | None, recorded_at: datetime | None
) -> dict[str, Any]:
    """The JSON body of a metric batch (fields that are not given are left out)."""
    body = {
        "metrics": [{"key": key, "value": value} for key, value in metrics],
        "step": step,
        "recorded_at": _datetime_or_none(recorded_at),
    }
    return _drop_none(body)


def _encode_json(body: Mapping[str, Any]) -> bytes:
    """Encode JSON without NaN or Infinity tokens, which the server refuses."""
    try:
        return json.dumps(body, allow_nan=False, separators=(",", ":")).encode("utf-8")
    except ValueError as exc:
        bad = [k for k, v in body.items() if isinstance(v, float) and not math.isfinite(v)]
        msg = f"refusing to send a non-finite number to the server (fields: {bad or 'nested'})"
        raise ValueError(msg) from exc


def _retry_after(value: str | None) -> float | None:
    """Read a ``Retry-After`` header: delay-seconds or an HTTP date (RFC 9110, 10.2.3)."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, (when - datetime.now(timezone.utc)).total_seconds())


def _entity_missing(response: _Reply) -> bool:
    """Whether a 404 says "no such entity" (with the envelope), not "no such route".

    The server answers an unknown path with an empty 404. Reading that as a missing entity
    would hide a wrong base URL, so only an envelope 404 counts; the other raises.
    """
    if response.status_code != 404:
        return False
    return _error_code(response) in ("NOT_FOUND", "USER_NOT_FOUND")


def _error_code(response: _Reply) -> str:
    return _read_error_body(response)[0]


def _read_error_body(response: _Reply) -> tuple[str, str]:
    """Return (code, message) of an error answer: envelope, generic body, or empty body."""
    fallback = ("UNKNOWN", f"HTTP {response.status_code}")
    try:
        content = response.content
    except requests.RequestException:
        return fallback
    if not content:
        return fallback
    try:
        data = json.loads(content)
    except ValueError:
        return fallback
    if not isinstance(data, dict):
        return fallback
    code = data.get("code")
    message = data.get("message")
    return (
        code if isinstance(code, str) and code else "UNKNOWN",
        message if isinstance(message, str) and message else fallback[1],
    )


_NOT_SENT = (
    urllib3.exceptions.NewConnectionError,
    urllib3.exceptions.ConnectTimeoutError,
    urllib3.exceptions.NameResolutionError,
)


def _transport_error(exc: requests.RequestException, method: str, url: str) -> TransportError:
    """Map a ``requests`` failure to the most specific transport error.

    A failure to open the connection means the request never left; anything after that (a
    timeout while waiting, a connection closed before the answer) may hide an applied write.
    """
    where = url.split("?", 1)[0]
    if isinstance(exc, requests.ConnectTimeout):
        return ConnectError(f"timed out connecting to the server: {exc}", method=method, url=where)
    if isinstance(exc, requests.ReadTimeout):
        return ReadTimeoutError(
            "the server did not answer in time; the request may have been applied",
            method=method,
            url=where,
        )
    if isinstance(exc, (requests.exceptions.SSLError, requests.exceptions.InvalidURL)):
        return ConnectError(f"could not open a connection: {exc}", method=method, url=where)
    if isinstance(exc, requests.ConnectionError) and _caused_by(exc, _NOT_SENT):
        return ConnectError(
            "could not connect to the DearDiary server; is it running and is the URL right?",
            method=method,
            url=where,
        )
    return ResponseLostError(
        f"the connection failed before the answer arrived ({type(exc).__name__}); "
        "the request may have been applied",
        method=method,
        url=where,
    )


def _caused_by(exc: BaseException, kinds: tuple[type[BaseException], ...]) -> bool:
    """Whether ``exc`` wraps one of ``kinds`` (through causes, contexts or ``args``)."""
    seen: set[int] = set()
    todo: list[BaseException] = [exc]
    while todo:
        current = todo.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, kinds):
            return True
        todo.extend(arg for arg in current.args if isinstance(arg, BaseException))
        reason = getattr(current, "reason", None)
        if isinstance(reason, BaseException):
            todo.append(reason)
        for linked in (current.__cause__, current.__context__):
            if linked is not None:
                todo.append(linked)
    return False


def _deadline_from_jwt(token: str) -> float | None:
    """Return the monotonic time at which a token should be refreshed, from its ``exp``.

    The ``exp`` claim is compared with the token's issue time when it carries one, otherwise
    the server's 24-hour lifetime is assumed to have started now. Unreadable tokens are never
    refreshed proactively (an expiry answer still triggers a new sign-in).
    """
    try:
        payload_b64 = token.split(".")[1]
        padded = payload_b64 + "=" * (-len(payload_b64) % 4)
        claims = json.loads(base64.urlsafe_b64decode(padded))
        exp = int(claims["exp"])
    except (IndexError, KeyError, ValueError, TypeError, binascii.Error):
        return None
    issued = claims.get("iat")
    if isinstance(issued, int):
        lifetime = float(max(exp - issued, 0))
    else:
        # Without iat, exp is skewed by the server's offset: remaining lifetime is exp minus the
        # server's "now as UTC". Comparing with our own UTC clock is off by at most the offset,
        # which is bounded by the 24 h lifetime, so the minimum with 24 h keeps it sane.
        lifetime = min(max(exp - time.time(), 0.0), 24 * 3600.0)
    # exp has whole seconds (servers may round up): take one second off before scaling.
    return time.monotonic() + REFRESH_AT * max(lifetime - 1.0, 0.0)


class _MultipartStream:
    """A ``multipart/form-data`` body produced while it is sent, never held whole in memory.

    ``requests`` treats an object with ``read`` and ``__len__`` as a stream with a known
    ``Content-Length`` and reads it in blocks. When the file's size is unknown the body is handed
    over as a generator and goes out with chunked transfer encoding instead.
    """

    def __init__(
        self,
        fields: Sequence[tuple[str, bytes]],
        file_part: tuple[str, str, BinaryIO, int | None] | None,
    ) -> None:
        boundary = uuid.uuid4().hex
        self.content_type = f"multipart/form-data; boundary={boundary}"
        pieces: list[bytes | tuple[BinaryIO, int | None]] = []
        for name, value in fields:
            pieces.append(
                f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode()
                + value
                + b"\r\n"
            )
        if file_part is not None:
            name, filename, stream, size = file_part
            safe_filename = filename.replace('"', "%22").replace("\r", "").replace("\n", "")
            pieces.append(
                (
                    f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; '
                    f'filename="{safe_filename}"\r\n'
                    "Content-Type: application/octet-stream\r\n\r\n"
                ).encode()
            )
            pieces.append((stream, size))
            pieces.append(b"\r\n")
        pieces.append(f"--{boundary}--\r\n".encode())
        self._pieces = pieces
        sizes = [len(p) if isinstance(p, bytes) else p[1] for p in pieces]
        self._length = None if any(s is None for s in sizes) else sum(s or 0 for s in sizes)
        self._chunks = self._generate()
        self._chunk = b""
        self._pos = 0

    def __len__(self) -> int:
        return self._length or 0

    def as_request_body(self) -> _MultipartStream | Iterator[bytes]:
        """What to hand to ``requests``: the stream itself when its length is known (sent with
        ``Content-Length``), else a generator, which ``requests`` sends chunked."""
        if self._length is None:
            return iter(self)
        return self

    def __iter__(self) -> Iterator[bytes]:
        return iter(lambda: self.read(UPLOAD_CHUNK), b"")

    def _generate(self) -> Iterator[bytes]:
        for piece in self._pieces:
            if isinstance(piece, bytes):
                yield piece
                continue
            stream, size = piece
            remaining = size
            while remaining is None or remaining > 0:
                want = UPLOAD_CHUNK if remaining is None else min(UPLOAD_CHUNK, remaining)
                chunk = stream.read(want)
                if not chunk:
                    if remaining:
                        msg = f"the file ended {remaining} bytes early while uploading"
                        raise OSError(msg)
                    break
                if remaining is not None:
                    remaining -= len(chunk)
                yield chunk

    def read(self, size: int = -1) -> bytes:
        """Return the next bytes of the body, at most ``size`` (``b""`` at the end).

        Fewer bytes than asked may come back; the sender reads until it gets ``b""``.
        """
        if size < 0:
            rest = self._chunk[self._pos :] + b"".join(self._chunks)
            self._chunk, self._pos = b"", 0
            return rest
        while self._pos >= len(self._chunk):
            chunk = next(self._chunks, None)
            if chunk is None:
                return b""
            self._chunk, self._pos = chunk, 0
        out = self._chunk[self._pos : self._pos + size]
        self._pos += len(out)
        return out


class _ResponseStream:
    """A readable view of a streamed download that maps transport failures to the error tree."""

    def __init__(self, response: requests.Response, where: tuple[str, str]) -> None:
        self._response = response
        self._where = where

    def read(self, size: int = -1, /) -> bytes:
        """Return up to ``size`` bytes of the download."""
        try:
            data: bytes = self._response.raw.read(None if size < 0 else size)
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            msg = f"the download broke off ({type(exc).__name__}); try again"
            raise ResponseLostError(msg, method=self._where[0], url=self._where[1]) from exc
        return data

    def close(self) -> None:
        """Release the connection."""
        self._response.close()

    def __enter__(self) -> _ResponseStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
