"""Uploads and downloads stream: a file of several hundred MB never sits in memory."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

import deardiary_lightning as dd
from tests.deardiary_server import server_in_subprocess
from tests.support import PeakRSS

SIZE_MB = 400
#: How much the client process may grow while moving the file (buffers, pools, Python objects).
ALLOWED_GROWTH_MB = 64


@pytest.fixture(scope="module")
def server_url() -> Iterator[str]:
    with server_in_subprocess() as url:
        yield url


def _write_file(path: Path, size_mb: int) -> str:
    digest = hashlib.sha256()
    block = os.urandom(1024 * 1024)
    with path.open("wb") as out:
        for i in range(size_mb):
            chunk = i.to_bytes(8, "little") + block[8:]
            digest.update(chunk)
            out.write(chunk)
    return digest.hexdigest()


@pytest.mark.slow
def test_large_upload_and_download_keep_memory_flat(
    server_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "model.ckpt"
    expected_hash = _write_file(source, SIZE_MB)
    client = dd.connect(server_url)
    project = client.create_project("big")
    experiment = client.create_experiment(project, "files")

    with PeakRSS() as upload:
        resource_id = client.create_resource(experiment, source)
    resource = client.get_resource(resource_id)
    assert resource is not None
    assert resource.size_bytes == SIZE_MB * 2**20
    assert resource.content_hash == expected_hash

    target = tmp_path / "copy.ckpt"
    with PeakRSS() as download:
        written = client.download_resource(resource_id, target)
    assert written == SIZE_MB * 2**20
    digest = hashlib.sha256()
    with target.open("rb") as handle:
        for chunk in iter(lambda: handle.read(2**20), b""):
            digest.update(chunk)
    assert digest.hexdigest() == expected_hash

    with capsys.disabled():
        print(
            f"\n[streaming] {SIZE_MB} MB: upload peak growth {upload.growth_mb:.1f} MB, "
            f"download peak growth {download.growth_mb:.1f} MB "
            f"(baseline RSS {upload.baseline / 2**20:.0f} MB)"
        )
    assert upload.growth_mb < ALLOWED_GROWTH_MB
    assert download.growth_mb < ALLOWED_GROWTH_MB
