"""Record a run with the client alone, then read it back.

Usage::

    python examples/client_demo.py                       # the local store in ./deardiary
    python examples/client_demo.py http://127.0.0.1:9000 # a DearDiary server

Credentials for a server come from ``DEARDIARY_USERNAME`` and ``DEARDIARY_PASSWORD``.
"""

from __future__ import annotations

import math
import os
import sys
import tempfile
from pathlib import Path

import deardiary_lightning as dd


def main(url: str | None) -> dd.Id:
    username = os.environ.get("DEARDIARY_USERNAME")
    password = os.environ.get("DEARDIARY_PASSWORD")
    with dd.connect(url, username=username, password=password) as client:
        project = client.create_project("client-demo")
        experiment = client.create_experiment(project, "cosine-schedule")
        iteration = client.create_iteration(experiment)

        for key, value in {"lr": 0.1, "epochs": 5, "optimizer": "sgd", "nesterov": True}.items():
            client.create_parameter(iteration, key, value)
        for epoch in range(5):
            lr = 0.05 * (1 + math.cos(math.pi * epoch / 5))
            loss = 2.0 * math.exp(-0.6 * epoch)
            client.log_metrics(iteration, {"lr": lr, "train_loss": loss}, step=epoch)

        with tempfile.TemporaryDirectory() as folder:
            notes = Path(folder) / "summary.txt"
            notes.write_text("five epochs of a cosine schedule\n")
            resource = client.create_resource(experiment, notes)
        client.end_iteration(iteration, dd.IterationStatus.SUCCEEDED)

        print(f"run {iteration!r} recorded in {client.url}")
        print("parameters:", {p.key: p.value for p in client.get_parameters(iteration)})
        print(f"{'step':>4}  {'key':<10}  value")
        for metric in client.get_metrics(iteration):
            print(f"{metric.step:>4}  {metric.key:<10}  {metric.value:.4f}")
        print("resource:", client.read_resource_data(resource))
        return iteration


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else None)
