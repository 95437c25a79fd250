"""The peer servers the benchmarks start: ``mlflow server`` on 127.0.0.1."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from tests.support import free_port


@contextlib.contextmanager
def mlflow_server(directory: str | os.PathLike[str]) -> Iterator[str]:
    """Run ``mlflow server`` on 127.0.0.1 with a SQLite store in ``directory``; yield its URL.

    The server's output goes to ``mlflow-server.log`` in the same directory.
    """
    root = Path(directory)
    port = free_port()
    command = [
        sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
        "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
        "--default-artifact-root", str(root / "artifacts"), "--workers", "1",
    ]  # fmt: skip
    log_path = root / "mlflow-server.log"
    with log_path.open("w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=root)
        url = f"http://127.0.0.1:{port}"
        try:
            _wait_until_up(url, process, log_path)
            yield url
        finally:
            process.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=10)
            if process.poll() is None:
                process.kill()


def _wait_until_up(url: str, process: subprocess.Popen[bytes], log_path: Path) -> None:
    """Poll ``/health`` until the server answers (two minutes at most)."""
    deadline = time.monotonic() + 120
    while True:
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as answer:
                if answer.status == 200:
                    return
        except OSError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            msg = (
                f"mlflow server did not start (see {log_path}); is mlflow installed "
                "(pip install -c constraints.txt -e '.[bench]')?"
            )
            raise RuntimeError(msg)
        time.sleep(0.3)
