"""Every module path, dotted name, file and logger name the docs mention exists in the code, as written.

A frontend author follows docs/dbus.md to a file and filters the log by a logger name; a renamed module must
not leave them looking for one that is gone (dbus.md named `convocationsd/desktop.py` and the logger
`convocationsd.desktop` long after both moved under `daemon/`). What is read: the README, SECURITY.md, the
examples' README and every Markdown file in docs/ and bench/.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PKG = ROOT / "convocationsd"
DOCS = sorted(
    [
        ROOT / "README.md",
        ROOT / "SECURITY.md",
        ROOT / "examples" / "README.md",
        *ROOT.glob("docs/*.md"),
        *ROOT.glob("bench/*.md"),
    ]
)
LAYERS = ("core", "common", "store", "daemon", "cli", "testing", "client")
TOP = ("convocationsd", "tests", "bench", "docs", "systemd", "launchd", "examples")
# Names that end like these are files, systemd units (convocationsd.socket) or their drop-in folders
# (convocationsd.service.d), not Python names.
NOT_PYTHON = {"d", "py", "md", "sock", "service", "socket", "log", "plist", "mjs", "sh", "toml", "json"}

DOTTED = re.compile(rf"(?<![\w./%@$-])(?:convocationsd|{'|'.join(LAYERS)})(?:\.[A-Za-z_]\w*)+")
PATH = re.compile(rf"(?<![\w./~%$@-])(?:{'|'.join(TOP + LAYERS)})/[\w./-]*")
LINK = re.compile(r"\]\(([^)\s#]+)(?:#[^)]*)?\)")
LOG_LINE = re.compile(r"\b(?:DEBUG|INFO|WARNING|ERROR|CRITICAL) (convocationsd[\w.]*):")
LOGGER_WORD = re.compile(r"logger `([\w.]+)`")


def split_fences(text: str) -> tuple[str, str]:
    """(the prose, the fenced code blocks) of a Markdown text."""
    prose, code = [], []
    inside = False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            inside = not inside
            continue
        (code if inside else prose).append(line)
    return "\n".join(prose), "\n".join(code)


def resolves(dotted: str) -> bool:
    """A module, or an attribute of one (``convocationsd.client.Client``)."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        name = ".".join(parts[:cut])
        try:
            if importlib.util.find_spec(name) is None:
                continue
        except ModuleNotFoundError:
            continue
        obj = importlib.import_module(name)
        for attr in parts[cut:]:
            if not hasattr(obj, attr):
                return False
            obj = getattr(obj, attr)
        return True
    return False


def path_exists(token: str) -> bool:
    """A file or folder of the checkout; a path under a layer is under the package; ``cli/commands._print_key``
    names an attribute of that module."""
    token = token.rstrip(".,;:")
    base = PKG if token.split("/")[0] in LAYERS else ROOT
    if (base / token).exists():
        return True
    head, _, last = token.rpartition("/")
    module, dot, attrs = last.partition(".")
    if not dot or not (base / head / f"{module}.py").is_file():
        return False
    dotted = ".".join((base / head / module).relative_to(ROOT).parts)
    return resolves(f"{dotted}.{attrs}")


def code_logger_names() -> set[str]:
    """The logger names the package logs under: getLogger(__name__) of each module, and literal names."""
    names = set()
    for path in PKG.rglob("*.py"):
        module = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "getLogger" and node.args:
                arg = node.args[0]
                if isinstance(arg, ast.Name) and arg.id == "__name__":
                    names.add(module)
                elif isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                    names.add(arg.value)
    return names


def mentions() -> list[tuple[str, str, str]]:
    """(doc, kind, name) for everything the docs name."""
    found = []
    for doc in DOCS:
        text = doc.read_text()
        prose, code = split_fences(text)
        where = str(doc.relative_to(ROOT))
        for name in set(DOTTED.findall(text)):
            if name.rsplit(".", 1)[-1] in NOT_PYTHON:
                continue
            # Outside convocationsd's own prefix, a layer's name may be a variable in an example (`daemon.Status()`).
            if name.startswith("convocationsd.") or name in DOTTED.findall(prose):
                found.append((where, "name", name))
        found += [(where, "path", p) for p in set(PATH.findall(text))]
        found += [(where, "link", link) for link in set(LINK.findall(text)) if not re.match(r"[a-z]+:", link)]
        found += [(where, "logger", name) for name in set(LOG_LINE.findall(code) + LOGGER_WORD.findall(text))]
    return sorted(found)


MENTIONS = mentions()


def test_the_docs_are_read_at_all():
    kinds = {kind for _, kind, _ in MENTIONS}
    assert kinds == {"name", "path", "link", "logger"}
    assert ("docs/dbus.md", "logger", "convocationsd.daemon.desktop") in MENTIONS
    assert ("docs/dbus.md", "path", "convocationsd/daemon/desktop.py") in MENTIONS
    assert ("docs/protocol.md", "name", "convocationsd.client.Client") in MENTIONS


@pytest.mark.parametrize(("doc", "kind", "name"), MENTIONS, ids=[f"{d}:{k}:{n}" for d, k, n in MENTIONS])
def test_what_the_docs_name_exists(doc, kind, name):
    if kind == "name":
        assert resolves(name if name.startswith("convocationsd") else f"convocationsd.{name}"), (
            f"{doc} names {name}, which is no module or attribute"
        )
    elif kind == "path":
        assert path_exists(name), f"{doc} names {name}, which is not in the checkout"
    elif kind == "link":
        assert (ROOT / doc).parent.joinpath(name).resolve().exists(), f"{doc} links to {name}, which does not exist"
    else:
        assert name in code_logger_names(), f"{doc} names the logger {name}, which nothing logs under"


def test_a_wrong_name_would_be_caught():
    assert not resolves("convocationsd.desktop") and resolves("convocationsd.daemon.desktop")
    assert not path_exists("convocationsd/desktop.py") and path_exists("daemon/desktop.py")
    assert not path_exists("cli/commands._no_such_thing") and path_exists("cli/commands._print_key")
    assert "convocationsd.desktop" not in code_logger_names() and "convocationsd.store.secrets" in code_logger_names()


SHORT = re.compile(r"`([a-z_]+)\.([A-Za-z_]\w*)`")  # `http_app.posted_form`: a module of ours, and a name in it


def short_name_exists(module: str, name: str) -> bool:
    """SECURITY.md's shorthand: ``flows.confirmation_token`` is a name of core/flows.py, at its top level or in
    one of its classes (FlowStore.confirmation_token)."""
    for path in PKG.rglob(f"{module}.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.name == name:
                return True
            targets = node.targets if isinstance(node, ast.Assign) else [getattr(node, "target", None)]
            if isinstance(node, (ast.Assign, ast.AnnAssign)) and any(
                isinstance(t, ast.Name) and t.id == name for t in targets
            ):
                return True
    return False


SECURITY_NAMES = sorted(
    {
        (module, name)
        for module, name in SHORT.findall((ROOT / "SECURITY.md").read_text())
        if any(PKG.rglob(f"{module}.py")) and f"{module}.{name}" not in ("config.toml", "openrouter.ai")
    }
)


@pytest.mark.parametrize(("module", "name"), SECURITY_NAMES, ids=[f"{m}.{n}" for m, n in SECURITY_NAMES])
def test_the_defences_security_md_names_exist(module, name):
    assert short_name_exists(module, name), f"SECURITY.md names {module}.{name}, which is not in {module}.py"


def test_security_md_names_are_read():
    assert ("http_app", "posted_form") in SECURITY_NAMES and ("flows", "confirmation_token") in SECURITY_NAMES
    assert not short_name_exists("http_app", "end_login")


# -- docs/protocol.md and the wire's names ------------------------------------------------------------------

PROTOCOL = (ROOT / "docs" / "protocol.md").read_text()


def test_protocol_md_documents_every_event_and_no_other():
    from convocationsd.core import events

    named = set(re.findall(r"(?<![\w-])openrouter-[a-z]+(?:-[a-z]+)*(?![\w-])", PROTOCOL))
    assert named == set(events.ALL_EVENTS)


def test_protocol_md_documents_every_json_rpc_error_code_and_no_other():
    from convocationsd.core import protocol

    codes = {value for name, value in vars(protocol).items() if name.isupper() and isinstance(value, int)}
    codes = {code for code in codes if -32768 <= code <= -32000}
    assert codes and set(map(int, re.findall(r"(?<![\w-])(-32\d{3})\b", PROTOCOL))) == codes


def _error_classes() -> dict[str, type]:
    import convocationsd.daemon.ipc_server
    import convocationsd.store.helper  # noqa: F401
    from convocationsd.core.errors import ConvError, kind_of

    found, todo = {}, [ConvError]
    while todo:
        cls = todo.pop()
        found[kind_of(cls)] = cls
        todo += cls.__subclasses__()
    return found


def _raised_in(path: Path) -> set[str]:
    """The names of what ``raise Name(...)`` raises in a module."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call):
            names.add(getattr(node.exc.func, "id", getattr(node.exc.func, "attr", "")))
    return names


def test_protocol_md_documents_every_error_kind_the_socket_sends_and_no_other():
    """``data.kind``: the kinds the controller and the key rules raise, the secret-store helper passes on,
    and the socket's refusal of another uid; each kind documented is an error class of the package."""
    from convocationsd.store import helper

    documented = set(re.findall(r"^\| `([A-Z]\w+)` \|", PROTOCOL, re.MULTILINE))
    classes = _error_classes()
    assert documented <= set(classes), documented - set(classes)
    raised = _raised_in(PKG / "daemon" / "controller.py") | _raised_in(PKG / "core" / "keycheck.py")
    sent = {name for name in raised if name in classes} | set(helper.ERRORS) | {"PermissionDenied"}
    assert sent <= documented, sent - documented
