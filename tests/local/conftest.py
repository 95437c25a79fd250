"""Fixtures of the local-store tests: one store location per kind (file, memory, s3)."""

from __future__ import annotations

import dataclasses
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import deardiary_lightning as dd

BUCKET = "deardiary-local-tests"


@dataclasses.dataclass
class StoreSpec:
    """Where a test store lives and how to open it."""

    kind: str
    url: str
    storage_options: dict[str, Any]

    def connect(self) -> dd.Client:
        """Open a new client (a new writer) on the store."""
        return dd.connect(self.url, storage_options=self.storage_options)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture(scope="session")
def s3_server() -> Iterator[str]:
    """A moto S3 server on 127.0.0.1 with one bucket; yields its endpoint URL."""
    import boto3
    from moto.server import ThreadedMotoServer

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id="x",
        aws_secret_access_key="y",
        region_name="us-east-1",
    ).create_bucket(Bucket=BUCKET)
    try:
        yield endpoint
    finally:
        server.stop()


def s3_options(endpoint: str) -> dict[str, Any]:
    """fsspec options that point s3fs at the moto endpoint."""
    return {
        "client_kwargs": {"endpoint_url": endpoint, "region_name": "us-east-1"},
        "key": "x",
        "secret": "y",
        "skip_instance_cache": True,
    }


def make_spec(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> StoreSpec:
    """Build a fresh, empty store location of ``kind``."""
    if kind == "file":
        return StoreSpec("file", str(tmp_path / "store"), {})
    if kind == "memory":
        return StoreSpec("memory", f"memory://local-tests-{uuid.uuid4().hex}", {})
    if kind == "s3":
        endpoint = request.getfixturevalue("s3_server")
        return StoreSpec("s3", f"s3://{BUCKET}/{uuid.uuid4().hex}", s3_options(endpoint))
    raise AssertionError(kind)


@pytest.fixture(params=["file", "memory", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> StoreSpec:
    """A fresh store of each kind in turn."""
    return make_spec(request.param, tmp_path, request)


@pytest.fixture
def client(store: StoreSpec) -> Iterator[dd.Client]:
    """A client on the fresh store."""
    client = store.connect()
    try:
        yield client
    finally:
        client.close()
