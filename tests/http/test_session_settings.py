"""The environment's proxy and CA settings are read once per backend and still honoured."""

from __future__ import annotations

import socket

import pytest
import requests

from deardiary_lightning.backends.http import HTTPBackend
from deardiary_lightning.errors import ConnectError
from tests.deardiary_server import DearDiaryTestServer

_PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY")


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (*_PROXY_VARIABLES, "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def test_a_proxy_from_the_environment_is_used(
    server: DearDiaryTestServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{_closed_port()}")
    backend = HTTPBackend(server.url, timeout=5.0)
    with pytest.raises(ConnectError):
        backend.health()
    backend.close()


def test_no_proxy_from_the_environment_bypasses_it(
    server: DearDiaryTestServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{_closed_port()}")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    backend = HTTPBackend(server.url, timeout=5.0)
    assert backend.health() is not None
    backend.close()


@pytest.mark.parametrize(
    "environment",
    [
        {},
        {"HTTPS_PROXY": "http://proxy.invalid:3128", "HTTP_PROXY": "http://proxy.invalid:3128"},
        {"HTTP_PROXY": "http://proxy.invalid:3128", "NO_PROXY": "deardiary.invalid"},
        {"REQUESTS_CA_BUNDLE": "/etc/ssl/certs/ca-certificates.crt"},
        {"CURL_CA_BUNDLE": "/etc/ssl/certs/ca-certificates.crt"},
    ],
)
def test_settings_match_what_requests_reads_per_request(
    environment: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    for url in ("http://deardiary.invalid:9000", "https://deardiary.invalid"):
        expected = requests.Session().merge_environment_settings(url, {}, None, None, None)
        backend = HTTPBackend(url)
        session = backend._session
        assert not session.trust_env
        assert session.merge_environment_settings(url, {}, None, None, None) == expected
        backend.close()


def test_requests_do_not_read_the_environment_again(
    server: DearDiaryTestServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = HTTPBackend(server.url)

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the environment was read for a request")

    monkeypatch.setattr(requests.utils, "get_environ_proxies", refuse)
    monkeypatch.setattr(requests.sessions, "get_environ_proxies", refuse)
    monkeypatch.setattr(requests.sessions, "get_netrc_auth", refuse)
    assert backend.health() is not None
    project = backend.create_project("p")
    assert backend.get_project(project) is not None
    backend.close()
