"""The sender process: metric batches posted by a child process, with the writer's guarantees.

Every other delivery test runs with the sender process too (it is the default for a plain
``http://`` server); these tests check what is particular to it: that it is used, that its
failures fall back to the writer's threads without loss or duplicates, and that it never
outlives the process it works for.
"""

from __future__ import annotations

import os
import signal
import ssl
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

import deardiary_lightning
from deardiary_lightning.delivery import RetryPolicy, open_run
from deardiary_lightning.delivery.courier import _parse
from tests.deardiary_server import FaultRule, RemoteServer, server_in_subprocess

from .conftest import client_points, expected_points, server_points, values, wait_for_outage

REPO = Path(__file__).resolve().parents[2]


def _children_running(pid: int) -> list[int]:
    """Process ids of the sender processes whose parent is ``pid``."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                parent = int(stat.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{entry}/cmdline", "rb") as cmdline:
                command = cmdline.read()
        except OSError:
            continue
        if parent == pid and b"courier.py" in command:
            found.append(int(entry))
    return found


def _ignored_signals(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("SigIgn:"):
                return int(line.split()[1], 16)
    return 0


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_batches_go_through_the_sender_process_exactly_once_despite_faults(
    deardiary_server_factory: Any, spool_dir: str
) -> None:
    server = deardiary_server_factory(seed=11)
    batch_route = r"^/metric/iteration/[^/]+/batch"
    server.add_fault(FaultRule(kind="status", status=503, probability=0.05, path=batch_route))
    server.add_fault(FaultRule(kind="drop_before", probability=0.02, path=batch_route))
    server.add_fault(FaultRule(kind="drop_after", probability=0.02, path=batch_route))
    run = open_run(
        server.url,
        project="process",
        experiment="faults",
        spool=spool_dir,
        flush_interval=0.05,
        retry=RetryPolicy(initial=0.01, maximum=0.2, budget=30.0),
    )
    courier = run._courier
    assert courier is not None
    child = courier.pid

    for step in range(800):
        run.log_metrics(values(step, 4), step=step)
        if step % 100 == 0:
            time.sleep(0.05)  # let the child start and take part
    assert run.flush(timeout=120)
    run.close()

    assert server_points(server, run.iteration_id) == expected_points(800, 4)
    assert courier.answered > 400  # most batches went through the child
    assert server.stats["faults"]["drop_after"] > 0
    assert not _alive(child)  # close() stopped it


def test_a_slow_server_gets_several_connections(
    deardiary_server_factory: Any, spool_dir: str
) -> None:
    server = deardiary_server_factory()
    server.add_fault(FaultRule(kind="latency", seconds=0.05, path=r"/batch$"))
    run = open_run(server.url, project="process", experiment="slow", spool=spool_dir)
    courier = run._courier
    assert courier is not None
    deadline = time.monotonic() + 20
    while not courier.ready:
        assert time.monotonic() < deadline, "the sender process did not start"
        time.sleep(0.01)
    before = server.stats["connections"]

    for step in range(60):  # 3 s of answers on one connection
        run.log_metrics(values(step, 2), step=step)
    assert run.flush(timeout=60)
    run.close()

    assert server_points(server, run.iteration_id) == expected_points(60, 2)
    assert courier.answered == 60
    assert server.stats["connections"] - before >= 3  # the child spread the queue


def test_killing_the_sender_process_mid_run_loses_and_duplicates_nothing(
    deardiary_server_factory: Any, spool_dir: str
) -> None:
    server = deardiary_server_factory()
    # Slow answers keep requests in flight in the child when it is killed.
    server.add_fault(FaultRule(kind="latency", seconds=0.02, path=r"/batch$"))
    run = open_run(server.url, project="process", experiment="killed", spool=spool_dir)
    courier = run._courier
    assert courier is not None

    for step in range(300):
        run.log_metrics(values(step, 3), step=step)
        time.sleep(0.002)
        if step == 150:
            assert courier.answered > 0
            os.kill(courier.pid, signal.SIGKILL)
    assert run.flush(timeout=120)
    assert run._courier is None  # the writer noticed and sends from its threads
    run.close()

    assert server_points(server, run.iteration_id) == expected_points(300, 3)


def test_a_run_that_started_while_the_server_was_down_gets_its_sender_process_later(
    spool_dir: str,
) -> None:
    with server_in_subprocess() as url:
        RemoteServer(url).outage(2.0)
        wait_for_outage(url)
        run = open_run(
            url,
            project="process",
            experiment="late",
            spool=spool_dir,
            flush_interval=0.05,
            retry=RetryPolicy(initial=0.05, maximum=0.5, budget=1.0, probe_interval=0.3),
        )
        assert run._courier is None
        for step in range(20):
            run.log_metrics(values(step, 3), step=step)
        time.sleep(2.5)  # the server is back and the spool is being delivered
        deadline = time.monotonic() + 20
        while run._courier is None or not run._courier.ready:
            assert time.monotonic() < deadline, "no sender process after the server came back"
            time.sleep(0.05)
        for step in range(20, 200):
            run.log_metrics(values(step, 3), step=step)
            time.sleep(0.002)
        assert run.flush(timeout=30)
        courier = run._courier
        run.close()
        assert courier is not None and courier.answered > 0
        client = deardiary_lightning.connect(url)
        iteration = client.get_iterations(
            client.get_experiments(client.get_projects()[0].id)[0].id
        )[0]
        assert client_points(client, iteration.id) == expected_points(200, 3)


def test_without_a_sender_process_threads_deliver(
    deardiary_server_factory: Any, spool_dir: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = deardiary_server_factory()
    explicit_off = open_run(
        server.url, project="process", experiment="off", spool=spool_dir, sender_process=False
    )
    monkeypatch.setattr(sys, "executable", "")  # an interpreter that cannot start a child
    cannot_start = open_run(server.url, project="process", experiment="none", spool=spool_dir)

    for run in (explicit_off, cannot_start):
        assert run._courier is None
        for step in range(100):
            run.log_metrics(values(step, 3), step=step)
        assert run.flush(timeout=60)
        run.close()
        assert server_points(server, run.iteration_id) == expected_points(100, 3)


def test_the_logger_follows_the_sender_process_setting(
    deardiary_server_factory: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from deardiary_lightning.lightning import DearDiaryLogger

    server = deardiary_server_factory()
    monkeypatch.chdir(tmp_path)
    for setting, expected in (("true", True), ("false", False)):
        monkeypatch.setenv("DEARDIARY_SENDER_PROCESS", setting)
        logger = DearDiaryLogger(url=server.url, log_environment=False)
        logger.log_metrics({"loss": 1.0}, step=0)
        lifecycle = logger._lifecycle
        assert lifecycle is not None
        assert (lifecycle.run._courier is not None) is expected
        logger.end()


def test_the_sender_process_ends_with_its_parent_and_ignores_terminal_signals(
    deardiary_server_factory: Any, spool_dir: str
) -> None:
    server = deardiary_server_factory()
    parent = subprocess.Popen(
        [sys.executable, "-m", "tests.delivery._killed_writer", server.url, spool_dir],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert parent.stdout is not None
        assert parent.stdout.readline().startswith("ITERATION")
        deadline = time.monotonic() + 20
        while not (children := _children_running(parent.pid)):
            assert time.monotonic() < deadline, "no sender process started"
            time.sleep(0.05)
        (child,) = children
        # Its own session: a Ctrl-C in the terminal reaches the parent, which decides.
        assert os.getsid(child) != os.getsid(parent.pid)
        wanted = (1 << (signal.SIGINT - 1)) | (1 << (signal.SIGTERM - 1))
        while _ignored_signals(child) & wanted != wanted:  # set once the child has started
            assert time.monotonic() < deadline, "the sender process never ignored the signals"
            time.sleep(0.01)
        os.kill(child, signal.SIGINT)
        os.kill(child, signal.SIGTERM)
        time.sleep(0.3)
        assert _alive(child)

        parent.kill()
        parent.wait(timeout=10)
        deadline = time.monotonic() + 10
        while _alive(child):
            assert time.monotonic() < deadline, "the sender process outlived its parent"
            time.sleep(0.05)
    finally:
        parent.kill()
        parent.wait(timeout=10)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\n{}", (201, b"{}")),
        (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 OK\r\nContent-Length: 0\r\n\r\n", (201, b"")),
        (
            b"HTTP/1.1 503 Busy\r\nTransfer-Encoding: chunked\r\nRetry-After: 2\r\n\r\n"
            b"4;x=1\r\nbusy\r\n3\r\n!!!\r\n0\r\n\r\n",
            (503, b"busy!!!"),
        ),
    ],
)
def test_answers_are_read_whole_in_any_framing(raw: bytes, expected: tuple[int, bytes]) -> None:
    for cut in range(len(raw)):
        assert _parse(bytearray(raw[:cut])) is None  # incomplete: wait for more
    buffer = bytearray(raw + b"HTTP/1.1 201")  # the start of the next answer stays
    answer = _parse(buffer)
    assert answer is not None
    assert (answer[0], answer[2]) == expected
    assert bytes(buffer) == b"HTTP/1.1 201"


def test_an_answer_without_length_ends_with_the_connection() -> None:
    raw = b"HTTP/1.0 500 Internal Server Error\r\nContent-Type: text/plain\r\n\r\noops"
    assert _parse(bytearray(raw)) is None  # more may come until the server closes
    answer = _parse(bytearray(raw), closed=True)
    assert answer is not None
    assert (answer[0], answer[2], answer[1]["connection"]) == (500, b"oops", "close")


def test_an_answer_that_is_not_http_is_refused() -> None:
    with pytest.raises(ValueError, match="not an HTTP"):
        _parse(bytearray(b"SSH-2.0-OpenSSH\r\n\r\n"))


def test_an_https_server_gets_the_sender_process_with_the_session_ca_bundle(
    deardiary_server_factory: Any,
    spool_dir: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    trustme = pytest.importorskip("trustme")
    authority = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert("127.0.0.1").configure_cert(context)
    bundle = tmp_path / "ca.pem"
    authority.cert_pem.write_to_path(str(bundle))
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(bundle))
    server = deardiary_server_factory(tls=context)
    assert server.url.startswith("https://")

    run = open_run(server.url, project="process", experiment="tls", spool=spool_dir)
    courier = run._courier
    assert courier is not None
    for step in range(300):
        run.log_metrics(values(step, 3), step=step)
        time.sleep(0.002)
    assert run.flush(timeout=60)
    run.close()

    assert server_points(server, run.iteration_id) == expected_points(300, 3)
    assert courier.answered > 100  # the child spoke TLS, verified with the bundle


def test_a_certificate_the_bundle_does_not_trust_is_refused_by_the_child_too(
    deardiary_server_factory: Any, tmp_path: Path
) -> None:
    from datetime import datetime

    from deardiary_lightning.delivery.courier import _Child

    trustme = pytest.importorskip("trustme")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    trustme.CA().issue_cert("127.0.0.1").configure_cert(context)
    bundle = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(bundle))  # a different authority
    server = deardiary_server_factory(tls=context)

    child = _Child("127.0.0.1", server.port, "", 10.0, 1, (True, str(bundle), None))
    child.take("/metric/iteration/1/batch", {}, [(7, 0, datetime(2026, 1, 1), [("a", 1.0)])])
    deadline = time.monotonic() + 10
    while not child._answers:
        assert time.monotonic() < deadline, "no answer"
        child._start_jobs(time.monotonic())
        for key, _ in child._selector.select(0.1):
            child.ready(key.data)

    ((token, status, kind, message),) = child._answers
    assert (token, status, kind) == (7, -1, "ConnectError")  # not sent: safe to send again
    assert "certificate" in message.lower()


def test_a_forked_process_does_not_keep_the_sender_process_alive(
    deardiary_server_factory: Any, spool_dir: str
) -> None:
    server = deardiary_server_factory()
    run = open_run(server.url, project="process", experiment="forked", spool=spool_dir)
    courier = run._courier
    assert courier is not None
    run.log_metrics(values(0, 3), step=0)
    assert run.flush(timeout=30)

    forked = os.fork()  # as a DataLoader worker would be
    if forked == 0:
        time.sleep(5)
        os._exit(0)
    try:
        run.close()
        # Closing the pipe ended the child although the forked process still holds copies.
        deadline = time.monotonic() + 2
        while _alive(courier.pid):
            assert time.monotonic() < deadline, "the sender process waited for the fork"
            time.sleep(0.02)
        assert courier._process.returncode == 0  # it left on its own, not killed
    finally:
        os.kill(forked, signal.SIGKILL)
        os.waitpid(forked, 0)
    assert server_points(server, run.iteration_id) == expected_points(1, 3)


def test_a_token_the_server_stops_accepting_is_replaced_and_nothing_is_lost(
    deardiary_server_factory: Any, spool_dir: str
) -> None:
    server = deardiary_server_factory(auth=True)
    server.create_user("trainer", "s3cret-pass", is_admin=True)
    run = open_run(
        server.url,
        project="process",
        experiment="re-keyed",
        username="trainer",
        password="s3cret-pass",
        spool=spool_dir,
        flush_interval=0.05,
    )
    courier = run._courier
    assert courier is not None
    for step in range(400):
        run.log_metrics(values(step, 3), step=step)
        time.sleep(0.002)
        if step == 200:
            assert courier.answered > 0
            # The server's signing secret changes: every token it issued is now TOKEN_INVALID.
            server.api.jwt_secret = "a-new-secret"
    assert run.flush(timeout=60)
    run.close()

    assert server_points(server, run.iteration_id) == expected_points(400, 3)
    assert courier.answered > 250  # the child went on with the new token
