"""The run environment: versions, git state, a command line without credentials."""

from __future__ import annotations

import platform
import shutil
import subprocess
from pathlib import Path

import pytest

from deardiary_lightning.lightning.environment import (
    collect_environment,
    git_state,
    mask_command_line,
)


def _git(cwd: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True)


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
def test_git_commit_and_dirty_flag(tmp_path: Path):
    _git(tmp_path, "init", "-q", "-b", "main")
    _git(tmp_path, "config", "user.email", "t@example.com")
    _git(tmp_path, "config", "user.name", "t")
    (tmp_path / "train.py").write_text("print(1)\n")
    _git(tmp_path, "add", "train.py")
    _git(tmp_path, "commit", "-q", "-m", "first")
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=tmp_path, capture_output=True, text=True, check=True
    ).stdout.strip()

    assert git_state(tmp_path) == {
        "env/git_commit": head,
        "env/git_branch": "main",
        "env/git_dirty": "false",
    }
    (tmp_path / "train.py").write_text("print(2)\n")
    assert git_state(tmp_path)["env/git_dirty"] == "true"
    (tmp_path / "notes.txt").write_text("untracked files do not make a tree dirty\n")
    (tmp_path / "train.py").write_text("print(1)\n")
    assert git_state(tmp_path)["env/git_dirty"] == "false"


def test_outside_a_repository_there_is_no_git_state(tmp_path: Path):
    assert git_state(tmp_path) == {}


def test_versions_python_and_command(tmp_path: Path):
    found = collect_environment(["train.py", "--lr", "0.1"], directory=tmp_path)
    assert found["env/python"].startswith(platform.python_version())
    assert found["env/torch"].startswith("2.")
    assert found["env/lightning"] and found["env/deardiary_lightning"]
    assert found["env/command"].endswith("train.py --lr 0.1")
    assert "env/git_commit" not in found
    assert all(isinstance(v, str) and v for v in found.values())


def test_credentials_are_masked_in_the_command_line():
    line = mask_command_line(
        [
            "python",
            "cli.py",
            "--password",
            "hunter2",
            "--trainer.logger.init_args.token=abc",
            "--api-key=k",
            "--url",
            "http://me:pw@host:9000/x",
            "--lr=0.1",
        ]
    )
    assert "hunter2" not in line and "abc" not in line and ":pw@" not in line
    assert "--password '***'" in line
    assert "'--trainer.logger.init_args.token=***'" in line and "'--api-key=***'" in line
    assert "http://me:***@host:9000/x" in line
    assert "--lr=0.1" in line
