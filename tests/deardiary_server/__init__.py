"""A DearDiary-compatible server for the test suite, over real HTTP with a real database.

The real DearDiary server is written in Julia and cannot run here, so the tests talk to this
one: it follows the REST contract of DearDiary v0.9.1 (and, with ``id_kind="uuid"``, the UUID
build ``c0df1b0``) on the wire, status codes, envelopes and quirks included. It also injects
faults (error statuses, dropped connections, latency, outages) for the reliability tests.

In-process::

    with DearDiaryTestServer(auth=True, token_lifetime=5) as server:
        requests.get(server.url + "/health")

In a separate process (for benchmarks, or tests that kill the server)::

    with server_in_subprocess(auth=True) as url:
        RemoteServer(url).add_fault(FaultRule(kind="status", status=503, probability=0.1))

Pytest fixtures live in :mod:`tests.deardiary_server.fixtures`.
"""

from ._faults import FaultRule
from ._process import RemoteServer, server_in_subprocess, spawn, terminate
from ._server import DearDiaryTestServer

__all__ = [
    "DearDiaryTestServer",
    "FaultRule",
    "RemoteServer",
    "server_in_subprocess",
    "spawn",
    "terminate",
]
