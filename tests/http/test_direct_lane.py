"""Metric batches take the direct lane: kept-alive connections, the same errors as requests."""

from __future__ import annotations

import http.client
import socket
import time

import pytest
import requests

import deardiary_lightning as dd
from deardiary_lightning.backends.http import HTTPBackend
from tests.deardiary_server import DearDiaryTestServer, FaultRule

PASSWORD = "s3cret-Pa55word"


@pytest.fixture
def connects(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record every connection opened with ``http.client``."""
    opened: list[str] = []
    connect = http.client.HTTPConnection.connect

    def counted(self: http.client.HTTPConnection) -> None:
        opened.append(f"{self.host}:{self.port}")
        connect(self)

    monkeypatch.setattr(http.client.HTTPConnection, "connect", counted)
    return opened


def _iteration(client: dd.Client) -> dd.Id:
    project = client.create_project("p")
    experiment = client.create_experiment(project, "e")
    return client.create_iteration(experiment)


def _spy_requests(backend: HTTPBackend) -> list[str]:
    seen: list[str] = []
    original = backend._session.request

    def spy(method: str, url: str, **kwargs: object) -> requests.Response:
        seen.append(url)
        return original(method, url, **kwargs)  # type: ignore[arg-type]

    backend._session.request = spy  # type: ignore[method-assign,assignment]
    return seen


def test_batches_share_one_kept_alive_connection(
    server: DearDiaryTestServer, connects: list[str]
) -> None:
    backend = HTTPBackend(server.url)
    client = dd.Client(backend)
    iteration = _iteration(client)
    through_requests = _spy_requests(backend)
    for step in range(50):
        client.log_metrics(iteration, {"loss": float(step), "acc": 1.0}, step=step)

    assert through_requests == []
    assert len(connects) == 1
    rows = client.get_metrics(iteration)
    assert sorted((m.step, m.key) for m in rows) == sorted(
        (step, key) for step in range(50) for key in ("loss", "acc")
    )
    client.close()


def test_a_session_given_by_the_caller_is_used_for_batches(server: DearDiaryTestServer) -> None:
    backend = HTTPBackend(server.url, session=requests.Session())
    client = dd.Client(backend)
    iteration = _iteration(client)
    through_requests = _spy_requests(backend)
    client.log_metrics(iteration, {"loss": 1.0}, step=0)
    assert len(through_requests) == 1
    client.close()


def test_after_a_dropped_connection_the_next_batch_opens_a_new_one(
    server: DearDiaryTestServer, connects: list[str]
) -> None:
    client = dd.connect(server.url)
    iteration = _iteration(client)
    server.add_fault(FaultRule(kind="drop_before", count=1, path="/batch$"))
    with pytest.raises(dd.ResponseLostError) as info:
        client.log_metrics(iteration, {"loss": 1.0}, step=0)
    assert info.value.may_have_landed
    assert client.get_metrics(iteration) == []

    server.add_fault(FaultRule(kind="drop_after", count=1, path="/batch$"))
    with pytest.raises(dd.ResponseLostError):
        client.log_metrics(iteration, {"loss": 1.0}, step=0)
    client.log_metrics(iteration, {"loss": 2.0}, step=1)
    assert [(m.step, m.value) for m in client.get_metrics(iteration)] == [(0, 1.0), (1, 2.0)]
    assert len(connects) == 3
    client.close()


def test_a_connection_the_server_closed_while_idle_is_replaced(
    server: DearDiaryTestServer, connects: list[str]
) -> None:
    backend = HTTPBackend(server.url)
    client = dd.Client(backend)
    iteration = _iteration(client)
    client.log_metrics(iteration, {"loss": 1.0}, step=0)
    assert backend._lane is not None
    idle = backend._lane._idle[0]
    # Swap the idle connection's socket for one whose other end then closes, as a server does
    # with a keep-alive connection it stops waiting on.
    with socket.create_server(("127.0.0.1", 0)) as listener:
        assert idle.sock is not None
        idle.sock.close()
        idle.sock = socket.create_connection(listener.getsockname())
        peer, _ = listener.accept()
        peer.close()
    time.sleep(0.05)

    client.log_metrics(iteration, {"loss": 2.0}, step=1)
    assert [(m.step, m.value) for m in client.get_metrics(iteration)] == [(0, 1.0), (1, 2.0)]
    assert len(connects) == 2
    client.close()


def test_a_slow_answer_is_a_read_timeout(server: DearDiaryTestServer) -> None:
    client = dd.connect(server.url, timeout=0.3)
    iteration = _iteration(client)
    server.add_fault(FaultRule(kind="latency", seconds=1.0, count=1, path="/batch$"))
    with pytest.raises(dd.ReadTimeoutError) as info:
        client.log_metrics(iteration, {"loss": 1.0}, step=0)
    assert info.value.may_have_landed
    client.close()


def test_a_refused_connection_is_a_connect_error(server: DearDiaryTestServer) -> None:
    client = dd.connect(server.url)
    iteration = _iteration(client)
    server.begin_outage()
    try:
        with pytest.raises(dd.ConnectError) as info:
            client.log_metrics(iteration, {"loss": 1.0}, step=0)
    finally:
        server.end_outage()
    assert not info.value.may_have_landed
    client.log_metrics(iteration, {"loss": 1.0}, step=0)
    assert len(client.get_metrics(iteration)) == 1
    client.close()


def test_error_answers_map_to_their_classes(server: DearDiaryTestServer) -> None:
    client = dd.connect(server.url)
    iteration = _iteration(client)
    server.add_fault(
        FaultRule(kind="status", status=503, count=1, path="/batch$", headers={"Retry-After": "2"})
    )
    with pytest.raises(dd.ServerError) as info:
        client.log_metrics(iteration, {"loss": 1.0}, step=0)
    assert (info.value.status, info.value.retry_after) == (503, 2.0)
    assert info.value.url.endswith("/batch")
    client.end_iteration(iteration, "SUCCEEDED")
    with pytest.raises(dd.UnprocessableError):
        client.log_metrics(iteration, {"loss": 1.0}, step=0)
    client.close()


def test_an_expired_token_signs_in_again_and_the_batch_lands_once() -> None:
    with DearDiaryTestServer(auth=True, id_kind="int", token_lifetime=2.0) as server:
        server.create_user("bob", PASSWORD, is_admin=True)
        backend = HTTPBackend(server.url, username="bob", password=PASSWORD)
        client = dd.Client(backend)
        iteration = _iteration(client)
        backend._token_deadline = None  # no refresh ahead of time: exercise the expiry path
        time.sleep(2.5)
        client.log_metrics(iteration, {"loss": 1.0}, step=0)
        assert [(m.key, m.step) for m in client.get_metrics(iteration)] == [("loss", 0)]
        client.close()
