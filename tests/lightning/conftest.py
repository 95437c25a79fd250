"""Fixtures of the Lightning tests: a clean working directory and both kinds of destination."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

import deardiary_lightning as dd

_HERE = Path(__file__).parent

#: Warnings Lightning gives about tiny CPU test setups; they say nothing about our code.
_LIGHTNING_NOISE = (
    "ignore::lightning.fabric.utilities.warnings.PossibleUserWarning",
    "ignore:.*does not have many workers.*:UserWarning",
    "ignore:.*smaller than the logging interval.*:UserWarning",
    "ignore:.*isinstance.treespec, LeafSpec.*:FutureWarning",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if _HERE in Path(str(item.fspath)).parents:
            for rule in _LIGHTNING_NOISE:
                item.add_marker(pytest.mark.filterwarnings(rule))


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Run each test in its own directory, without DEARDIARY_* variables, on one thread."""
    for name in list(os.environ):
        if name.upper().startswith("DEARDIARY_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@dataclass
class Destination:
    """Where a test's runs go, and a client to read them back."""

    kind: str
    url: str
    store: str

    def client(self) -> dd.Client:
        return dd.connect(self.url)

    def logger_args(self, **extra: Any) -> dict[str, Any]:
        return {"url": self.url, "store": self.store, **extra}


@pytest.fixture(params=["local", "server"])
def destination(request: pytest.FixtureRequest, tmp_path: Path) -> Destination:
    """The local store in a directory, then the test server (each test runs on both)."""
    if request.param == "local":
        return Destination("local", str(tmp_path / "store"), str(tmp_path / "store"))
    server = request.getfixturevalue("deardiary_server")
    return Destination("server", server.url, str(tmp_path / "spool"))


@pytest.fixture
def local(tmp_path: Path) -> Destination:
    """The local store in a directory (tests that need only one destination)."""
    return Destination("local", str(tmp_path / "store"), str(tmp_path / "store"))
