"""A training-loop stand-in for the hung-server test: logs, then ends the process.

Usage: ``python -m tests.delivery._hung_writer URL SPOOL CLOSE_TIMEOUT MODE``. Opens a run,
prints ``ITERATION <id>``, waits for a line on stdin (the parent makes the server hang in the
meantime), logs 50 steps and a parameter, prints ``LOGGED`` and then either calls ``close()``
(``MODE=close``) or simply returns, leaving the writer to the ``atexit`` hook (``MODE=exit``).
"""

from __future__ import annotations

import sys

from deardiary_lightning.delivery import RetryPolicy, open_run


def main() -> None:
    url, spool, close_timeout, mode = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4]
    run = open_run(
        url,
        project="hung",
        experiment="close",
        spool=spool,
        flush_interval=0.05,
        close_timeout=close_timeout,
        retry=RetryPolicy(initial=0.05, maximum=0.5, budget=30.0),
    )
    print("ITERATION", run.iteration_id, flush=True)
    sys.stdin.readline()
    for step in range(50):
        run.log_metrics({f"m{k}": float(step * 10 + k) for k in range(8)}, step=step)
    run.log_parameters({"seed": 7})
    print("LOGGED", flush=True)
    if mode == "close":
        run.close()


if __name__ == "__main__":
    main()
