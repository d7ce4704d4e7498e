"""The project's wheel and its dependencies' wheels, for an installation with no index and no network.

Built from a copy of the working tree, so the wheel holds what a release built from it would (uncommitted
changes included) and the build leaves no ``build/`` folder in the checkout. Dependencies come from pip's
index (and its cache). Issue 19 brings a shared wheel-building helper; this function is the one place to
swap for it.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# What a wheel is built from (pyproject's packages, data-files and readme); the rest of the tree is not needed.
SOURCES = ("pyproject.toml", "README.md", "convocationsd", "systemd", "launchd")


def build_wheelhouse(dest: Path) -> list[Path]:
    """Writes the project's wheel and every dependency's into ``dest``; returns the wheels."""
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="cvwheel") as tmp:
        src = Path(tmp) / "src"
        src.mkdir()
        for name in SOURCES:
            path = ROOT / name
            if path.is_dir():
                shutil.copytree(path, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
            else:
                shutil.copy2(path, src / name)
        done = subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "--quiet", "--wheel-dir", str(dest), str(src)],
            capture_output=True,
            text=True,
            timeout=600,
        )
    if done.returncode != 0:
        raise RuntimeError(f"pip wheel failed (exit {done.returncode}):\n{done.stdout}{done.stderr}")
    return sorted(dest.glob("*.whl"))
