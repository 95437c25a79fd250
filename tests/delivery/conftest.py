"""Fixtures of the delivery tests: the test server and helpers that check exactly-once."""

from __future__ import annotations

import socket
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from deardiary_lightning.delivery import shutdown


def server_points(server: Any, iteration_id: Any) -> Counter[tuple[str, int, float]]:
    """Count the stored points of an iteration by (key, step, value), read from the database."""
    rows = server.query(
        "SELECT key, step, value FROM metric WHERE iteration_id = ?", (iteration_id,)
    )
    return Counter((row["key"], int(row["step"]), float(row["value"])) for row in rows)


def expected_points(steps: int, keys: int) -> Counter[tuple[str, int, float]]:
    """The points a run logging ``keys`` values per step over ``steps`` steps must leave."""
    return Counter(
        (f"m{k}", step, float(step * 10 + k)) for step in range(steps) for k in range(keys)
    )


def values(step: int, keys: int) -> dict[str, float]:
    """The metrics logged at one step (distinct, checkable values)."""
    return {f"m{k}": float(step * 10 + k) for k in range(keys)}


@pytest.fixture
def spool_dir(tmp_path: Path) -> str:
    """A fresh spool directory."""
    return str(tmp_path / "spool")


@pytest.fixture(autouse=True)
def _no_leftover_writers() -> Iterator[None]:
    """Fail loudly if a test leaves a writer open (its threads would outlive the test)."""
    yield
    leftovers = shutdown._open_writers()
    for writer in leftovers:
        writer.close(timeout=1.0)
    assert not leftovers, "a test left a run writer open"


def wait_for_outage(url: str, timeout: float = 5.0) -> None:
    """Return once the server at ``url`` refuses connections.

    ``POST /_test/outage`` answers first and starts the outage afterwards, on another thread:
    when ``RemoteServer.outage`` returns, the server may still accept a few requests.
    """
    parts = urlsplit(url)
    address = (parts.hostname or "127.0.0.1", parts.port or 80)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(address, timeout=1.0):
                pass
        except ConnectionRefusedError:
            return
        except ConnectionResetError:
            pass  # accepted while the listening socket was being closed: look again
        time.sleep(0.005)
    raise AssertionError(f"the server at {url} still accepts connections {timeout} s later")


def client_points(client: Any, iteration_id: Any) -> Counter[tuple[str, int, float]]:
    """Count the stored points of an iteration by (key, step, value), read through a client."""
    return Counter((m.key, m.step, m.value) for m in client.get_metrics(iteration_id))
