"""Fixtures of the HTTP backend tests."""

from __future__ import annotations

import pytest

from tests.deardiary_server import DearDiaryTestServer


@pytest.fixture
def server(deardiary_server: DearDiaryTestServer) -> DearDiaryTestServer:
    """The shared test server (auth off, integer ids, fresh per test)."""
    return deardiary_server
