"""The HTTP backend on the wire: error shapes, transport failures, auth and secrets."""

from __future__ import annotations

import json
import logging
import pickle
import socket
import time
from collections.abc import Iterator

import pytest
import requests

import deardiary_lightning as dd
from deardiary_lightning.backends.http import HTTPBackend
from tests.deardiary_server import DearDiaryTestServer, FaultRule

PASSWORD = "s3cret-Pa55word"


@pytest.fixture
def auth_server() -> Iterator[DearDiaryTestServer]:
    with DearDiaryTestServer(auth=True, id_kind="int", token_lifetime=3.0) as server:
        server.create_user("bob", PASSWORD, is_admin=True)
        yield server


def _iteration(client: dd.Client) -> dd.Id:
    project = client.create_project("p")
    experiment = client.create_experiment(project, "e")
    return client.create_iteration(experiment)


# -- error bodies -------------------------------------------------------------------------------


def test_envelope_errors_carry_status_code_message_method_and_url(
    server: DearDiaryTestServer,
) -> None:
    client = dd.connect(server.url)
    with pytest.raises(dd.UnprocessableError) as info:
        client.create_experiment(424242, "orphan")
    error = info.value
    assert (error.status, error.code) == (422, "INVALID_PAYLOAD")
    assert error.method == "POST"
    assert error.url == f"{server.url}/experiment/project/424242"
    assert error.message
    assert "422 INVALID_PAYLOAD" in str(error)


def test_generic_errors_without_envelope_get_code_unknown(server: DearDiaryTestServer) -> None:
    backend = HTTPBackend(server.url)
    # A fractional step is a body the server cannot read: generic 400 without "code".
    iteration = _iteration(dd.Client(backend))
    with pytest.raises(dd.BadRequestError) as info:
        backend._json(
            "POST",
            f"/metric/iteration/{iteration}",
            body={"key": "k", "value": 1.0, "step": 1.5},
            expect=201,
        )
    assert (info.value.status, info.value.code) == (400, "UNKNOWN")
    assert info.value.message == "400: Bad Request"


def test_empty_error_bodies(server: DearDiaryTestServer) -> None:
    backend = HTTPBackend(server.url)
    with pytest.raises(dd.NotFoundError) as info:
        backend._json("GET", "/no/such/route")
    assert info.value.code == "UNKNOWN"
    assert "base URL" in info.value.message
    with pytest.raises(dd.MethodNotAllowedError) as info405:
        backend._json("PUT", "/project/")
    assert (info405.value.status, info405.value.message) == (405, "HTTP 405")


def test_injected_5xx_and_429_map_to_their_classes(server: DearDiaryTestServer) -> None:
    client = dd.connect(server.url)
    server.add_fault(FaultRule(kind="status", status=503, count=1, path="^/project"))
    with pytest.raises(dd.ServerError) as info:
        client.create_project("p")
    assert info.value.status == 503
    server.add_fault(FaultRule(kind="status", status=429, count=1, path="^/project"))
    with pytest.raises(dd.RateLimitedError):
        client.get_projects()
    assert client.get_projects() == []


def test_errors_pickle(server: DearDiaryTestServer) -> None:
    client = dd.connect(server.url)
    with pytest.raises(dd.UnprocessableError) as info:
        client.create_iteration(777)
    copy = pickle.loads(pickle.dumps(info.value))
    assert type(copy) is dd.UnprocessableError
    assert (copy.status, copy.code, copy.url) == (422, "INVALID_PAYLOAD", info.value.url)


# -- transport ------------------------------------------------------------------------------------


def test_refused_connection_is_a_connect_error() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client = dd.connect(f"http://127.0.0.1:{port}")
    with pytest.raises(dd.ConnectError) as info:
        client.health()
    assert not info.value.may_have_landed
    assert "is it running" in str(info.value)


def test_connection_dropped_before_the_write_is_applied(server: DearDiaryTestServer) -> None:
    client = dd.connect(server.url)
    iteration = _iteration(client)
    server.add_fault(FaultRule(kind="drop_before", count=1, path="^/metric/"))
    with pytest.raises(dd.ResponseLostError) as info:
        client.create_metric(iteration, "loss", 1.0, step=0)
    assert info.value.may_have_landed  # the client cannot tell; the server had not applied it
    assert client.get_metrics(iteration) == []


def test_connection_dropped_after_the_write_is_applied(server: DearDiaryTestServer) -> None:
    client = dd.connect(server.url)
    iteration = _iteration(client)
    server.add_fault(FaultRule(kind="drop_after", count=1, path="^/metric/"))
    with pytest.raises(dd.ResponseLostError):
        client.log_metrics(iteration, {"loss": 1.0, "acc": 0.5}, step=0)
    assert {m.key for m in client.get_metrics(iteration)} == {"loss", "acc"}


def test_slow_answer_is_a_read_timeout(server: DearDiaryTestServer) -> None:
    client = dd.connect(server.url, timeout=0.3)
    server.add_fault(FaultRule(kind="latency", seconds=1.0, count=1))
    with pytest.raises(dd.ReadTimeoutError) as info:
        client.get_projects()
    assert info.value.may_have_landed


def test_outage_then_recovery(server: DearDiaryTestServer) -> None:
    client = dd.connect(server.url)
    client.create_project("before")
    server.begin_outage()
    try:
        with pytest.raises(dd.ConnectError):
            client.get_projects()
    finally:
        server.end_outage()
    assert [p.name for p in client.get_projects()] == ["before"]


# -- wire details ---------------------------------------------------------------------------------


def test_multipart_part_names_and_stored_bytes(server: DearDiaryTestServer) -> None:
    client = dd.connect(server.url)
    project = client.create_project("p")
    experiment = client.create_experiment(project, "e")
    resource_id = client.create_resource(experiment, 'we"ird name.bin', b"payload")
    resource = client.get_resource(resource_id)
    assert resource is not None
    assert resource.name == 'we"ird name.bin'
    client.update_resource(resource_id, description="only the description part")
    resource = client.get_resource(resource_id)
    assert resource is not None
    assert (resource.name, resource.description) == ('we"ird name.bin', "only the description part")
    assert client.read_resource_data(resource_id) == b"payload"


def test_unknown_size_streams_use_chunked_encoding(server: DearDiaryTestServer) -> None:
    class Pipe:
        """A non-seekable stream, like a socket or a pipe."""

        def __init__(self, data: bytes) -> None:
            self.data = data

        def read(self, size: int = -1) -> bytes:
            out, self.data = self.data[:size], self.data[size:]
            return out

    client = dd.connect(server.url)
    project = client.create_project("p")
    experiment = client.create_experiment(project, "e")
    blob = b"x" * 3_000_000
    resource_id = client.create_resource(experiment, "pipe.bin", Pipe(blob))  # type: ignore[arg-type]
    assert client.read_resource_data(resource_id) == blob


def test_ids_are_escaped_in_paths(server: DearDiaryTestServer) -> None:
    backend = HTTPBackend(server.url)
    seen: list[str] = []
    original = backend._session.request

    def spy(method: str, url: str, **kwargs: object) -> requests.Response:
        seen.append(url)
        return original(method, url, **kwargs)  # type: ignore[arg-type]

    backend._session.request = spy  # type: ignore[method-assign]
    with pytest.raises(dd.ServerError):
        # An integer server cannot read a non-integer id (generic 500); the id stays one segment.
        dd.Client(backend).get_metric("1/../../project")
    assert seen[-1].endswith("/metric/1%2F..%2F..%2Fproject")


def test_uuid_server_ids_are_strings_and_round_trip() -> None:
    with DearDiaryTestServer(id_kind="uuid") as server:
        client = dd.connect(server.url)
        iteration = _iteration(client)
        assert isinstance(iteration, str)
        assert len(iteration) == 36
        resource = client.create_resource(client.get_iteration(iteration).experiment_id, "r", b"1")  # type: ignore[union-attr]
        model = client.create_model(client.get_projects()[0].id, "m")
        version = client.create_model_version(model, iteration, resource_id=resource)
        stored = client.get_model_version(version)
        assert stored is not None
        assert (stored.iteration_id, stored.resource_id) == (iteration, resource)


def test_json_never_carries_nan_tokens(server: DearDiaryTestServer) -> None:
    backend = HTTPBackend(server.url)
    with pytest.raises(ValueError, match="non-finite"):
        backend._json("POST", "/project/", body={"value": float("nan")})


# -- auth -----------------------------------------------------------------------------------------


def test_sign_in_and_whoami(auth_server: DearDiaryTestServer) -> None:
    client = dd.connect(auth_server.url, username="bob", password=PASSWORD)
    assert client.whoami().username == "bob"
    info = client.refresh_token()
    assert info.user.username == "bob"
    assert info.token_type == "Bearer"


def test_bad_credentials(auth_server: DearDiaryTestServer) -> None:
    with pytest.raises(dd.AuthenticationError) as wrong:
        dd.connect(auth_server.url, username="bob", password="wrong")
    assert wrong.value.code == "INVALID_CREDENTIALS"
    with pytest.raises(dd.AuthenticationError) as unknown:
        dd.connect(auth_server.url, username="nobody", password="x")
    assert unknown.value.code == "USER_NOT_FOUND"
    with pytest.raises(ValueError, match="both"):
        dd.connect(auth_server.url, username="bob")


def test_no_token_on_an_auth_server(auth_server: DearDiaryTestServer) -> None:
    client = dd.connect(auth_server.url)
    assert client.health().app_name == "DearDiary"
    with pytest.raises(dd.AuthenticationError) as info:
        client.get_projects()
    assert info.value.code == "TOKEN_MISSING"


def test_expired_token_without_password_raises(auth_server: DearDiaryTestServer) -> None:
    token = auth_server.sign_in_token("bob", lifetime=1)
    client = dd.connect(auth_server.url, token=token)
    assert client.get_projects() == []
    time.sleep(2.1)
    with pytest.raises(dd.TokenExpiredError) as info:
        client.get_projects()
    assert info.value.status == 401
    with pytest.raises(dd.TokenExpiredError):
        client.refresh_token()


def test_expired_token_with_password_signs_in_again(auth_server: DearDiaryTestServer) -> None:
    backend = HTTPBackend(auth_server.url, username="bob", password=PASSWORD)
    client = dd.Client(backend)
    backend._token_deadline = None  # no refresh ahead of time: exercise the expiry path
    project = client.create_project("p")
    time.sleep(3.5)
    assert [p.id for p in client.get_projects()] == [project]


def test_token_is_refreshed_before_it_expires(auth_server: DearDiaryTestServer) -> None:
    client = dd.connect(auth_server.url, username="bob", password=PASSWORD)
    first = client.backend._token  # type: ignore[attr-defined]
    time.sleep(2.5)  # past the refresh point, before the 3 s lifetime ends
    client.get_projects()
    assert client.backend._token != first  # type: ignore[attr-defined]


def test_secrets_stay_out_of_reprs_errors_and_logs(
    auth_server: DearDiaryTestServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    client = dd.connect(auth_server.url, username="bob", password=PASSWORD)
    token = client.backend._token  # type: ignore[attr-defined]
    assert token
    texts = [repr(client), repr(client.backend)]
    with pytest.raises(dd.UnprocessableError) as info:
        client.create_iteration(4242)
    texts += [str(info.value), repr(info.value), json.dumps(info.value.__dict__)]
    with pytest.raises(dd.AuthenticationError) as wrong:
        dd.connect(auth_server.url, username="bob", password=PASSWORD + "x")
    texts += [str(wrong.value), caplog.text]
    for text in texts:
        assert PASSWORD not in text
        assert token not in text


def test_credentials_in_the_url_are_refused() -> None:
    with pytest.raises(ValueError, match="credentials"):
        dd.connect("http://bob:pw@127.0.0.1:9")


def test_a_wrong_base_url_is_not_read_as_a_missing_entity(server: DearDiaryTestServer) -> None:
    client = dd.connect(server.url + "/api/v1")
    with pytest.raises(dd.NotFoundError, match="base URL"):
        client.get_project(1)
    with pytest.raises(dd.NotFoundError, match="base URL"):
        client.read_resource_data(1)


def test_a_rotated_signing_secret_signs_in_again(auth_server: DearDiaryTestServer) -> None:
    client = dd.connect(auth_server.url, username="bob", password=PASSWORD)
    client.backend._token = auth_server.sign_in_token("bob") + "x"  # type: ignore[attr-defined]
    assert client.get_projects() == []


def test_steps_outside_64_bits_are_refused(server: DearDiaryTestServer) -> None:
    client = dd.connect(server.url)
    iteration = _iteration(client)
    with pytest.raises(ValueError, match="64-bit"):
        client.create_metric(iteration, "k", 1.0, step=2**63)
