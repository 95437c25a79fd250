"""Helpers shared by several test packages and the benchmarks: free ports, a local S3 server,
and a resident-memory sampler."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
from collections.abc import Iterator
from typing import Any

import psutil

#: Credentials the local S3 server accepts (it checks none).
S3_KEY = "testing"
S3_SECRET = "testing"


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.contextmanager
def local_s3(*buckets: str) -> Iterator[str]:
    """Run a moto S3 server on 127.0.0.1 with these buckets; yield its endpoint URL."""
    import boto3
    from moto.server import ThreadedMotoServer

    # moto serves through werkzeug, which logs every request at INFO.
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    try:
        s3 = boto3.client(
            "s3",
            endpoint_url=endpoint,
            aws_access_key_id=S3_KEY,
            aws_secret_access_key=S3_SECRET,
            region_name="us-east-1",
        )
        for bucket in buckets:
            s3.create_bucket(Bucket=bucket)
        yield endpoint
    finally:
        server.stop()


def s3_options(endpoint: str) -> dict[str, Any]:
    """fsspec options that point s3fs at a local S3 endpoint."""
    return {
        "key": S3_KEY,
        "secret": S3_SECRET,
        "client_kwargs": {"endpoint_url": endpoint, "region_name": "us-east-1"},
        "skip_instance_cache": True,
    }


class PeakRSS:
    """Sample a process's resident memory every few milliseconds and keep the peak.

    Args:
        pid: The process to watch; this one by default.
    """

    def __init__(self, pid: int | None = None) -> None:
        self.process = psutil.Process(pid if pid is not None else os.getpid())
        self.baseline = self.process.memory_info().rss
        self.peak = self.baseline
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, self.process.memory_info().rss)

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def growth_mb(self) -> float:
        """How far the peak rose above the starting size, in MiB."""
        return float(self.peak - self.baseline) / 2**20
