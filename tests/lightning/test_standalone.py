"""The logger with only the standalone ``pytorch_lightning`` package."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import deardiary_lightning as dd
from tests.lightning._models import steps

SCRIPT = Path(__file__).with_name("standalone_script.py")


def test_pytorch_lightning_trainer(tmp_path: Path):
    store = tmp_path / "store"
    done = subprocess.run(
        [sys.executable, str(SCRIPT), str(store)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    package, iteration_id, unified_loaded = done.stdout.split()[-3:]
    assert package == "pytorch_lightning" and unified_loaded == "False"

    client = dd.connect(str(store))
    iteration = client.get_iteration(iteration_id)
    assert iteration is not None and iteration.status is dd.IterationStatus.SUCCEEDED
    found = steps(client, iteration_id)
    assert found["loss_epoch"] == [0, 1]
    assert found["loss_step"] == list(range(8))
