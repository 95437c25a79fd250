"""Repository-wide checks: the public API list, ruff and mypy."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import deardiary_lightning

ROOT = Path(__file__).resolve().parent.parent


def test_all_is_sorted_and_complete() -> None:
    names = deardiary_lightning.__all__
    assert list(names) == sorted(names)
    for name in names:
        assert hasattr(deardiary_lightning, name), name
    public = {n for n in vars(deardiary_lightning) if not n.startswith("_")}
    modules = {n for n in public if type(getattr(deardiary_lightning, n)).__name__ == "module"}
    assert public - modules - {"annotations", "TYPE_CHECKING", "Any"} <= set(names)


def _tool(name: str) -> str:
    path = shutil.which(name, path=str(Path(sys.executable).parent))
    if path is None:
        pytest.skip(f"{name} is not installed (pip install -e '.[test]')")
    return path


def test_ruff_is_clean() -> None:
    ruff = _tool("ruff")
    targets = [
        p for p in ("deardiary_lightning", "tests", "benchmarks", "examples") if (ROOT / p).exists()
    ]
    subprocess.run([ruff, "check", *targets], cwd=ROOT, check=True)
    subprocess.run([ruff, "format", "--check", *targets], cwd=ROOT, check=True)


def test_mypy_is_clean() -> None:
    mypy = _tool("mypy")
    subprocess.run([mypy, "deardiary_lightning", "tests/typing"], cwd=ROOT, check=True)


def test_the_client_and_the_command_start_without_torch() -> None:
    code = (
        "import sys, deardiary_lightning, deardiary_lightning.cli; "
        "assert 'torch' not in sys.modules and 'lightning' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_lazy_names_resolve_to_their_modules() -> None:
    from deardiary_lightning.lightning import DearDiaryLogger

    assert deardiary_lightning.DearDiaryLogger is DearDiaryLogger
    assert "DearDiaryLogger" in dir(deardiary_lightning)
    with pytest.raises(AttributeError, match="no attribute"):
        deardiary_lightning.NoSuchName  # noqa: B018
