"""Run the test server in its own process.

``python -m tests.deardiary_server --port 0 [--auth] [--ids uuid] [--token-lifetime S]
[--data-dir D] [--seed N]`` prints ``READY http://127.0.0.1:PORT`` once it listens, then serves
until SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from types import FrameType

from ._server import DearDiaryTestServer


def main(argv: list[str] | None = None) -> int:
    """Parse the options, serve, and stop cleanly on a signal."""
    parser = argparse.ArgumentParser(prog="python -m tests.deardiary_server")
    parser.add_argument("--port", type=int, default=0, help="port to listen on (0: any)")
    parser.add_argument("--auth", action="store_true", help="require tokens")
    parser.add_argument("--ids", choices=("int", "uuid"), default="int", help="id scheme")
    parser.add_argument("--token-lifetime", type=float, default=86400.0, help="seconds")
    parser.add_argument("--data-dir", default=None, help="database and resource directory")
    parser.add_argument("--seed", type=int, default=0, help="seed of the fault injector")
    args = parser.parse_args(argv)

    server = DearDiaryTestServer(
        auth=args.auth,
        id_kind=args.ids,
        token_lifetime=args.token_lifetime,
        data_dir=args.data_dir,
        port=args.port,
        seed=args.seed,
    ).start()

    done = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        done.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    print(f"READY {server.url}", flush=True)

    try:
        while not done.wait(0.2):
            pass
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
