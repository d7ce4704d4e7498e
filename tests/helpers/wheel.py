"""The project as a stranger gets it, for tests that install it (the wheel-install test, a systemd container):
an sdist built from a copy of this checkout, the wheel built from that sdist (as ``python -m build`` and
``pip install <sdist>`` do), and a fresh venv in which only that wheel is installed.

Nothing is written into the checkout: setuptools leaves ``build/`` and ``*.egg-info`` where it builds, so it
builds in a copy. Building runs without build isolation, so it needs no network: ``build`` and setuptools
come from the test extra. The wheel's dependencies come from the package index, as with ``pipx install``,
into a wheelhouse; the venv is then made from the wheelhouse alone (``--no-index``), as it would be where no
index can be reached (a container).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# What a checkout holds besides its source: never copied into a build (git's own ignore list says the same).
NOT_SOURCE = shutil.ignore_patterns(
    ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".*_cache", ".hypothesis", "test-artifacts",
    "node_modules", "target", "out",
)  # fmt: skip


@dataclass(frozen=True)
class Dists:
    sdist: Path
    wheel: Path

    def sdist_names(self) -> set[str]:
        """The sdist's files, without its top folder (``convocationsd-1.0/``)."""
        with tarfile.open(self.sdist) as tar:
            return {m.name.split("/", 1)[1] for m in tar.getmembers() if m.isfile()}

    def wheel_names(self) -> set[str]:
        with zipfile.ZipFile(self.wheel) as whl:
            return {n for n in whl.namelist() if not n.endswith("/")}


def run(argv: list[str], **kw) -> subprocess.CompletedProcess:
    """Runs a build or install step; its output is in the error when it fails."""
    done = subprocess.run(argv, capture_output=True, text=True, timeout=600, **kw)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, argv))} failed ({done.returncode}):\n{done.stdout}{done.stderr}")
    return done


def build_dists(out: Path, source: Path = ROOT) -> Dists:
    """The sdist of ``source`` and the wheel built from that sdist, in ``out``."""
    work = out / "source"
    shutil.copytree(source, work, ignore=NOT_SOURCE)
    try:
        run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(work)])
    finally:
        shutil.rmtree(work, ignore_errors=True)
    (sdist,) = out.glob("*.tar.gz")
    (wheel,) = out.glob("*.whl")
    return Dists(sdist, wheel)


def pip_env() -> dict[str, str]:
    """This environment, plus the pip configuration of the person running the tests: the tests move HOME, and
    with it the pip.conf that may name their package index (it is read, never written)."""
    env = dict(os.environ)
    real_config = os.environ.get("CONVOCATIONS_TEST_REAL_CONFIG_HOME")
    if real_config and "PIP_CONFIG_FILE" not in env and (Path(real_config) / "pip" / "pip.conf").is_file():
        env["PIP_CONFIG_FILE"] = str(Path(real_config) / "pip" / "pip.conf")
    return env


def wheelhouse(wheel: Path, house: Path) -> Path:
    """``wheel`` and a wheel of each of its dependencies, in ``house`` (from the package index)."""
    run([sys.executable, "-m", "pip", "wheel", "--quiet", "--wheel-dir", str(house), str(wheel)], env=pip_env())
    return house


def install_wheel(wheel: Path, venv: Path, house: Path) -> Path:
    """A new venv at ``venv`` (on this interpreter's base Python) holding ``wheel`` and its dependencies only,
    all from the wheelhouse ``house``; returns its ``bin`` folder."""
    run([sys.executable, "-m", "venv", str(venv)])
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    run([*pip, "--no-index", "--find-links", str(house), str(wheel)])
    return venv / "bin"
