"""A training-loop stand-in for the kill -9 test: logs until it is killed.

Usage: ``python -m tests.delivery._killed_writer URL SPOOL [STEPS]``. Prints ``ITERATION <id>``
once, then ``STEP <n> <unix time>`` after each logging call, so the parent knows what was logged
when. With ``STEPS`` it logs that many steps and returns without closing the writer (the
``atexit`` hook must deliver); without it, it logs until it is killed or terminated.
"""

from __future__ import annotations

import sys
import time

from deardiary_lightning.delivery import RetryPolicy, open_run


def main() -> None:
    url, spool = sys.argv[1], sys.argv[2]
    limit = int(sys.argv[3]) if len(sys.argv) > 3 else None
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
    while limit is None or step < limit:
        run.log_metrics({f"m{k}": float(step * 10 + k) for k in range(8)}, step=step)
        # One write per line: print() hands its pieces to the stream one by one, and a process
        # killed (or signalled) between two of them leaves a torn last line.
        sys.stdout.write(f"STEP {step} {time.time()}\n")
        sys.stdout.flush()
        step += 1
        time.sleep(0.01 if limit is None else 0.0)


if __name__ == "__main__":
    main()
