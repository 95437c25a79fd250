"""kill -9 of a writer process: what was logged more than a second earlier is recoverable."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from tests.deardiary_server import FaultRule

from .conftest import server_points

REPO = Path(__file__).resolve().parents[2]
CLI = Path(sys.executable).with_name("deardiary-lightning")


def test_kill_9_then_sync_recovers_everything_older_than_a_second_exactly_once(
    deardiary_server_factory: Any, spool_dir: str
) -> None:
    server = deardiary_server_factory(seed=9)
    batch_route = r"^/metric/iteration/[^/]+/batch"
    # A slow, lossy server: some batches are spooled while they are also landing.
    server.add_fault(FaultRule(kind="latency", seconds=0.8, probability=0.2, path=batch_route))
    server.add_fault(FaultRule(kind="drop_after", probability=0.05, path=batch_route))

    process = subprocess.Popen(
        [sys.executable, "-m", "tests.delivery._killed_writer", server.url, spool_dir],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    logged: dict[int, float] = {}
    iteration: list[str] = []

    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            if not line.endswith("\n"):
                break  # the line being written when the process was killed
            parts = line.split()
            if parts[0] == "ITERATION":
                iteration.append(parts[1])
            elif parts[0] == "STEP":
                logged[int(parts[1])] = float(parts[2])

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    time.sleep(2.5)
    server.begin_outage()  # from now on everything goes to the spool
    time.sleep(2.5)
    os.kill(process.pid, signal.SIGKILL)
    killed_at = time.time()
    process.wait(timeout=10)
    reader.join(timeout=5)
    server.clear_faults()
    server.end_outage()

    iteration_id = int(iteration[0])
    before_sync = server_points(server, iteration_id)
    assert before_sync, "nothing reached the server before the outage"

    result = subprocess.run(
        [str(CLI), "sync", spool_dir, "--to", server.url],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr

    stored = server_points(server, iteration_id)
    assert max(stored.values()) == 1, "a point is stored twice"
    must_have = [step for step, at in logged.items() if at < killed_at - 1.0]
    assert len(must_have) > 200
    expected = Counter(
        (f"m{k}", step, float(step * 10 + k)) for step in must_have for k in range(8)
    )
    assert expected - before_sync, "the spool was not needed: the test proves nothing"
    missing = expected - stored
    assert not missing, f"{len(missing)} points logged >1 s before the kill are lost"
    unexpected = [p for p in stored if p[1] not in logged]
    assert not unexpected

    params = server.query(
        "SELECT key, value FROM parameter WHERE iteration_id = ?", (iteration_id,)
    )
    assert sorted((p["key"], p["value"]) for p in params) == [("optimizer", "adam"), ("seed", "7")]

    # A second sync finds nothing new.
    again = subprocess.run(
        [str(CLI), "sync", spool_dir, "--to", server.url],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert again.returncode == 0, again.stderr
    assert server_points(server, iteration_id) == stored
