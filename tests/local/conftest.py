"""Fixtures of the local-store tests: one store location per kind (file, memory, s3)."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import deardiary_lightning as dd
from tests.support import local_s3, s3_options

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


@pytest.fixture(scope="session")
def s3_server() -> Iterator[str]:
    """A moto S3 server on 127.0.0.1 with one bucket; yields its endpoint URL."""
    with local_s3(BUCKET) as endpoint:
        yield endpoint


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
