"""The test server behaves like DearDiary v0.9.1 on the wire, quirks and faults included.

Plain ``requests`` against the fixture servers of ``tests.deardiary_server.fixtures``; each
test names the section or quirk of the REST contract it checks.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.deardiary_server import (
    DearDiaryTestServer,
    FaultRule,
    RemoteServer,
    server_in_subprocess,
    spawn,
    terminate,
)
from tests.deardiary_server._auth import issue_token, sign_claims
from tests.support import PeakRSS

Factory = Callable[..., DearDiaryTestServer]
GENERIC_400 = {"message": "400: Bad Request"}
GENERIC_500 = {"message": "500: Internal Server Error"}
UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


class Api:
    """A ``requests`` session bound to a server's base URL (and optionally a token)."""

    def __init__(self, url: str, token: str | None = None) -> None:
        self.url = url
        self.session = requests.Session()
        if token is not None:
            self.session.headers["Authorization"] = f"Bearer {token}"

    def call(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("timeout", 10)
        return self.session.request(method, self.url + path, **kwargs)

    def get(self, path: str, **kwargs: Any) -> requests.Response:
        return self.call("GET", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> requests.Response:
        return self.call("POST", path, **kwargs)

    def patch(self, path: str, **kwargs: Any) -> requests.Response:
        return self.call("PATCH", path, **kwargs)

    def delete(self, path: str, **kwargs: Any) -> requests.Response:
        return self.call("DELETE", path, **kwargs)

    def created(self, path: str, key: str, **kwargs: Any) -> Any:
        """POST and return the new id, asserting the 201 shape."""
        response = self.post(path, **kwargs)
        assert response.status_code == 201, response.text
        return response.json()[key]


def _tree(api: Api) -> tuple[Any, Any, Any]:
    """A project, an IN_PROGRESS experiment and a running iteration."""
    project = api.created("/project/", "project_id", json={"name": "p"})
    experiment = api.created(
        f"/experiment/project/{project}", "experiment_id", json={"name": "e", "status_id": 1}
    )
    iteration = api.created(f"/iteration/experiment/{experiment}", "iteration_id")
    return project, experiment, iteration


def _error(response: requests.Response) -> tuple[int, str | None]:
    body = response.json()
    return response.status_code, body.get("code")


@pytest.fixture
def api(deardiary_server: DearDiaryTestServer) -> Api:
    return Api(deardiary_server.url)


# --- transport and routing (sections 1.2-1.8) ---------------------------------------------------


def test_health_is_json_with_the_local_clock(api: Api) -> None:
    response = api.get("/health")
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/json; charset=utf-8"
    body = response.json()
    assert body["app_name"] == "DearDiary" and body["package_version"] == "0.9.1"
    stamp = datetime.fromisoformat(body["server_time"])
    assert abs(stamp - datetime.now()) < timedelta(seconds=5)


def test_unknown_path_wrong_method_trailing_slash_and_preflight(api: Api) -> None:
    unknown = api.get("/nope/1")
    assert (unknown.status_code, unknown.content) == (404, b"")
    assert "Access-Control-Allow-Origin" not in unknown.headers

    wrong = api.call("PUT", "/project")
    assert (wrong.status_code, wrong.content) == (405, b"")
    assert wrong.headers["Access-Control-Allow-Origin"] == "*"

    api.post("/project", json={"name": "a"})
    assert (
        api.get("/project").json() == api.get("/project/").json() == api.get("//project//").json()
    )

    preflight = api.call("OPTIONS", "/metric/7")
    assert (preflight.status_code, preflight.content) == (200, b"")
    assert preflight.headers["Access-Control-Allow-Methods"] == "GET, POST, PATCH, DELETE, OPTIONS"


def test_non_integer_path_id_is_a_generic_500(api: Api) -> None:
    for path in ("/experiment/abc", "/experiment/project", "/metric/1.5"):
        response = api.get(path)
        assert (response.status_code, response.json()) == (500, GENERIC_500)


@pytest.mark.parametrize(
    "body",
    [
        b"{not json",
        b"",
        b"[1, 2]",
        b'{"key": "loss", "value": NaN}',
        b'{"key": "loss", "value": Infinity}',
        b'{"key": "loss", "value": -Infinity}',
        b'{"key": "loss"}',
        b'{"key": "loss", "value": null}',
        b'{"key": "loss", "value": "1.0"}',
        b'{"key": 3, "value": 1.0}',
        b'{"key": "loss", "value": 1.0, "step": 1.5}',
        b'{"key": "loss", "value": 1.0, "step": "2"}',
        b'{"key": "loss", "value": 1.0, "step": 9223372036854775808}',
        b'{"key": "loss", "value": 1.0, "recorded_at": "2026-06-23 13:14:06"}',
    ],
)
def test_unreadable_bodies_are_a_generic_400(api: Api, body: bytes) -> None:
    _, _, iteration = _tree(api)
    response = api.post(f"/metric/iteration/{iteration}", data=body)
    assert (response.status_code, response.json()) == (400, GENERIC_400)


def test_type_rules_unknown_keys_and_null(api: Api) -> None:
    _, _, iteration = _tree(api)
    metric = api.created(
        f"/metric/iteration/{iteration}",
        "metric_id",
        json={"key": "a", "value": 3, "step": 4.0, "recorded_at": None, "extra": [1]},
    )
    body = api.get(f"/metric/{metric}").json()
    assert (body["value"], body["step"]) == (3.0, 4)
    assert '"value":3.0' in api.get(f"/metric/{metric}").text

    tiny = api.created(
        f"/metric/iteration/{iteration}", "metric_id", json={"key": "t", "value": 1e-5}
    )
    assert '"value":1.0e-5' in api.get(f"/metric/{tiny}").text


@pytest.mark.parametrize(
    ("sent", "accepted", "echoed"),
    [
        ("2026-06-23T13:14:06", True, "2026-06-23T13:14:06"),
        ("2026-06-23T13:14:06.5", True, "2026-06-23T13:14:06.5"),
        ("2026-06-23T13:14:06.500", True, "2026-06-23T13:14:06.5"),
        ("2026-06-23T13:14:06.120", True, "2026-06-23T13:14:06.12"),
        ("2026-06-23T13:14:06.000", True, "2026-06-23T13:14:06"),
        ("2026-06-23T13:14:06.207", True, "2026-06-23T13:14:06.207"),
        ("2026-06-23T13:14:06.207000", False, None),
        ("2026-06-23T13:14:06Z", False, None),
        ("2026-06-23T13:14:06+02:00", False, None),
        ("2026-06-23 13:14:06", False, None),
        ("2026-02-30T13:14:06", False, None),
    ],
)
def test_datetime_input_and_output(api: Api, sent: str, accepted: bool, echoed: str | None) -> None:
    _, _, iteration = _tree(api)
    response = api.post(
        f"/metric/iteration/{iteration}", json={"key": "k", "value": 1.0, "recorded_at": sent}
    )
    if not accepted:
        assert (response.status_code, response.json()) == (400, GENERIC_400)
        return
    assert response.status_code == 201
    assert api.get(f"/metric/{response.json()['metric_id']}").json()["recorded_at"] == echoed


# --- pagination (section 4) ------------------------------------------------------------------


def test_pagination_defaults_and_clamping(api: Api) -> None:
    _, _, iteration = _tree(api)
    for i in range(205):
        api.post(f"/parameter/iteration/{iteration}", json={"key": f"k{i}", "value": "v"})
    base = f"/parameter/iteration/{iteration}"

    def page(query: str) -> dict[str, Any]:
        body: dict[str, Any] = api.get(base + query).json()
        return body

    assert (page("")["limit"], page("")["offset"], len(page("")["data"])) == (50, 0, 50)
    assert page("")["total"] == 205
    assert (page("?limit=500")["limit"], len(page("?limit=500")["data"])) == (200, 200)
    assert (page("?limit=-3")["limit"], page("?limit=-3")["data"]) == (0, [])
    assert page("?limit=0")["total"] == 205
    assert page("?limit=abc")["limit"] == 50
    assert page("?offset=-4")["offset"] == 0
    assert page("?offset=x")["offset"] == 0
    last = page("?limit=200&offset=200")
    assert [row["key"] for row in last["data"]] == [f"k{i}" for i in range(200, 205)]


def test_metrics_page_by_step_then_id_with_automatic_steps(api: Api) -> None:
    _, _, iteration = _tree(api)
    path = f"/metric/iteration/{iteration}"
    api.post(path, json={"key": "loss", "value": 1.0})
    api.post(path, json={"key": "acc", "value": 0.1, "step": 100})
    api.post(path, json={"key": "loss", "value": 2.0})
    api.post(path, json={"key": "acc", "value": 0.2})
    api.post(path, json={"key": "loss", "value": 3.0, "step": -5})
    rows = api.get(path).json()["data"]
    assert [(r["key"], r["step"]) for r in rows] == [
        ("loss", -5),
        ("loss", 0),
        ("loss", 1),
        ("acc", 100),
        ("acc", 101),
    ]


def test_unpaged_lists_are_bare_arrays_and_missing_parents_list_empty(api: Api) -> None:
    _, experiment, iteration = _tree(api)
    child = api.created(
        f"/iteration/experiment/{experiment}?parent_iteration_id={iteration}", "iteration_id"
    )
    assert isinstance(api.get("/project/?limit=0").json(), list)
    children = api.get(f"/iteration/{iteration}/children?limit=0").json()
    assert [c["id"] for c in children] == [child]
    assert api.get("/experiment/project/9999").json() == {
        "data": [],
        "total": 0,
        "limit": 50,
        "offset": 0,
    }
    assert api.get("/tag/iteration/9999").json() == []


# --- write shapes and not-found rules (sections 1.4, 3.3) --------------------------------------


def test_write_shapes_and_not_found_by_verb(api: Api) -> None:
    project, _, iteration = _tree(api)
    parameter = api.created(
        f"/parameter/iteration/{iteration}", "parameter_id", json={"key": "lr", "value": "0.1"}
    )
    assert api.patch(f"/parameter/{parameter}", json={"value": "0.2"}).json() == {
        "message": "UPDATED"
    }
    assert api.get(f"/parameter/{parameter}").json()["value"] == "0.2"
    assert api.delete(f"/parameter/{parameter}").json() == {"message": "OK"}

    assert _error(api.get(f"/parameter/{parameter}")) == (404, "NOT_FOUND")
    assert _error(api.get("/user/999")) == (404, "USER_NOT_FOUND")
    assert _error(api.patch(f"/parameter/{parameter}", json={"value": "x"})) == (
        422,
        "INVALID_PAYLOAD",
    )
    assert _error(api.post("/parameter/iteration/999", json={"key": "a", "value": "b"})) == (
        422,
        "INVALID_PAYLOAD",
    )
    for path in ("/tag/999", "/modelversion/999", "/userpermission/999"):
        assert api.delete(path).json() == {"message": "OK"}
    for path in ("/parameter/999", "/metric/999", "/resource/999", "/model/999", "/user/999"):
        assert _error(api.delete(path)) == (500, "SERVER_ERROR")
    for path in ("/project/999", "/experiment/999", "/iteration/999"):
        assert api.delete(path).json() == GENERIC_500
    assert api.get(f"/project/{project}").status_code == 200


@pytest.mark.parametrize(
    "target", ["user", "project", "userpermission", "iteration", "parameter", "metric"]
)
def test_all_null_patch_is_a_server_error(api: Api, target: str) -> None:
    project, _, iteration = _tree(api)
    ids = {
        "user": api.created(
            "/user/",
            "user_id",
            json={"first_name": "A", "last_name": "B", "username": "ab", "password": "pw"},
        ),
        "project": project,
        "iteration": iteration,
        "parameter": api.created(
            f"/parameter/iteration/{iteration}", "parameter_id", json={"key": "a", "value": "b"}
        ),
        "metric": api.created(
            f"/metric/iteration/{iteration}", "metric_id", json={"key": "a", "value": 1}
        ),
    }
    ids["userpermission"] = api.get(f"/project/{project}/members").json()[0]["id"]
    response = api.patch(f"/{target}/{ids[target]}", json={"name": None})
    assert _error(response) == (500, "SERVER_ERROR")


def test_resource_model_and_version_patch_with_nothing_still_stamp(api: Api) -> None:
    project, experiment, iteration = _tree(api)
    resource = api.created(
        f"/resource/experiment/{experiment}",
        "resource_id",
        files={"data": ("r", b"x")},
        data={"name": "r"},
    )
    model = api.created(f"/model/project/{project}", "model_id", json={"name": "m"})
    assert api.get(f"/model/{model}").json()["updated_date"] is None
    version = api.created(
        f"/modelversion/model/{model}", "modelversion_id", json={"iteration_id": iteration}
    )
    assert api.patch(f"/model/{model}", json={}).status_code == 200
    assert api.patch(f"/modelversion/{version}", json={}).status_code == 200
    empty_form = api.patch(
        f"/resource/{resource}",
        data=b"--b--\r\n",
        headers={"Content-Type": "multipart/form-data; boundary=b"},
    )
    assert empty_form.status_code == 200
    assert api.get(f"/model/{model}").json()["updated_date"] is not None
    assert api.get(f"/modelversion/{version}").json()["updated_date"] is not None
    assert api.get(f"/resource/{resource}").json()["updated_date"] is not None


# --- lifecycle (section 7) -------------------------------------------------------------------


def test_experiment_rules(api: Api) -> None:
    project = api.created("/project/", "project_id", json={"name": "p"})
    path = f"/experiment/project/{project}"
    assert _error(api.post(path, json={"name": "e", "status_id": 2}))[0] == 422
    assert _error(api.post(path, json={"name": "", "status_id": 1}))[0] == 422
    assert _error(api.post("/experiment/project/999", json={"name": "e", "status_id": 1}))[0] == 422

    experiment = api.created(path, "experiment_id", json={"name": "e", "status_id": 1})
    assert _error(api.patch(f"/experiment/{experiment}", json={"name": "x"}))[0] == 422
    assert _error(api.patch(f"/experiment/{experiment}", json={"status_id": 4}))[0] == 422

    stopped = {"status_id": 3, "end_date": "2026-01-02T03:04:05"}
    assert api.patch(f"/experiment/{experiment}", json=stopped).status_code == 200
    assert api.get(f"/experiment/{experiment}").json()["end_date"] == "2026-01-02T03:04:05"
    assert api.patch(f"/experiment/{experiment}", json={"status_id": 1}).status_code == 200
    assert api.get(f"/experiment/{experiment}").json()["end_date"] is None


def test_not_in_progress_blocks_new_iterations_and_uploads_only(api: Api) -> None:
    _, experiment, iteration = _tree(api)
    api.patch(f"/experiment/{experiment}", json={"status_id": 2})
    assert _error(api.post(f"/iteration/experiment/{experiment}"))[0] == 422
    upload = api.post(
        f"/resource/experiment/{experiment}", files={"data": ("d", b"1")}, data={"name": "d"}
    )
    assert _error(upload) == (422, "INVALID_PAYLOAD")
    assert api.post(f"/metric/iteration/{iteration}", json={"key": "a", "value": 1}).ok


def test_end_lock_is_keyed_on_end_date_and_asymmetric(
    api: Api, deardiary_server: DearDiaryTestServer
) -> None:
    _, experiment, iteration = _tree(api)
    parameter = api.created(
        f"/parameter/iteration/{iteration}", "parameter_id", json={"key": "a", "value": "b"}
    )
    metric = api.created(
        f"/metric/iteration/{iteration}", "metric_id", json={"key": "m", "value": 1}
    )
    end = {"end_date": "2026-06-23T13:14:06.5"}
    assert api.patch(f"/iteration/{iteration}", json=end).status_code == 200
    assert api.get(f"/iteration/{iteration}").json()["status_id"] == 1

    refused = [
        api.patch(f"/iteration/{iteration}", json={}),
        api.patch(f"/iteration/{iteration}", json={"status_id": 2}),
        api.post(f"/parameter/iteration/{iteration}", json={"key": "x", "value": "y"}),
        api.post(f"/metric/iteration/{iteration}", json={"key": "x", "value": 1}),
        api.post(f"/metric/iteration/{iteration}/batch", json={"metrics": []}),
        api.post(f"/tag/iteration/{iteration}", json={"value": "t"}),
        api.patch(f"/metric/{metric}", json={"value": 2}),
        api.patch(f"/parameter/{parameter}", json={"value": "z"}),
    ]
    assert [_error(response) for response in refused] == [(422, "INVALID_PAYLOAD")] * 8
    assert _error(api.delete(f"/parameter/{parameter}")) == (500, "SERVER_ERROR")
    assert _error(api.delete(f"/metric/{metric}")) == (500, "SERVER_ERROR")

    snapshot = {
        "julia_version": "1.11",
        "git_sha": "abc",
        "git_dirty": True,
        "entrypoint": "train.py",
        "project_toml": "",
        "manifest_toml": "",
    }
    assert api.post(f"/iteration/{iteration}/snapshot", json=snapshot).status_code == 200
    assert api.get(f"/iteration/{iteration}").json()["git_dirty"] is True
    child = api.post(f"/iteration/experiment/{experiment}?parent_iteration_id={iteration}")
    assert child.status_code == 201
    assert deardiary_server.query("SELECT COUNT(*) AS n FROM metric")[0]["n"] == 1


def test_parent_iteration_id_validation(api: Api) -> None:
    project, experiment, iteration = _tree(api)
    other = api.created(
        f"/experiment/project/{project}", "experiment_id", json={"name": "o", "status_id": 1}
    )
    for raw in ("abc", "", "1.0"):
        response = api.post(f"/iteration/experiment/{experiment}?parent_iteration_id={raw}")
        assert response.json() == {
            "code": "INVALID_PAYLOAD",
            "message": "parent_iteration_id must be an integer",
        }
    foreign = api.post(f"/iteration/experiment/{other}?parent_iteration_id={iteration}")
    assert _error(foreign) == (422, "INVALID_PAYLOAD")
    assert _error(api.post(f"/iteration/experiment/{experiment}?parent_iteration_id=999"))[0] == 422


def test_parameter_values_must_be_non_empty_strings(api: Api) -> None:
    _, _, iteration = _tree(api)
    path = f"/parameter/iteration/{iteration}"
    assert api.post(path, json={"key": "lr", "value": 0.1}).json() == GENERIC_400
    assert _error(api.post(path, json={"key": "lr", "value": ""})) == (422, "INVALID_PAYLOAD")
    assert _error(api.post(path, json={"key": "", "value": "x"})) == (422, "INVALID_PAYLOAD")
    api.post(path, json={"key": "lr", "value": "0.1"})
    api.post(path, json={"key": "lr", "value": "0.1"})
    assert api.get(path).json()["total"] == 2


def test_batch_collapses_reorders_and_stops_midway(
    api: Api, deardiary_server: DearDiaryTestServer
) -> None:
    _, _, iteration = _tree(api)
    keys = [f"key{i}" for i in range(12)]
    items = [{"key": k, "value": float(i)} for i, k in enumerate(keys)]
    items.append({"key": "key0", "value": 99.0})
    response = api.post(f"/metric/iteration/{iteration}/batch", json={"metrics": items})
    assert response.status_code == 201
    ids = response.json()["metric_ids"]
    assert len(ids) == 12
    landed = [api.get(f"/metric/{i}").json()["key"] for i in ids]
    assert sorted(landed) == sorted(keys) and landed != keys
    values = {
        row["key"]: row["value"]
        for row in api.get(f"/metric/iteration/{iteration}?limit=200").json()["data"]
    }
    assert values["key0"] == 99.0

    shared = api.post(
        f"/metric/iteration/{iteration}/batch",
        json={"metrics": [{"key": "a", "value": 1}, {"key": "b", "value": 2}], "step": 7},
    )
    assert {api.get(f"/metric/{i}").json()["step"] for i in shared.json()["metric_ids"]} == {7}
    assert api.post(f"/metric/iteration/{iteration}/batch", json={"metrics": []}).json() == {
        "metric_ids": []
    }

    before = deardiary_server.query("SELECT COUNT(*) AS n FROM metric")[0]["n"]
    broken = [{"key": k, "value": 1.0} for k in ("x1", "x2", "x3", "x4", "x5", "x6", "")]
    failed = api.post(f"/metric/iteration/{iteration}/batch", json={"metrics": broken})
    assert _error(failed) == (422, "INVALID_PAYLOAD")
    after = deardiary_server.query("SELECT COUNT(*) AS n FROM metric")[0]["n"]
    assert 0 < after - before < 6, "the empty key must stop the loop after some inserts"


def test_tags(api: Api) -> None:
    project, experiment, iteration = _tree(api)
    first = api.created(f"/tag/project/{project}", "association_id", json={"value": "best"})
    second = api.created(f"/tag/experiment/{experiment}", "association_id", json={"value": "best"})
    tags = api.get(f"/tag/project/{project}").json()
    assert tags == api.get(f"/tag/experiment/{experiment}").json(), "one global row per value"
    assert (first, second) == (1, 1), "association ids count per parent table, not tags"
    third = api.created(f"/tag/project/{project}", "association_id", json={"value": "other"})
    assert third == 2 and len(api.get(f"/tag/project/{project}").json()) == 2
    assert _error(api.post(f"/tag/project/{project}", json={"value": "best"})) == (409, "CONFLICT")
    assert api.post(f"/tag/iteration/{iteration}", json={"value": ""}).json() == GENERIC_500
    assert _error(api.post("/tag/experiment/999", json={"value": "x"}))[0] == 422
    assert _error(api.delete(f"/tag/{tags[0]['id']}")) == (500, "SERVER_ERROR")
    assert api.get(f"/tag/{tags[0]['id']}").json() == tags[0]


def test_deletes_stop_halfway_at_foreign_keys(
    api: Api, deardiary_server: DearDiaryTestServer
) -> None:
    _, experiment, iteration = _tree(api)
    api.post(f"/metric/iteration/{iteration}", json={"key": "m", "value": 1})
    api.post(f"/tag/iteration/{iteration}", json={"value": "keep"})
    assert _error(api.delete(f"/iteration/{iteration}")) == (500, "SERVER_ERROR")
    assert deardiary_server.query("SELECT COUNT(*) AS n FROM metric")[0]["n"] == 0
    assert api.get(f"/iteration/{iteration}").status_code == 200
    assert _error(api.delete(f"/experiment/{experiment}")) == (500, "SERVER_ERROR")

    other = api.created(f"/iteration/experiment/{experiment}", "iteration_id")
    assert api.delete(f"/iteration/{other}").json() == {"message": "OK"}


def test_model_registry(api: Api) -> None:
    project, _, iteration = _tree(api)
    model = api.created(
        f"/model/project/{project}", "model_id", json={"name": "m", "description": "d"}
    )
    assert api.get(f"/model/{model}").json()["updated_date"] is not None
    assert _error(api.post(f"/model/project/{project}", json={"name": "m"})) == (409, "CONFLICT")
    api.post(f"/model/project/{project}", json={"name": "taken"})
    assert _error(api.patch(f"/model/{model}", json={"name": "taken"})) == (500, "SERVER_ERROR")

    versions = [
        api.created(
            f"/modelversion/model/{model}", "modelversion_id", json={"iteration_id": iteration}
        )
        for _ in range(3)
    ]
    assert [api.get(f"/modelversion/{v}").json()["version"] for v in versions] == [1, 2, 3]
    api.delete(f"/modelversion/{versions[2]}")
    again = api.created(
        f"/modelversion/model/{model}", "modelversion_id", json={"iteration_id": iteration}
    )
    assert api.get(f"/modelversion/{again}").json()["version"] == 3
    assert _error(api.patch(f"/model/{model}", json={"name": "m"})) == (422, "INVALID_PAYLOAD")

    api.patch(f"/modelversion/{versions[0]}", json={"stage_id": 3})
    api.patch(f"/modelversion/{versions[1]}", json={"stage_id": 3})
    page = api.get(f"/modelversion/model/{model}").json()["data"]
    assert [v["stage_id"] for v in page] == [4, 3, 1]
    assert _error(api.patch(f"/modelversion/{again}", json={"stage_id": 5}))[0] == 422

    other_project = api.created("/project/", "project_id", json={"name": "q"})
    other_model = api.created(f"/model/project/{other_project}", "model_id", json={"name": "m"})
    foreign = api.post(f"/modelversion/model/{other_model}", json={"iteration_id": iteration})
    assert _error(foreign) == (422, "INVALID_PAYLOAD")
    as_text = api.post(f"/modelversion/model/{model}", json={"iteration_id": str(iteration)})
    assert as_text.json() == GENERIC_400


def test_users_and_burnt_ids(api: Api) -> None:
    new_user = {"first_name": "A", "last_name": "", "username": "ann", "password": "pw"}
    first = api.created("/user/", "user_id", json=new_user)
    assert _error(api.post("/user/", json=new_user)) == (409, "CONFLICT")
    second = api.created("/user/", "user_id", json={**new_user, "username": "bob"})
    assert second == first + 2, "a refused insert burns its id"

    default = api.get("/auth/me").json()
    assert default["username"] == "default" and default["is_admin"] is True
    assert _error(api.patch(f"/user/{default['id']}", json={"is_admin": False}))[0] == 422
    assert _error(api.delete(f"/user/{default['id']}")) == (500, "SERVER_ERROR")
    assert api.get(f"/user/{first}").json()["is_admin"] is False
    assert "password" not in json.dumps(api.get("/user/").json())


def test_each_start_burns_a_user_id(deardiary_server_factory: Factory, tmp_path: Path) -> None:
    first = deardiary_server_factory(data_dir=tmp_path)
    before = first.create_user("one", "pw")
    first.stop()
    second = deardiary_server_factory(data_dir=tmp_path)
    assert second.create_user("two", "pw") == int(before) + 2
    assert Api(second.url).get("/user/").json()[1]["username"] == "one"


def test_a_stored_non_finite_value_breaks_every_read_of_it(
    api: Api, deardiary_server: DearDiaryTestServer
) -> None:
    _, _, iteration = _tree(api)
    metric = api.created(
        f"/metric/iteration/{iteration}", "metric_id", json={"key": "a", "value": 1}
    )
    deardiary_server.query("UPDATE metric SET value = 9e999 WHERE id = ?", (metric,))
    assert api.get(f"/metric/{metric}").json() == GENERIC_500
    assert api.get(f"/metric/iteration/{iteration}").json() == GENERIC_500
    assert api.get(f"/metric/iteration/{iteration}?limit=0").json()["total"] == 1


# --- resources (sections 5.8, 5.9) -------------------------------------------------------------


def test_resource_round_trip_and_update(api: Api, deardiary_server: DearDiaryTestServer) -> None:
    _, experiment, _ = _tree(api)
    blob = os.urandom(300_000)
    resource = api.created(
        f"/resource/experiment/{experiment}",
        "resource_id",
        files={"data": ("weights.bin", blob, "application/octet-stream")},
        data={"name": "weights"},
    )
    meta = api.get(f"/resource/{resource}").json()
    assert meta["backend"] == "filesystem" and meta["uri"].startswith("file:///")
    assert (meta["size_bytes"], meta["content_hash"]) == (
        len(blob),
        hashlib.sha256(blob).hexdigest(),
    )
    assert "data" not in meta
    download = api.get(f"/resource/{resource}/data")
    assert download.headers["Content-Type"] == "application/octet-stream"
    assert download.headers["Content-Length"] == str(len(blob)) and download.content == blob

    assert api.patch(f"/resource/{resource}", files={"description": (None, "notes")}).ok
    assert api.get(f"/resource/{resource}").json()["name"] == "weights"
    old_path = Path(meta["uri"].removeprefix("file://"))
    assert api.patch(f"/resource/{resource}", files={"data": ("x", b"new bytes")}).ok
    assert api.get(f"/resource/{resource}/data").content == b"new bytes"
    assert not old_path.exists()
    assert _error(api.get("/resource/999/data")) == (404, "NOT_FOUND")


def test_resource_multipart_rules(api: Api) -> None:
    _, experiment, _ = _tree(api)
    path = f"/resource/experiment/{experiment}"
    missing = api.post(path, data={"name": "only name"}, files={"other": ("x", b"1")})
    assert missing.json() == {
        "code": "INVALID_PAYLOAD",
        "message": "Multipart fields 'name' and 'data' are required",
    }
    assert api.post(path, json={"name": "n"}).json() == GENERIC_500
    quoted = api.post(
        path,
        data=b'--b\r\nContent-Disposition: form-data; name="name"\r\n\r\nn\r\n--b--\r\n',
        headers={"Content-Type": 'multipart/form-data; boundary="b"'},
    )
    assert quoted.json() == GENERIC_500
    assert _error(api.post(path, data={"name": ""}, files={"data": ("x", b"1")})) == (
        422,
        "INVALID_PAYLOAD",
    )
    assert _error(api.patch("/resource/999", files={"name": (None, "x")}))[0] == 422


def test_chunked_upload_is_read(api: Api) -> None:
    _, experiment, _ = _tree(api)
    boundary = "chunkyboundary"
    payload = os.urandom(1_000_000)

    def body() -> Iterator[bytes]:
        disposition = "Content-Disposition: form-data; name="
        yield f'--{boundary}\r\n{disposition}"name"\r\n\r\nc\r\n'.encode()
        yield f'--{boundary}\r\n{disposition}"data"; filename="c"\r\n'.encode()
        yield b"Content-Type: application/octet-stream\r\n\r\n"
        for start in range(0, len(payload), 65_536):
            yield payload[start : start + 65_536]
        yield f"\r\n--{boundary}--\r\n".encode()

    response = api.post(
        f"/resource/experiment/{experiment}",
        data=body(),
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    assert response.status_code == 201
    assert api.get(f"/resource/{response.json()['resource_id']}/data").content == payload
    assert api.get("/health").status_code == 200, "the connection stays usable"


def test_uploads_and_downloads_stream_through_the_server(tmp_path: Path) -> None:
    size = 50 * 2**20
    block = os.urandom(2**20)
    boundary = "streamingboundary"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="name"\r\n\r\nbig\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="data"; filename="big"\r\n\r\n'
    ).encode()
    tail = f"\r\n--{boundary}--\r\n".encode()
    body_file = tmp_path / "body.bin"
    digest = hashlib.sha256()
    with body_file.open("wb") as out:
        out.write(head)
        for _ in range(size // len(block)):
            out.write(block)
            digest.update(block)
        out.write(tail)

    def chunked() -> Iterator[bytes]:
        with body_file.open("rb") as stream:
            while piece := stream.read(2**20):
                yield piece

    url, process = spawn()
    try:
        api = Api(url)
        _, experiment, _ = _tree(api)
        headers = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
        for label, data in (("content-length", None), ("chunked", chunked())):
            with PeakRSS(process.pid) as memory:
                if data is None:
                    with body_file.open("rb") as stream:
                        response = api.post(
                            f"/resource/experiment/{experiment}", data=stream, headers=headers
                        )
                else:
                    response = api.post(
                        f"/resource/experiment/{experiment}", data=data, headers=headers
                    )
            assert response.status_code == 201, response.text
            meta = api.get(f"/resource/{response.json()['resource_id']}").json()
            assert (meta["size_bytes"], meta["content_hash"]) == (size, digest.hexdigest())
            print(f"{label} upload: server grew {memory.growth_mb:.1f} MB")
            assert memory.growth_mb < 20, f"{label} upload grew the server by {memory.growth_mb}"

        with PeakRSS(process.pid) as memory:
            received = hashlib.sha256()
            with api.get(f"/resource/{response.json()['resource_id']}/data", stream=True) as down:
                for piece in down.iter_content(2**20):
                    received.update(piece)
        assert received.hexdigest() == digest.hexdigest()
        print(f"download: server grew {memory.growth_mb:.1f} MB")
        assert memory.growth_mb < 20, f"download grew the server by {memory.growth_mb} MB"
    finally:
        terminate(process)


# --- auth (section 2) ------------------------------------------------------------------------


def test_auth_off_acts_as_default_and_ignores_the_header(
    deardiary_server: DearDiaryTestServer,
) -> None:
    api = Api(deardiary_server.url)
    api.session.headers["Authorization"] = "garbage-without-space"
    assert api.get("/auth/me").json()["username"] == "default"
    refreshed = api.post("/auth/refresh").json()
    assert refreshed["token_type"] == "Bearer" and refreshed["user"]["username"] == "default"


def test_auth_failures_in_order(deardiary_server_factory: Factory) -> None:
    server = deardiary_server_factory(auth=True)
    url = server.url
    secret = server.api.jwt_secret
    user_id = server.create_user("gone", "pw")

    def me(header: dict[str, str]) -> requests.Response:
        return requests.get(url + "/auth/me", headers=header, timeout=10)

    good = server.sign_in_token("gone")
    assert _error(me({})) == (401, "TOKEN_MISSING")
    assert _error(me({"authorization": f"Bearer {good}"})) == (401, "TOKEN_MISSING")
    assert me({"Authorization": good}).json() == GENERIC_500
    assert _error(me({"Authorization": f"Bearer  {good}"})) == (401, "TOKEN_INVALID")
    assert _error(me({"Authorization": "Bearer a.b.c"})) == (401, "TOKEN_INVALID")
    forged = issue_token("gone", user_id, "another-secret", 60)
    assert _error(me({"Authorization": f"Bearer {forged}"})) == (401, "TOKEN_INVALID")
    uuid_claim = issue_token("gone", "not-an-int", secret, 60)
    assert _error(me({"Authorization": f"Bearer {uuid_claim}"})) == (401, "TOKEN_PAYLOAD_INVALID")
    expired = server.sign_in_token("gone", lifetime=-10)
    assert _error(me({"Authorization": f"Bearer {expired}"})) == (401, "TOKEN_EXPIRED")
    assert me({"Authorization": f"Token {good}"}).json()["username"] == "gone"

    admin = server.sign_in_token("default")
    requests.delete(f"{url}/user/{user_id}", headers={"Authorization": f"Bearer {admin}"})
    assert _error(me({"Authorization": f"Bearer {good}"})) == (401, "USER_NOT_FOUND")


def test_sign_in_refresh_and_open_routes(deardiary_server_factory: Factory) -> None:
    server = deardiary_server_factory(auth=True)
    api = Api(server.url)
    assert _error(api.post("/auth", json={"username": "nobody", "password": "x"})) == (
        404,
        "USER_NOT_FOUND",
    )
    assert _error(api.post("/auth", json={"username": "default", "password": "x"})) == (
        401,
        "INVALID_CREDENTIALS",
    )
    assert api.post("/auth", json={"username": "default"}).json() == GENERIC_400
    envelope = api.post("/auth/", json={"username": "default", "password": "default"}).json()
    assert set(envelope) == {"access_token", "token_type", "expires_at", "user"}
    skewed_now = datetime.now().replace(tzinfo=timezone.utc).timestamp()
    assert envelope["expires_at"] - skewed_now == pytest.approx(86400, abs=60)

    assert api.get("/health").status_code == 200
    assert api.call("OPTIONS", "/project").status_code == 200
    assert api.get("/unknown").status_code == 404
    assert _error(api.post("/auth?x=1", json={}))[1] == "TOKEN_MISSING"
    assert _error(api.call("PUT", "/project"))[1] == "TOKEN_MISSING"

    signed = Api(server.url, envelope["access_token"])
    assert signed.call("PUT", "/project").status_code == 405
    refreshed = signed.post("/auth/refresh").json()
    assert refreshed["user"]["username"] == "default"
    password_hash = server.query('SELECT password_hash FROM "user"')[0]["password_hash"]
    assert "default" not in password_hash


def test_token_lifetime_expiry(deardiary_server_factory: Factory) -> None:
    server = deardiary_server_factory(auth=True, token_lifetime=1)
    api = Api(server.url)
    token = api.post("/auth", json={"username": "default", "password": "default"}).json()
    signed = Api(server.url, token["access_token"])
    assert signed.get("/auth/me").status_code == 200
    time.sleep(2.1)
    assert _error(signed.get("/auth/me")) == (401, "TOKEN_EXPIRED")
    assert _error(signed.post("/auth/refresh")) == (401, "TOKEN_EXPIRED")
    assert api.post("/auth", json={"username": "default", "password": "default"}).ok


def test_guards_for_non_admins(deardiary_server_factory: Factory) -> None:
    server = deardiary_server_factory(auth=True)
    admin = Api(server.url, server.sign_in_token("default"))
    project, experiment, iteration = _tree(admin)
    hidden = admin.created("/project/", "project_id", json={"name": "hidden"})
    user_id = server.create_user("carol", "pw")
    carol = Api(server.url, server.sign_in_token("carol"))

    assert _error(carol.get(f"/project/{project}")) == (403, "PROJECT_PERMISSION_REQUIRED")
    assert _error(carol.get("/user/")) == (403, "ADMIN_REQUIRED")
    assert _error(carol.get("/tag/abc")) == (403, "ADMIN_REQUIRED")
    assert _error(carol.get(f"/user/{int(user_id) + 100}")) == (403, "SAME_USER_REQUIRED")
    assert _error(carol.get("/user/abc")) == (404, "NOT_FOUND")
    assert carol.get(f"/user/{user_id}").json()["username"] == "carol"

    server.grant(user_id, project, create=True, read=True, update=False, delete=False)
    assert carol.get(f"/experiment/{experiment}").status_code == 200
    assert [p["id"] for p in carol.get("/project/").json()] == [project]
    assert carol.post(f"/metric/iteration/{iteration}", json={"key": "k", "value": 1}).ok
    assert _error(carol.patch(f"/iteration/{iteration}", json={"notes": "n"}))[0] == 403
    assert _error(carol.get("/experiment/9999")) == (404, "NOT_FOUND")
    assert _error(carol.get("/experiment/abc")) == (404, "NOT_FOUND")
    assert _error(carol.get(f"/experiment/project/{hidden}"))[0] == 403
    assert _error(carol.get("/experiment/project/9999"))[0] == 403
    assert _error(carol.patch(f"/user/{user_id}", json={"is_admin": False})) == (
        403,
        "ADMIN_REQUIRED",
    )
    assert carol.patch(f"/user/{user_id}", json={"first_name": "C"}).ok
    assert carol.delete(f"/user/{user_id}").json() == {"message": "OK"}
    assert _error(carol.get("/auth/me")) == (401, "USER_NOT_FOUND")


# --- UUID ids (section 9) --------------------------------------------------------------------


def test_uuid_build(deardiary_server_factory: Factory) -> None:
    server = deardiary_server_factory(id_kind="uuid")
    api = Api(server.url)
    project, experiment, iteration = _tree(api)
    model = api.created(f"/model/project/{project}", "model_id", json={"name": "m"})
    metric_ids = api.post(
        f"/metric/iteration/{iteration}/batch", json={"metrics": [{"key": "a", "value": 1}]}
    ).json()["metric_ids"]
    assert api.get("/health").json()["package_version"] == "0.9.1"
    for value in (project, experiment, iteration, model, *metric_ids):
        assert isinstance(value, str) and UUID_RE.match(value)
    row = api.get(f"/iteration/{iteration}").json()
    assert row["experiment_id"] == experiment and row["parent_iteration_id"] is None
    assert isinstance(api.get("/auth/me").json()["id"], str)

    assert _error(api.get("/experiment/not-a-uuid")) == (404, "NOT_FOUND")
    unknown_parent = api.post(f"/iteration/experiment/{experiment}?parent_iteration_id=nope")
    assert unknown_parent.json() == {
        "code": "INVALID_PAYLOAD",
        "message": "Failed to create iteration",
    }
    assert api.post(f"/modelversion/model/{model}", json={"iteration_id": 1}).json() == GENERIC_400
    assert api.post(f"/modelversion/model/{model}", json={"iteration_id": iteration}).ok


def test_uuid_tokens_need_string_ids(deardiary_server_factory: Factory) -> None:
    server = deardiary_server_factory(id_kind="uuid", auth=True)
    good = server.sign_in_token("default")
    me = requests.get(server.url + "/auth/me", headers={"Authorization": f"Bearer {good}"})
    assert me.json()["username"] == "default"
    integer = issue_token("default", 1, server.api.jwt_secret, 60)
    bad = requests.get(server.url + "/auth/me", headers={"Authorization": f"Bearer {integer}"})
    assert _error(bad) == (401, "TOKEN_PAYLOAD_INVALID")


# --- faults, keep-alive and concurrency ---------------------------------------------------------


def test_keep_alive_reuses_one_connection(api: Api, deardiary_server: DearDiaryTestServer) -> None:
    _, _, iteration = _tree(api)
    for i in range(20):
        api.post(f"/metric/iteration/{iteration}", json={"key": "k", "value": i})
    assert deardiary_server.stats["connections"] == 1


def test_drop_before_applies_nothing_and_drop_after_applies(
    api: Api, deardiary_server: DearDiaryTestServer
) -> None:
    _, _, iteration = _tree(api)
    path = f"/metric/iteration/{iteration}"
    deardiary_server.add_fault(FaultRule(kind="drop_before", count=1, path=r"^/metric/"))
    with pytest.raises(requests.ConnectionError):
        api.post(path, json={"key": "k", "value": 1})
    assert deardiary_server.query("SELECT COUNT(*) AS n FROM metric")[0]["n"] == 0

    deardiary_server.add_fault(FaultRule(kind="drop_after", count=1, path=r"^/metric/"))
    with pytest.raises(requests.ConnectionError):
        api.post(path, json={"key": "k", "value": 2})
    assert deardiary_server.query("SELECT value FROM metric") == [{"value": 2.0}]

    assert api.post(path, json={"key": "k", "value": 3}).status_code == 201
    stats = deardiary_server.stats
    assert stats["faults"]["drop_before"] == 1 and stats["faults"]["drop_after"] == 1
    assert stats["writes_applied"] == 5  # project, experiment, iteration, two metrics


def test_status_faults_follow_the_seed_and_filters(deardiary_server_factory: Factory) -> None:
    def run(seed: int) -> list[int]:
        server = deardiary_server_factory(seed=seed)
        server.add_fault(FaultRule(kind="status", status=503, probability=0.3, methods=("GET",)))
        api = Api(server.url)
        codes = [api.get("/health").status_code for _ in range(200)]
        assert api.post("/project", json={"name": "p"}).status_code == 201
        assert server.stats["faults"]["status"] == codes.count(503)
        return codes

    first, again, other = run(7), run(7), run(8)
    assert first == again and first != other
    assert 30 <= first.count(503) <= 90

    server = deardiary_server_factory()
    server.add_fault(
        FaultRule(
            kind="status",
            status=429,
            count=2,
            path=r"^/project",
            headers={"Retry-After": "1"},
        )
    )
    api = Api(server.url)
    limited = api.get("/project")
    assert limited.status_code == 429 and limited.headers["Retry-After"] == "1"
    assert limited.json() == {"message": "429: Too Many Requests"}
    assert api.get("/health").status_code == 200
    assert [api.get("/project").status_code for _ in range(2)] == [429, 200]

    server.add_fault(FaultRule(kind="status", status=500, body={"code": "X", "message": "y"}))
    assert api.get("/health").json() == {"code": "X", "message": "y"}
    assert requests.get(server.url + "/_test/stats", timeout=5).status_code == 200
    server.clear_faults()
    assert api.get("/health").status_code == 200


def test_latency_fault_delays_the_answer(api: Api, deardiary_server: DearDiaryTestServer) -> None:
    deardiary_server.add_fault(FaultRule(kind="latency", seconds=0.3, count=1))
    started = time.monotonic()
    assert api.get("/health").status_code == 200
    assert time.monotonic() - started >= 0.3
    deardiary_server.add_fault(FaultRule(kind="latency", seconds=0.5, count=1))
    with pytest.raises(requests.ReadTimeout):
        api.get("/health", timeout=0.1)


def _refused(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


def test_outage_refuses_connections_then_recovers_on_the_same_port(
    api: Api, deardiary_server: DearDiaryTestServer
) -> None:
    port = deardiary_server.port
    api.post("/project", json={"name": "before"})
    deardiary_server.outage(0.8)
    assert _refused(port)
    with pytest.raises(requests.ConnectionError):
        api.get("/project")
    deadline = time.monotonic() + 5
    while _refused(port) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert deardiary_server.port == port
    assert [p["name"] for p in api.get("/project").json()] == ["before"]

    deardiary_server.begin_outage()
    assert _refused(port) and not deardiary_server.listening
    deardiary_server.end_outage()
    assert api.get("/health").status_code == 200


def test_concurrent_writers_lose_nothing(api: Api, deardiary_server: DearDiaryTestServer) -> None:
    _, _, iteration = _tree(api)

    def write(worker: int) -> None:
        session = Api(deardiary_server.url)
        for i in range(25):
            session.post(f"/metric/iteration/{iteration}", json={"key": f"w{worker}", "value": i})

    threads = [threading.Thread(target=write, args=(w,)) for w in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    rows = deardiary_server.query(
        "SELECT key, COUNT(*) AS n, MAX(step) AS top FROM metric GROUP BY key ORDER BY key"
    )
    assert rows == [{"key": f"w{w}", "n": 25, "top": 24} for w in range(4)]


def test_subprocess_mode_and_control_routes(tmp_path: Path) -> None:
    with server_in_subprocess(auth=True, data_dir=tmp_path / "data", token_lifetime=60) as url:
        remote = RemoteServer(url)
        user_id = remote.create_user("dave", "pw", is_admin=True)
        token = remote.sign_in_token("dave")
        signed = Api(url, token)
        assert signed.get("/auth/me").json()["id"] == user_id
        assert signed.post("/auth", json={"username": "dave", "password": "pw"}).ok

        remote.add_fault(FaultRule(kind="status", status=503, count=1, path="^/project"))
        assert signed.get("/project").status_code == 503
        assert remote.stats["faults"]["status"] == 1
        remote.clear_faults()
        assert signed.get("/project").status_code == 200

        port = int(url.rsplit(":", 1)[1])
        remote.outage(0.5)
        time.sleep(0.1)
        assert _refused(port)
        deadline = time.monotonic() + 5
        while _refused(port) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert signed.get("/health").status_code == 200
    assert (tmp_path / "data" / "deardiary.sqlite").exists()

    url, process = spawn(data_dir=tmp_path / "data", id_kind="int", auth=True)
    try:
        signed_in = Api(url).post("/auth", json={"username": "dave", "password": "pw"})
        assert signed_in.status_code == 200, "a restart on the same data_dir keeps the users"
    finally:
        assert terminate(process) == 0


# --- details cross-checked against the v0.9.1 source ---------------------------------------------


def test_error_messages_are_the_routes_fixed_texts(deardiary_server_factory: Factory) -> None:
    server = deardiary_server_factory(auth=True)
    admin = Api(server.url, server.sign_in_token("default"))
    project, experiment, iteration = _tree(admin)
    model = admin.created(f"/model/project/{project}", "model_id", json={"name": "m"})
    admin.patch(f"/iteration/{iteration}", json={"end_date": "2026-01-01T00:00:00"})
    user_id = server.create_user("erin", "pw")
    erin = Api(server.url, server.sign_in_token("erin"))

    answers = {
        admin.get("/user/999"): ("USER_NOT_FOUND", "User not found"),
        admin.get("/project/999"): ("NOT_FOUND", "Project not found"),
        admin.get("/experiment/999"): ("NOT_FOUND", "Experiment not found"),
        admin.get("/iteration/999"): ("NOT_FOUND", "Iteration not found"),
        admin.get("/metric/999"): ("NOT_FOUND", "Metric not found"),
        admin.get("/resource/999/data"): ("NOT_FOUND", "Resource not found"),
        admin.get("/tag/999"): ("NOT_FOUND", "Tag not found"),
        admin.get("/modelversion/999"): ("NOT_FOUND", "Model version not found"),
        admin.get(f"/userpermission/user/{user_id}/project/{project}"): (
            "NOT_FOUND",
            "User permission not found",
        ),
        admin.post(f"/experiment/project/{project}", json={"name": "e", "status_id": 2}): (
            "INVALID_PAYLOAD",
            "Failed to create experiment",
        ),
        admin.patch(f"/experiment/{experiment}", json={"name": "x"}): (
            "INVALID_PAYLOAD",
            "Failed to update experiment",
        ),
        admin.patch(f"/iteration/{iteration}", json={"notes": "n"}): (
            "INVALID_PAYLOAD",
            "Failed to update iteration",
        ),
        admin.post(f"/metric/iteration/{iteration}/batch", json={"metrics": []}): (
            "INVALID_PAYLOAD",
            "Failed to log metrics",
        ),
        admin.post(f"/tag/iteration/{iteration}", json={"value": "t"}): (
            "INVALID_PAYLOAD",
            "Failed to attach tag to iteration",
        ),
        admin.post(f"/model/project/{project}", json={"name": "m"}): (
            "CONFLICT",
            "Failed to create model",
        ),
        admin.post("/iteration/999/snapshot", json=_SNAPSHOT_BODY): (
            "NOT_FOUND",
            "Iteration not found",
        ),
        admin.post(f"/modelversion/model/{model}", json={"iteration_id": 999}): (
            "INVALID_PAYLOAD",
            "Failed to create model version",
        ),
        erin.get(f"/user/{int(user_id) + 50}"): ("SAME_USER_REQUIRED", "Same user required"),
        erin.get("/user/abc"): ("NOT_FOUND", "Not Found"),
        erin.get("/user/"): ("ADMIN_REQUIRED", "Admin privileges required"),
        erin.get(f"/project/{project}"): (
            "PROJECT_PERMISSION_REQUIRED",
            "Project permission required",
        ),
        erin.patch(f"/user/{user_id}", json={"is_admin": True}): (
            "ADMIN_REQUIRED",
            "Admin privileges required to change admin status",
        ),
    }
    for response, (code, message) in answers.items():
        assert response.json() == {"code": code, "message": message}, response.url


_SNAPSHOT_BODY = {
    "julia_version": "1.11",
    "git_sha": "abc",
    "git_dirty": False,
    "entrypoint": "train.py",
    "project_toml": "",
    "manifest_toml": "",
}


def test_status_1_reopens_only_an_experiment_that_has_an_end_date(api: Api) -> None:
    _, experiment, _ = _tree(api)
    path = f"/experiment/{experiment}"
    assert api.patch(path, json={"status_id": 1, "end_date": "2026-01-02T03:04:05"}).ok
    assert api.get(path).json()["end_date"] == "2026-01-02T03:04:05", "no re-opening: stored"
    assert api.patch(path, json={"status_id": 1, "end_date": "2027-01-01T00:00:00"}).ok
    assert api.get(path).json()["end_date"] is None, "re-opening clears, ignoring the new date"


def test_permission_create_looks_up_both_ends_before_burning_an_id(api: Api) -> None:
    project = api.created("/project/", "project_id", json={"name": "p"})
    flags = dict.fromkeys(
        ("create_permission", "read_permission", "update_permission", "delete_permission"), True
    )
    users = [
        api.created(
            "/user/",
            "user_id",
            json={"first_name": "", "last_name": "", "username": name, "password": "pw"},
        )
        for name in ("u1", "u2")
    ]
    first = api.created(
        f"/userpermission/user/{users[0]}/project/{project}", "userpermission_id", json=flags
    )
    for user, target in ((999, project), (users[1], 999)):
        refused = api.post(f"/userpermission/user/{user}/project/{target}", json=flags)
        assert refused.json() == {
            "code": "INVALID_PAYLOAD",
            "message": "Failed to create user permission",
        }
    second = api.created(
        f"/userpermission/user/{users[1]}/project/{project}", "userpermission_id", json=flags
    )
    assert second == first + 1


def test_attaching_a_known_tag_value_burns_no_tag_id(api: Api) -> None:
    project, experiment, iteration = _tree(api)
    api.post(f"/tag/project/{project}", json={"value": "a"})
    api.post(f"/tag/experiment/{experiment}", json={"value": "a"})
    api.post(f"/tag/iteration/{iteration}", json={"value": "a"})
    api.post(f"/tag/iteration/{iteration}", json={"value": "b"})
    assert [tag["id"] for tag in api.get(f"/tag/iteration/{iteration}").json()] == [1, 2]


def test_promotion_demotes_with_a_stamp_and_only_when_written(
    api: Api, deardiary_server: DearDiaryTestServer
) -> None:
    project, _, iteration = _tree(api)
    model = api.created(f"/model/project/{project}", "model_id", json={"name": "m"})
    versions = [
        api.created(
            f"/modelversion/model/{model}", "modelversion_id", json={"iteration_id": iteration}
        )
        for _ in range(2)
    ]
    # Two PRODUCTION versions, as a race between two promotions can leave them.
    deardiary_server.query("UPDATE model_version SET stage_id = 3")

    unchanged = {"stage_id": 3, "description": ""}
    assert api.patch(f"/modelversion/{versions[1]}", json=unchanged).ok
    assert api.get(f"/modelversion/{versions[0]}").json()["stage_id"] == 3, "nothing written"

    assert api.patch(f"/modelversion/{versions[1]}", json={"stage_id": 3}).ok
    demoted = api.get(f"/modelversion/{versions[0]}").json()
    assert (demoted["stage_id"], demoted["updated_date"] is not None) == (4, True)


def _multipart(*parts: bytes, end: bytes = b"--b--\r\n") -> dict[str, Any]:
    """Keyword arguments of a request with a hand-made multipart body (boundary ``b``)."""
    body = b"".join(b"--b\r\n" + part + b"\r\n" for part in parts) + end
    return {"data": body, "headers": {"Content-Type": "multipart/form-data; boundary=b"}}


_NAME_PART = b'Content-Disposition: form-data; name="name"\r\n\r\nn'
_DATA_PART = b'Content-Disposition: form-data; name="data"; filename="f"\r\n\r\nbytes'


def test_multipart_parts_follow_the_servers_parser(api: Api) -> None:
    _, experiment, _ = _tree(api)
    path = f"/resource/experiment/{experiment}"

    second_name = b'content-disposition:form-data;name="name"\r\n\r\nsecond'
    first = api.post(path, **_multipart(_NAME_PART, second_name, _DATA_PART))
    assert api.get(f"/resource/{first.json()['resource_id']}").json()["name"] == "n"
    blank_before_break = api.post(path, **_multipart(_NAME_PART, _DATA_PART, end=b"--b-- \r\n"))
    assert blank_before_break.status_code == 201

    broken = [
        _multipart(_NAME_PART, _DATA_PART, end=b"--b--"),
        _multipart(_NAME_PART, _DATA_PART, b"\r\nno headers"),
        _multipart(_NAME_PART, _DATA_PART, b"Content-Type: text/plain\r\n\r\nx"),
        _multipart(_NAME_PART, _DATA_PART, b"Content-Disposition: form-data\r\n\r\nx"),
        _multipart(_NAME_PART, _DATA_PART, b"Content-Disposition: form-data; name=x\r\n\r\nx"),
        _multipart(_NAME_PART, _DATA_PART, b'Content-Disposition: form-data; Name="x"\r\n\r\nx'),
        _multipart(_NAME_PART, _DATA_PART, b'CONTENT-DISPOSITION: form-data; name="x"\r\n\r\nx'),
    ]
    for kwargs in broken:
        assert api.post(path, **kwargs).json() == GENERIC_500, kwargs["data"]
    assert api.get("/health").ok, "the connection survives a refused body"


def test_resource_update_compares_bytes_like_a_filesystem_store(api: Api) -> None:
    _, experiment, _ = _tree(api)
    resource = api.created(
        f"/resource/experiment/{experiment}",
        "resource_id",
        files={"data": ("w", b"x")},
        data={"name": "w"},
    )
    path = f"/resource/{resource}"

    def patch(data: bytes) -> dict[str, Any]:
        parts = {"name": (None, "w"), "description": (None, ""), "data": ("w", data)}
        assert api.patch(path, files=parts).json() == {"message": "UPDATED"}
        row: dict[str, Any] = api.get(path).json()
        return row

    created = api.get(path).json()
    same_bytes = patch(b"x")
    assert same_bytes["uri"] != created["uri"], "equal bytes are still written again"
    assert same_bytes["updated_date"] is not None

    assert patch(b"") == same_bytes, "equal parts and empty bytes compare equal: no write"
    assert api.get(f"{path}/data").content == b"x"
    assert api.patch(path, files={"data": ("w", b"")}).ok
    assert api.get(path).json()["size_bytes"] == 0


def test_token_claims_are_checked_like_the_server(deardiary_server_factory: Factory) -> None:
    server = deardiary_server_factory(auth=True)
    secret = server.api.jwt_secret
    user_id = server.create_user("finn", "pw")
    later = int(time.time()) + 3600 * 48

    def me(claims: dict[str, Any]) -> requests.Response:
        token = sign_claims(claims, secret)
        return requests.get(
            server.url + "/auth/me", headers={"Authorization": f"Bearer {token}"}, timeout=10
        )

    assert me({"sub": None, "id": user_id, "exp": later}).json()["username"] == "finn"
    assert me({"sub": "finn", "id": user_id, "exp": 1.0}).json()["username"] == "finn"
    assert _error(me({"sub": "finn", "id": user_id, "exp": None})) == (401, "TOKEN_EXPIRED")
    assert _error(me({"sub": "finn", "id": user_id, "exp": True})) == (401, "TOKEN_EXPIRED")
    assert _error(me({"sub": "finn", "id": user_id})) == (401, "TOKEN_PAYLOAD_INVALID")
    assert _error(me({"sub": "finn", "id": True, "exp": later})) == (401, "TOKEN_PAYLOAD_INVALID")

    uuid_server = deardiary_server_factory(auth=True, id_kind="uuid")
    empty_id = sign_claims({"sub": "x", "id": "", "exp": later}, uuid_server.api.jwt_secret)
    answer = requests.get(
        uuid_server.url + "/auth/me", headers={"Authorization": f"Bearer {empty_id}"}, timeout=10
    )
    assert _error(answer) == (401, "TOKEN_PAYLOAD_INVALID")


def test_a_repeated_authorization_header_counts_once_the_last(
    deardiary_server_factory: Factory,
) -> None:
    server = deardiary_server_factory(auth=True)
    good = server.sign_in_token("default")

    def me(*values: str) -> tuple[int, Any]:
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        try:
            connection.putrequest("GET", "/auth/me")
            for value in values:
                connection.putheader("Authorization", value)
            connection.endheaders()
            response = connection.getresponse()
            return response.status, json.loads(response.read())
        finally:
            connection.close()

    assert me("Bearer junk", f"Bearer {good}")[1]["username"] == "default"
    assert me(f"Bearer {good}", "Bearer junk") == (
        401,
        {"code": "TOKEN_INVALID", "message": "Invalid token"},
    )


def _raw_get(url: str, target: str, headers: Any = None) -> tuple[int, Any]:
    """GET a request target exactly as written (``requests`` would decode ``%3x`` digits)."""
    connection = http.client.HTTPConnection(url.removeprefix("http://"), timeout=10)
    try:
        connection.request("GET", target, headers=dict(headers or {}))
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def test_numbers_in_queries_and_paths_read_like_julia_integers(
    api: Api, deardiary_server_factory: Factory
) -> None:
    _, experiment, iteration = _tree(api)
    for i in range(20):
        api.post(f"/parameter/iteration/{iteration}", json={"key": f"k{i}", "value": "v"})
    page = api.get(f"/parameter/iteration/{iteration}?limit=0x10&offset=%20%2B3").json()
    assert (page["limit"], page["offset"], len(page["data"])) == (16, 3, 16)

    assert api.get(f"/experiment/0x{int(experiment):x}").json()["id"] == experiment
    escaped = "".join(f"%3{digit}" for digit in str(experiment))
    assert _raw_get(api.url, f"/experiment/{escaped}")[1]["id"] == experiment, "decoded"
    child = api.post(f"/iteration/experiment/{experiment}?parent_iteration_id=+{iteration}")
    assert api.get(f"/iteration/{child.json()['iteration_id']}").json()["parent_iteration_id"] == (
        iteration
    )

    server = deardiary_server_factory(auth=True)
    admin = Api(server.url, server.sign_in_token("default"))
    _, guarded, _ = _tree(admin)
    user_id = server.create_user("gil", "pw")
    gil = Api(server.url, server.sign_in_token("gil"))
    escaped = "".join(f"%3{digit}" for digit in str(guarded))
    assert _raw_get(server.url, f"/experiment/{escaped}", gil.session.headers)[1] == {
        "code": "NOT_FOUND",
        "message": "Not Found",
    }, "guards read the segment undecoded"
    assert gil.get(f"/user/0x{int(user_id):x}").json()["username"] == "gil"
