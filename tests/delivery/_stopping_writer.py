"""A program that stops by itself on SIGTERM, for test_exit.py.

Usage: ``python -m tests.delivery._stopping_writer URL SPOOL MODE``. It registers a stop check
(as the Lightning logger does while a Trainer runs) and logs a step every 10 ms, printing
``ITERATION <id>`` first and ``STEP <n>`` after each step. MODE says what it does once SIGTERM
arrives: ``finish`` logs one more step, prints ``RETURNING`` and returns (the process must
still die of SIGTERM at exit); ``hang`` keeps logging for a minute (the grace period, shortened
to 1 s, must stop it).
"""

from __future__ import annotations

import signal
import sys
import time

from deardiary_lightning.delivery import open_run, shutdown

received = False


def main() -> None:
    url, spool, mode = sys.argv[1], sys.argv[2], sys.argv[3]
    shutdown.LOOP_GRACE = 1.0
    run = open_run(url, project="stop", experiment="by itself", spool=spool, close_timeout=2.0)
    previous = signal.getsignal(signal.SIGTERM)

    def note(signum: int, frame: object) -> None:
        global received
        received = True
        if callable(previous):
            previous(signum, frame)

    signal.signal(signal.SIGTERM, note)  # a training loop's own handler, in front of ours
    shutdown.add_stop_check(lambda: received)
    print("ITERATION", run.iteration_id, flush=True)
    step = 0
    stop_at = None
    while stop_at is None or step < stop_at:
        run.log_metrics({"m": float(step)}, step=step)
        sys.stdout.write(f"STEP {step}\n")
        sys.stdout.flush()
        step += 1
        if received and stop_at is None:
            stop_at = step + 1 if mode == "finish" else step + 6000
        time.sleep(0.01)
    print("RETURNING", flush=True)


if __name__ == "__main__":
    main()
