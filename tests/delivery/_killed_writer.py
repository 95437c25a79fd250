"""A training-loop stand-in for the kill -9 test: logs until it is killed.

Usage: ``python -m tests.delivery._killed_writer URL SPOOL``. Prints ``ITERATION <id>`` once,
then ``STEP <n> <unix time>`` after each logging call, so the parent knows what was logged when.
"""

from __future__ import annotations

import sys
import time

from deardiary_lightning.delivery import RetryPolicy, open_run


def main() -> None:
    url, spool = sys.argv[1], sys.argv[2]
    run = open_run(
        url,
        project="crash",
        experiment="kill -9",
        spool=spool,
        retry=RetryPolicy(initial=0.05, maximum=0.5, budget=1.0, probe_interval=0.5),
    )
    run.log_parameters({"seed": 7, "optimizer": "adam"})
    print("ITERATION", run.iteration_id, flush=True)
    step = 0
    while True:
        run.log_metrics({f"m{k}": float(step * 10 + k) for k in range(8)}, step=step)
        print("STEP", step, time.time(), flush=True)
        step += 1
        time.sleep(0.01)


if __name__ == "__main__":
    main()
