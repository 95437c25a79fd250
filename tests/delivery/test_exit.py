"""The end of a process: atexit delivers what is pending, SIGTERM flushes and ends the run."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from .conftest import expected_points, server_points

REPO = Path(__file__).resolve().parents[2]


def _writer(url: str, spool: str, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.delivery._killed_writer", url, spool, *extra],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_pending_data_is_delivered_at_exit_without_close(
    deardiary_server_factory: Any, spool_dir: str
) -> None:
    server = deardiary_server_factory()
    process = _writer(server.url, spool_dir, "3000")
    out, err = process.communicate(timeout=120)
    assert process.returncode == 0, err
    iteration_id = int(out.split()[1])
    assert server_points(server, iteration_id) == expected_points(3000, 8)


def test_sigterm_flushes_and_ends_the_run_as_killed(
    deardiary_server_factory: Any, spool_dir: str
) -> None:
    server = deardiary_server_factory()
    process = _writer(server.url, spool_dir)
    assert process.stdout is not None
    first = process.stdout.readline().split()
    assert first[0] == "ITERATION"
    time.sleep(1.5)
    process.send_signal(signal.SIGTERM)
    out, _ = process.communicate(timeout=60)
    assert process.returncode == -signal.SIGTERM
    # Only whole lines count (the child writes each line at once; a torn one would be the last).
    steps = [int(line.split()[1]) for line in out.split("\n")[:-1] if line.startswith("STEP")]
    assert steps
    iteration_id = int(first[1])
    stored = server_points(server, iteration_id)
    assert stored == expected_points(max(steps) + 1, 8) or stored == expected_points(
        max(steps) + 2, 8
    )  # the step being logged when the signal arrived may or may not have been recorded
    (row,) = server.query("SELECT status_id, end_date FROM iteration WHERE id = ?", (iteration_id,))
    assert row["status_id"] == 4 and row["end_date"] is not None
