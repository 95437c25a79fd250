"""Start the test server as a subprocess and control it over its ``/_test/...`` routes."""

from __future__ import annotations

import json
import os
import selectors
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._faults import FaultRule

REPO_ROOT = Path(__file__).resolve().parents[2]


def _command(
    *,
    auth: bool,
    id_kind: str,
    token_lifetime: float | None,
    data_dir: str | Path | None,
    port: int,
    seed: int,
) -> list[str]:
    command = [sys.executable, "-m", "tests.deardiary_server", "--port", str(port)]
    command += ["--ids", id_kind, "--seed", str(seed)]
    if auth:
        command.append("--auth")
    if token_lifetime is not None:
        command += ["--token-lifetime", str(token_lifetime)]
    if data_dir is not None:
        command += ["--data-dir", str(data_dir)]
    return command


def spawn(
    *,
    auth: bool = False,
    id_kind: str = "int",
    token_lifetime: float | None = None,
    data_dir: str | Path | None = None,
    port: int = 0,
    seed: int = 0,
    timeout: float = 30.0,
) -> tuple[str, subprocess.Popen[str]]:
    """Start ``python -m tests.deardiary_server`` and wait for its ``READY`` line.

    The arguments are those of :class:`DearDiaryTestServer`; the caller owns the process
    (terminate it when done; SIGTERM stops it cleanly, SIGKILL simulates a crash).

    Returns:
        The base URL and the process.

    Raises:
        RuntimeError: The server did not report ready within ``timeout`` seconds.
    """
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    command = _command(
        auth=auth,
        id_kind=id_kind,
        token_lifetime=token_lifetime,
        data_dir=data_dir,
        port=port,
        seed=seed,
    )
    process = subprocess.Popen(
        command, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, text=True, bufsize=1
    )
    assert process.stdout is not None

    line = ""
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        while not line and time.monotonic() < deadline and process.poll() is None:
            if selector.select(timeout=0.1):
                line = process.stdout.readline()

    if not line.startswith("READY "):
        process.kill()
        process.wait()
        msg = (
            f"the test server did not start (exit code {process.returncode}, "
            f"first line {line!r}); run {' '.join(command)} to see why"
        )
        raise RuntimeError(msg)
    return line.split()[1], process


@dataclass
class RemoteServer:
    """Drive a test server through its ``/_test/...`` control routes, given its URL.

    Works with a server in another process (see :func:`spawn`) as well as an in-process one.
    """

    url: str

    def _call(self, method: str, path: str, payload: Any = None) -> Any:
        data = None if payload is None else json.dumps(payload).encode("utf-8")
        request = urllib.request.Request(self.url + path, data=data, method=method)
        request.add_header("Content-Type", "application/json")
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read() or b"null")

    def add_fault(self, rule: FaultRule | dict[str, Any]) -> None:
        """Append a fault rule."""
        payload = rule.to_json() if isinstance(rule, FaultRule) else rule
        self._call("POST", "/_test/faults", payload)

    def clear_faults(self) -> None:
        """Remove every fault rule."""
        self._call("DELETE", "/_test/faults")

    def outage(self, seconds: float) -> None:
        """Refuse connections for ``seconds`` (the port stays the same)."""
        self._call("POST", "/_test/outage", {"seconds": seconds})

    @property
    def stats(self) -> dict[str, Any]:
        """The server's counters (see :attr:`DearDiaryTestServer.stats`)."""
        stats: dict[str, Any] = self._call("GET", "/_test/stats")
        return stats

    def create_user(self, username: str, password: str, is_admin: bool = False) -> Any:
        """Create a user directly and return its id."""
        payload = {"username": username, "password": password, "is_admin": is_admin}
        return self._call("POST", "/_test/users", payload)["user_id"]

    def sign_in_token(self, username: str, *, lifetime: float | None = None) -> str:
        """Mint a token for a user."""
        payload = {"username": username, "lifetime": lifetime}
        token: str = self._call("POST", "/_test/token", payload)["access_token"]
        return token


def terminate(process: subprocess.Popen[str], timeout: float = 10.0) -> int:
    """SIGTERM a spawned server and wait for it (SIGKILL if it does not exit in time)."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    if process.stdout is not None:
        process.stdout.close()
    return process.returncode


@contextmanager
def server_in_subprocess(**kwargs: Any) -> Iterator[str]:
    """Run a test server in a subprocess for the duration of a ``with`` block.

    Takes the keyword arguments of :func:`spawn` and yields the server's URL; drive it with
    ``RemoteServer(url)``. The process gets SIGTERM on exit.
    """
    url, process = spawn(**kwargs)
    try:
        yield url
    finally:
        terminate(process)
