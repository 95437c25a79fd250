"""Every example and the quickstart notebook run as a user would run them, and record runs."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import deardiary_lightning as dd

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """A copy of examples/ in a fresh directory (runs land in its ./deardiary)."""
    shutil.copytree(EXAMPLES, tmp_path / "examples")
    return tmp_path


def _environment() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("DEARDIARY_")}
    env["PYTHONWARNINGS"] = "ignore"
    return env


def run_example(workdir: Path, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, *args],
        cwd=workdir,
        env=_environment(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def iterations(workdir: Path, experiment: str) -> list[dd.Iteration]:
    client = dd.connect(str(workdir / "deardiary"))
    (project,) = [p for p in client.get_projects() if p.name == "digits"]
    (found,) = [e for e in client.get_experiments(project.id) if e.name == experiment]
    return client.get_iterations(found.id)


def test_train_digits(workdir: Path):
    out = run_example(workdir, "examples/train_digits.py", "--epochs", "3")
    assert "run recorded at ./deardiary" in out

    (iteration,) = iterations(workdir, "mlp")
    assert iteration.status is dd.IterationStatus.SUCCEEDED
    client = dd.connect(str(workdir / "deardiary"))
    steps = sorted(m.step for m in client.get_metrics(iteration.id) if m.key == "val_acc")
    assert steps == [0, 1, 2]
    names = [r.name for r in client.get_resources(iteration.experiment_id)]
    assert any(name.endswith("-last.ckpt") for name in names), names
    (project,) = client.get_projects()
    (model,) = client.get_models(project.id)
    assert model.name == "digits-mlp" and len(client.get_model_versions(model.id)) == 1


def test_cli_train_with_the_config(workdir: Path):
    out = run_example(
        workdir, "examples/cli_train.py", "fit", "--config", "examples/config.yaml",
        "--trainer.max_epochs", "2",
    )  # fmt: skip
    assert "run recorded at ./deardiary" in out

    (iteration,) = iterations(workdir, "mlp-cli")
    assert iteration.status is dd.IterationStatus.SUCCEEDED
    client = dd.connect(str(workdir / "deardiary"))
    params = {p.key: p.value for p in client.get_parameters(iteration.id)}
    assert params["config/trainer/max_epochs"] == "2" and params["lr"] == "0.003"
    names = [r.name for r in client.get_resources(iteration.experiment_id)]
    assert f"iteration={iteration.id}-config.yaml" in names


def test_sweep_records_trials_as_children(workdir: Path):
    out = run_example(workdir, "examples/sweep.py", "--lrs", "0.001", "0.01", "--epochs", "2")
    assert "has 2 trials" in out

    runs = iterations(workdir, "lr-sweep")
    (parent,) = [i for i in runs if i.parent_iteration_id is None]
    children = [i for i in runs if i.parent_iteration_id == parent.id]
    assert len(runs) == 3 and len(children) == 2
    assert all(i.status is dd.IterationStatus.SUCCEEDED for i in runs)
    client = dd.connect(str(workdir / "deardiary"))
    trials = sorted(m.step for m in client.get_metrics(parent.id) if m.key == "trial_val_acc")
    assert trials == [0, 1]
    params = {p.key: p.value for p in client.get_parameters(parent.id)}
    assert params["best/iteration"] in {str(c.id) for c in children}


def test_quickstart_notebook(workdir: Path, monkeypatch: pytest.MonkeyPatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    for name in list(os.environ):
        if name.upper().startswith("DEARDIARY_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("PYTHONWARNINGS", "ignore")

    notebook = nbformat.read(workdir / "examples" / "quickstart.ipynb", as_version=4)
    runner = nbclient.NotebookClient(
        notebook,
        timeout=120,
        kernel_name="python3",
        resources={"metadata": {"path": str(workdir / "examples")}},
    )
    runner.execute()

    outputs = [o for cell in notebook.cells for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    assert any("image/png" in o.get("data", {}) for o in outputs), "no plot was drawn"
    assert any("test accuracy" in o.get("text", "") for o in outputs)
    (iteration,) = iterations(workdir / "examples", "quickstart")
    assert iteration.status is dd.IterationStatus.SUCCEEDED


def test_client_demo_on_the_local_store(workdir: Path):
    out = run_example(workdir, "examples/client_demo.py")
    assert f"recorded in file://{workdir / 'deardiary'}" in out

    client = dd.connect(str(workdir / "deardiary"))
    (project,) = client.get_projects()
    (experiment,) = client.get_experiments(project.id)
    (iteration,) = client.get_iterations(experiment.id)
    assert iteration.status is dd.IterationStatus.SUCCEEDED
    loss = [m.value for m in client.get_metrics(iteration.id) if m.key == "train_loss"]
    assert len(loss) == 5 and loss == sorted(loss, reverse=True)
    params = {p.key: p.value for p in client.get_parameters(iteration.id)}
    assert params == {"lr": "0.1", "epochs": "5", "optimizer": "sgd", "nesterov": "true"}


def test_client_demo_on_a_server(workdir: Path, deardiary_server):
    out = run_example(workdir, "examples/client_demo.py", deardiary_server.url)
    assert f"recorded in {deardiary_server.url}" in out
    rows = deardiary_server.query("SELECT key, step FROM metric ORDER BY key, step")
    assert [(r["key"], r["step"]) for r in rows] == [
        (key, step) for key in ("lr", "train_loss") for step in range(5)
    ]
    assert not (workdir / "deardiary").exists()
