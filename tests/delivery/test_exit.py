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


def _stopping(url: str, spool: str, mode: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.delivery._stopping_writer", url, spool, mode],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _terminate_after_a_while(
    process: subprocess.Popen[str],
) -> tuple[int, list[int], float, str]:
    """Send SIGTERM once the child logs; return its iteration, steps, time taken and output."""
    assert process.stdout is not None
    first = process.stdout.readline().split()
    assert first[0] == "ITERATION"
    time.sleep(0.5)
    start = time.monotonic()
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=60)
    took = time.monotonic() - start
    assert process.returncode == -signal.SIGTERM, err[-2000:]
    steps = [int(line.split()[1]) for line in out.split("\n")[:-1] if line.startswith("STEP")]
    return int(first[1]), steps, took, out


def test_a_program_stopping_by_itself_logs_its_last_step_and_dies_of_sigterm(
    deardiary_server_factory: Any, spool_dir: str
) -> None:
    server = deardiary_server_factory()
    process = _stopping(server.url, spool_dir, "finish")
    iteration_id, steps, _, out = _terminate_after_a_while(process)
    assert "RETURNING" in out  # the program went on after the signal, and stopped by itself
    # The step logged after the signal (the loop's last) was delivered before the run ended.
    stored = server.query("SELECT step FROM metric WHERE iteration_id = ?", (iteration_id,))
    assert sorted(row["step"] for row in stored) == list(range(max(steps) + 1))
    (row,) = server.query("SELECT status_id, end_date FROM iteration WHERE id = ?", (iteration_id,))
    assert row["status_id"] == 4 and row["end_date"] is not None


def test_a_program_that_does_not_stop_in_its_grace_period_is_terminated(
    deardiary_server_factory: Any, spool_dir: str
) -> None:
    server = deardiary_server_factory()
    process = _stopping(server.url, spool_dir, "hang")
    iteration_id, steps, took, out = _terminate_after_a_while(process)
    assert "RETURNING" not in out
    assert took < 30  # the program would have gone on for a minute; grace 1 s + close 2 s
    stored = server.query("SELECT step FROM metric WHERE iteration_id = ?", (iteration_id,))
    found = sorted(row["step"] for row in stored)
    # Every step printed was stored, once; the one being logged at the end may be there too.
    assert found in (list(range(len(steps))), list(range(len(steps) + 1)))
    (row,) = server.query("SELECT status_id, end_date FROM iteration WHERE id = ?", (iteration_id,))
    assert row["status_id"] == 4 and row["end_date"] is not None
