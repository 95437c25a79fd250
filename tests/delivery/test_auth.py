"""Tokens that expire during a run: refreshed before expiry, or signed in again."""

from __future__ import annotations

import time
from typing import Any

import deardiary_lightning
from deardiary_lightning.delivery import RetryPolicy, open_run
from tests.deardiary_server import FaultRule

from .conftest import client_points, expected_points, server_points, values


def test_three_second_tokens_over_a_ten_second_run_lose_nothing(
    deardiary_server_factory: Any, spool_dir: str
) -> None:
    server = deardiary_server_factory(auth=True, token_lifetime=3.0)
    server.create_user("trainer", "s3cret-pass", is_admin=True)
    run = open_run(
        server.url,
        project="auth",
        experiment="short tokens",
        username="trainer",
        password="s3cret-pass",
        spool=spool_dir,
        flush_interval=0.05,
        retry=RetryPolicy(initial=0.05, maximum=0.5, budget=10.0),
    )
    start = time.monotonic()
    step = 0
    while time.monotonic() - start < 10.0:
        run.log_metrics(values(step, 8), step=step)
        if step % 50 == 0:
            run.log_parameters({"progress": step})
        step += 1
        if step % 100 == 0:
            # A pause longer than the token's lifetime: the next request needs a new token.
            time.sleep(3.5 if step == 300 else 0.0)
        time.sleep(0.01)
    assert run.flush(timeout=30)
    run.end("SUCCEEDED")
    run.close()

    assert server_points(server, run.iteration_id) == expected_points(step, 8)
    params = server.query(
        "SELECT key, value FROM parameter WHERE iteration_id = ?", (run.iteration_id,)
    )
    assert [(p["key"], p["value"]) for p in params] == [("progress", str((step - 1) // 50 * 50))]
    assert "s3cret-pass" not in repr(run)


def test_an_expired_token_without_credentials_keeps_the_data_in_the_spool(
    deardiary_server_factory: Any, spool_dir: str, caplog: Any
) -> None:
    server = deardiary_server_factory(auth=True)
    server.create_user("viewer", "pw-viewer", is_admin=True)
    token = server.sign_in_token("viewer")
    run = open_run(
        server.url,
        project="auth",
        experiment="token only",
        token=token,
        spool=spool_dir,
        flush_interval=0.05,
        retry=RetryPolicy(initial=0.05, maximum=0.2, budget=0.5, probe_interval=0.2),
    )
    run.log_metrics(values(0, 8), step=0)
    assert run.flush(timeout=10)
    expired = {"code": "TOKEN_EXPIRED", "message": "Token has expired"}
    server.add_fault(FaultRule(kind="status", status=401, body=expired, path=r"^/(metric|auth)"))
    run.log_metrics(values(1, 8), step=1)
    assert run.flush(timeout=10)
    run.close(timeout=5)

    assert server_points(server, run.iteration_id) == expected_points(1, 8)
    spool = deardiary_lightning.connect(spool_dir)
    (project,) = spool.get_projects()
    (experiment,) = spool.get_experiments(project.id)
    (mirror,) = spool.get_iterations(experiment.id)
    assert client_points(spool, mirror.id) == expected_points(2, 8) - expected_points(1, 8)
    messages = [r.getMessage() for r in caplog.records]
    assert any("no username/password" in m for m in messages)
    assert any(f"deardiary-lightning sync {spool_dir} --to {server.url}" in m for m in messages)
