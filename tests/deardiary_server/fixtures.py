"""Pytest fixtures for the DearDiary test server.

Load them from a conftest with ``pytest_plugins = ["tests.deardiary_server.fixtures"]``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from ._server import DearDiaryTestServer

ServerFactory = Callable[..., DearDiaryTestServer]


@pytest.fixture
def deardiary_server_factory() -> Iterator[ServerFactory]:
    """Make started servers with any :class:`DearDiaryTestServer` arguments; all are stopped
    at teardown."""
    servers: list[DearDiaryTestServer] = []

    def make(**kwargs: Any) -> DearDiaryTestServer:
        server = DearDiaryTestServer(**kwargs).start()
        servers.append(server)
        return server

    yield make
    for server in reversed(servers):
        server.stop()


@pytest.fixture
def deardiary_server(deardiary_server_factory: ServerFactory) -> DearDiaryTestServer:
    """A started server with auth off and integer ids, fresh for each test."""
    return deardiary_server_factory()
