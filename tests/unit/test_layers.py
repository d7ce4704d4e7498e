"""The package's layers, as docs/architecture.md draws them, checked on every import (lazy ones included).

A module may import only from the layers listed for its own; the pure core imports nothing outside the
standard library, and convctl's side (cli/, client.py) never reaches into the daemon's package.
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[2] / "convocationsd"

# layer -> the layers it may import from (its own included)
ALLOWED = {
    "core": {"core"},
    "common": {"core", "common"},
    "store": {"core", "common", "store"},
    "client": {"core", "common", "client"},
    "daemon": {"core", "common", "store", "daemon"},
    "cli": {"core", "common", "store", "client", "cli"},
    "testing": {"core", "common", "testing"},
    "top": {"top", "daemon"},  # __init__ and __main__ (python -m convocationsd runs the daemon)
}
THIRD_PARTY = {  # layer -> third-party packages it may import
    "core": set(),
    "common": {"platformdirs"},
    "store": {"keyring", "cryptography", "tomlkit"},
    "client": set(),
    "daemon": {"aiohttp", "yarl", "multidict", "pydbus", "gi"},
    "cli": set(),
    "testing": {"aiohttp", "yarl"},
    "top": set(),
}


def layer_of(path: Path) -> str:
    rel = path.relative_to(PKG)
    if len(rel.parts) == 1:
        return "client" if rel.stem == "client" else "top"
    return rel.parts[0]


def imported_modules(text: str) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                found.append((node.lineno, "." * node.level + (node.module or "")))
            elif node.module == "convocationsd":  # from convocationsd import core: the name is the layer
                found += [(node.lineno, f"convocationsd.{alias.name}") for alias in node.names]
            else:
                found.append((node.lineno, node.module or ""))
    return found


def violations(layer: str, text: str) -> list[str]:
    wrong = []
    for lineno, module in imported_modules(text):
        parts = module.split(".")
        if module.startswith("."):
            wrong.append(f"line {lineno}: {module} (use absolute imports: convocationsd.<layer>.<module>)")
        elif parts[0] == "convocationsd":
            target = parts[1] if len(parts) > 1 and parts[1] != "__version__" else "top"
            if target not in ALLOWED[layer] and module not in ("convocationsd", "convocationsd.__version__"):
                wrong.append(f"line {lineno}: {module}")
        elif parts[0] not in sys.stdlib_module_names and parts[0] not in THIRD_PARTY[layer] | {"__future__"}:
            wrong.append(f"line {lineno}: {module} (third-party)")
    return wrong


MODULES = sorted(PKG.rglob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PKG)))
def test_imports_respect_the_layers(path: Path) -> None:
    layer = layer_of(path)
    wrong = violations(layer, path.read_text())
    assert not wrong, f"{path.relative_to(PKG)} ({layer}) imports across its layer: {wrong}"


def test_every_module_belongs_to_a_known_layer() -> None:
    assert {layer_of(p) for p in MODULES} <= set(ALLOWED)


@pytest.mark.parametrize(
    ("layer", "line"),
    [
        ("core", "import aiohttp"),
        ("core", "from convocationsd.store import configfile"),
        ("cli", "from convocationsd.daemon import proc_net"),
        ("client", "from convocationsd.cli import commands"),
        ("store", "def f():\n    from convocationsd.daemon.openrouter import check\n"),  # lazy imports count
        ("daemon", "from . import pages"),
    ],
)
def test_the_check_catches_a_crossing(layer: str, line: str) -> None:
    assert violations(layer, line)


def architecture_tree() -> dict[str, str]:
    """docs/architecture.md's package tree: folder (``core``, ``client.py``) -> the text that describes it."""
    doc = (PKG.parent / "docs" / "architecture.md").read_text()
    tree = doc.split("```")[1]
    found: dict[str, str] = {}
    folder = ""
    for line in tree.splitlines():
        head = re.match(r"  (\S+?)/?\s", line)
        if head:
            folder = head.group(1)
        if folder:
            found[folder] = found.get(folder, "") + line
    return found


def named(path: Path, tree: dict[str, str]) -> bool:
    rel = path.relative_to(PKG)
    if len(rel.parts) == 1:
        return rel.name in tree
    return re.search(rf"\b{path.stem}\b", tree.get(rel.parts[0], "")) is not None


def test_architecture_names_every_module_in_its_folder() -> None:
    """A module added, moved or renamed shows in the architecture's tree (a module renamed must not stay named there
    after it became store/configured.py)."""
    tree = architecture_tree()
    skipped = ("__init__", "__main__")
    missing = [str(p.relative_to(PKG)) for p in MODULES if p.stem not in skipped and not named(p, tree)]
    assert not missing, f"docs/architecture.md's tree does not name {missing}"
    assert set(tree) >= {"core", "common", "store", "client.py", "daemon", "cli", "testing"}
