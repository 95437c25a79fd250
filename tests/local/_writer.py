"""A writer process for the durability tests.

Usage: ``python _writer.py URL OPTIONS_JSON ITERATION LABEL COUNT [PACK_FANOUT]``. It logs
``COUNT`` batches of two points (and a parameter every 50 steps) and prints one line per
returned call: ``<step> <id> <id>`` (or ``param <id>``), so the parent knows what was
acknowledged. ``PACK_FANOUT`` makes object-store packs that small, to pack often.
"""

from __future__ import annotations

import json
import sys

import deardiary_lightning as dd


def main() -> None:
    url, options, iteration, label, count = sys.argv[1:6]
    if len(sys.argv) > 6:
        from deardiary_lightning.store import log

        log.PACK_FANOUT = int(sys.argv[6])
    client = dd.connect(url, storage_options=json.loads(options))
    print("ready", flush=True)
    for step in range(int(count)):
        values = {f"{label}/a": float(step), f"{label}/b": -float(step)}
        ids = client.log_metrics(iteration, values, step=step)
        print(step, *ids, flush=True)
        if step % 50 == 0:
            print("param", client.create_parameter(iteration, f"{label}-{step}", step), flush=True)
    client.close()


if __name__ == "__main__":
    main()
