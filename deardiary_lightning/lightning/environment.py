"""What a run ran on: Python, key package versions, git commit and dirty flag, command line.

DearDiary's own snapshot fields (``julia_version``, ``project_toml``, ...) describe a Julia
environment, so the logger records the Python one as ordinary parameters under ``env/``:

==========================  ===========================================================
parameter                   value
==========================  ===========================================================
``env/python``              ``3.11.7 (CPython)``
``env/platform``            ``Linux-6.1-x86_64-with-glibc2.36``
``env/host``                the machine's host name
``env/command``             the command line, with credentials masked
``env/cwd``                 the working directory
``env/git_commit``          ``HEAD`` of the repository holding the script (if any)
``env/git_branch``          its branch (``HEAD`` when detached)
``env/git_dirty``           ``true`` when tracked files have uncommitted changes
``env/<package>``           the installed version of torch, lightning, pytorch_lightning,
                            torchmetrics, numpy and deardiary_lightning (when installed)
==========================  ===========================================================

Collecting runs ``git`` twice (bounded by a timeout) and reads package metadata; it never
imports the packages it reports.
"""

from __future__ import annotations

import os
import platform
import re
import shlex
import socket
import subprocess
import sys
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path

from deardiary_lightning.lightning.hparams import MASK, is_secret_key

__all__ = ["PACKAGES", "collect_environment", "git_state", "mask_command_line"]

#: Distributions whose versions are recorded, as ``env/<name>``.
PACKAGES = (
    "torch",
    "lightning",
    "pytorch_lightning",
    "torchmetrics",
    "numpy",
    "deardiary_lightning",
)

_GIT_TIMEOUT = 5.0

_URL_USERINFO = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<user>[^/@:\s]*):[^/@\s]*@")


def collect_environment(
    argv: Sequence[str] | None = None, directory: str | os.PathLike[str] | None = None
) -> dict[str, str]:
    """Describe the running environment as DearDiary parameters.

    Args:
        argv: The command line; ``sys.argv`` by default.
        directory: Where to look for a git repository; the main script's directory by default,
            else the working directory.

    Returns:
        ``env/...`` keys to non-empty text (keys with nothing to say are left out).
    """
    args = list(sys.argv if argv is None else argv)
    found: dict[str, str] = {
        "env/python": f"{platform.python_version()} ({platform.python_implementation()})",
        "env/platform": platform.platform(),
        "env/host": socket.gethostname() or "unknown",
        "env/command": mask_command_line([sys.executable, *args]) if args else sys.executable,
        "env/cwd": os.getcwd(),
    }

    for name in PACKAGES:
        version = _version_of(name)
        if version is not None:
            found[f"env/{name}"] = version

    where = Path(directory) if directory is not None else _script_directory(args)
    found.update(git_state(where))
    return found


def git_state(directory: str | os.PathLike[str]) -> dict[str, str]:
    """Return the commit, branch and dirty flag of the git repository holding a directory.

    Args:
        directory: Any directory inside the work tree.

    Returns:
        ``env/git_commit``, ``env/git_branch`` and ``env/git_dirty``; empty when the directory
        is not in a repository or git is not installed.
    """
    commit = _git(directory, "rev-parse", "HEAD")
    if not commit:
        return {}
    state = {"env/git_commit": commit}
    branch = _git(directory, "rev-parse", "--abbrev-ref", "HEAD")
    if branch:
        state["env/git_branch"] = branch
    status = _git(directory, "status", "--porcelain", "--untracked-files=no")
    if status is not None:
        state["env/git_dirty"] = "true" if status else "false"
    return state


def mask_command_line(argv: Sequence[str]) -> str:
    """Join a command line for display, with credentials replaced by ``***``.

    Masks the value of options named like secrets (``--password x``, ``--token=x``,
    ``--trainer.logger.init_args.password=x``) and the password part of URLs
    (``http://user:pw@host`` becomes ``http://user:***@host``).

    Args:
        argv: The arguments, program first.

    Returns:
        A shell-quoted command line.
    """
    masked: list[str] = []
    hide_next = False
    for arg in argv:
        if hide_next:
            masked.append(MASK)
            hide_next = False
            continue
        if arg.startswith("-"):
            name, sep, _value = arg.lstrip("-").partition("=")
            if is_secret_key(name.replace("-", "_")):
                if sep:
                    masked.append(arg.split("=", 1)[0] + "=" + MASK)
                else:
                    masked.append(arg)
                    hide_next = True
                continue
        masked.append(_URL_USERINFO.sub(rf"\g<scheme>\g<user>:{MASK}@", arg))
    return shlex.join(masked)


def _version_of(distribution: str) -> str | None:
    """Return an installed distribution's version without importing it."""
    for candidate in (distribution, distribution.replace("_", "-")):
        try:
            return metadata.version(candidate)
        except metadata.PackageNotFoundError:
            continue
    return None


def _script_directory(argv: Sequence[str]) -> Path:
    """Return the directory of the main script, or the working directory."""
    if argv and argv[0] and Path(argv[0]).is_file():
        return Path(argv[0]).resolve().parent
    return Path.cwd()


def _git(directory: str | os.PathLike[str], *args: str) -> str | None:
    """Run one git command and return its trimmed output, or ``None`` if it failed."""
    try:
        done = subprocess.run(
            ["git", *args],
            cwd=directory,
            capture_output=True,
            text=True,
            timeout=_GIT_TIMEOUT,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if done.returncode != 0:
        return None
    return done.stdout.strip()
