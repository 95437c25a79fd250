"""Fixtures that give the contract suite one client per backend.

Every test in ``tests/contract`` runs against each backend below and must pass unchanged:

- ``http-int``, ``http-uuid``: the test server without auth, integer or UUID ids;
- ``http-int-auth``, ``http-uuid-auth``: the same with auth on, signed in as a non-default admin;
- ``memory``, ``file``, ``s3``: the local store in memory, on disk, and in a local S3 server.

Servers and the S3 endpoint live for the whole session; each test gets a fresh project, so tests
never see each other's rows.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import deardiary_lightning as dd
from tests.support import local_s3, s3_options

BACKENDS = ["http-int", "http-uuid", "http-int-auth", "http-uuid-auth", "memory", "file", "s3"]


@dataclasses.dataclass
class Run:
    """A fresh project, experiment and running iteration for one test."""

    client: dd.Client
    kind: str
    project_id: dd.Id
    experiment_id: dd.Id
    iteration_id: dd.Id

    @property
    def is_http(self) -> bool:
        return self.kind.startswith("http")


@pytest.fixture(scope="session")
def _http_servers() -> Iterator[dict[str, Any]]:
    from tests.deardiary_server import DearDiaryTestServer

    servers: dict[str, Any] = {}
    try:
        for kind in ("http-int", "http-uuid", "http-int-auth", "http-uuid-auth"):
            auth = kind.endswith("-auth")
            ids = "uuid" if "uuid" in kind else "int"
            server = DearDiaryTestServer(auth=auth, id_kind=ids).start()
            if auth:
                server.create_user("alice", "alice-secret-pw", is_admin=True)
            servers[kind] = server
        yield servers
    finally:
        for server in servers.values():
            server.stop()


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """A local S3-compatible server (moto) with a bucket named ``deardiary-tests``."""
    with local_s3("deardiary-tests") as endpoint:
        yield endpoint


def make_client(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> dd.Client:
    """Open a client on the backend called ``kind``."""
    if kind.startswith("http"):
        server = request.getfixturevalue("_http_servers")[kind]
        if kind.endswith("-auth"):
            return dd.connect(server.url, username="alice", password="alice-secret-pw")
        return dd.connect(server.url)
    if kind == "memory":
        return dd.connect(f"memory://contract-{uuid.uuid4().hex}")
    if kind == "file":
        return dd.connect(tmp_path / "store")
    if kind == "s3":
        endpoint = request.getfixturevalue("s3_endpoint")
        url = f"s3://deardiary-tests/{uuid.uuid4().hex}"
        return dd.connect(url, storage_options=s3_options(endpoint))
    raise AssertionError(kind)


@pytest.fixture(params=BACKENDS)
def client(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[dd.Client]:
    """A client on each backend in turn."""
    client = make_client(request.param, request, tmp_path)
    client.kind = request.param  # type: ignore[attr-defined]
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def run(client: dd.Client) -> Run:
    """A fresh project, experiment and iteration on the backend under test."""
    project_id = client.create_project(f"contract-{uuid.uuid4().hex[:8]}")
    experiment_id = client.create_experiment(project_id, "exp")
    iteration_id = client.create_iteration(experiment_id)
    return Run(client, client.kind, project_id, experiment_id, iteration_id)  # type: ignore[attr-defined]
