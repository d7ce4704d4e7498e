"""The mutants of a Python source file: small edits of its syntax tree, each one a way the code could be
wrong. Pure: source text in, mutants out; ``apply`` makes a mutant's source by splicing its new text over the
old, so every other line (and every line number) stays as it was.

What is mutated, and what is left alone on purpose:
- comparisons (``==``/``!=``, ``<``/``<=``, ``>``/``>=``, ``in``/``not in``, ``is``/``is not``), ``and``/``or``,
  ``not x`` to ``x``, the condition of an ``if`` or a conditional expression forced to True and to False,
  arithmetic and bit operators, ``+=``/``-=``, ``continue``/``break``;
- numbers (n to n + 1), True/False, and strings that are names or tokens (no whitespace: header names,
  states, struct formats); prose (messages and hints, which the tests read but do not spell out) is not;
- a statement removed (``pass`` in its place): an assignment, a call, a ``raise``, a ``return``;
- never: docstrings, annotations (strings at run time, with ``from __future__ import annotations``),
  f-string parts, and what runs only under ``if TYPE_CHECKING``.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass

COMPARE = {
    ast.Eq: ast.NotEq,
    ast.NotEq: ast.Eq,
    ast.Lt: ast.LtE,
    ast.LtE: ast.Lt,
    ast.Gt: ast.GtE,
    ast.GtE: ast.Gt,
    ast.In: ast.NotIn,
    ast.NotIn: ast.In,
    ast.Is: ast.IsNot,
    ast.IsNot: ast.Is,
}
ARITHMETIC = {
    ast.Add: ast.Sub,
    ast.Sub: ast.Add,
    ast.Mult: ast.Div,
    ast.Div: ast.Mult,
    ast.FloorDiv: ast.Div,
    ast.BitAnd: ast.BitOr,
    ast.BitOr: ast.BitAnd,
    ast.BitXor: ast.BitAnd,
    ast.LShift: ast.RShift,
    ast.RShift: ast.LShift,
}
AUGMENTED = {ast.Add: ast.Sub, ast.Sub: ast.Add}
REMOVABLE = (ast.Assign, ast.AugAssign, ast.AnnAssign, ast.Expr, ast.Raise, ast.Return, ast.Delete)


@dataclass(frozen=True)
class Mutant:
    """One edit: the text from (line, col) to (end_line, end_col) of ``file`` becomes ``after``.

    ``key`` names it without line numbers (file, function, operator, before and after), so that a list of
    equivalent mutants stays right while the code around them moves; ``in_function`` is False for what runs
    when the module is imported (module and class bodies, default values, decorators)."""

    file: str
    qualname: str
    operator: str
    line: int
    col: int
    end_line: int
    end_col: int
    before: str
    after: str
    in_function: bool
    key: str = ""


def mutants(source: str, file: str, only: frozenset[str] | None = None) -> list[Mutant]:
    """Every mutant of ``source``; with ``only``, just those inside the functions or module-level names listed
    (qualified names: ``security``, ``Results.add``, ``CHECK_PEER_UID``)."""
    tree = ast.parse(source)
    found = [m for m in _Finder(source, file).run(tree) if only is None or _chosen(m.qualname, only)]
    seen: dict[str, int] = {}
    keyed = []
    for m in found:
        base = f"{m.file}:{m.qualname}:{m.operator}:{_short(m.before)} -> {_short(m.after)}"
        seen[base] = seen.get(base, 0) + 1
        key = base if seen[base] == 1 else f"{base} #{seen[base]}"
        keyed.append(Mutant(**{**m.__dict__, "key": key}))
    return keyed


def apply(source: str, mutant: Mutant) -> str:
    """The source of ``mutant``: its new text in place of the old, padded with newlines so that the lines
    after it keep their numbers."""
    lines = source.splitlines(keepends=True)
    start = sum(len(line) for line in lines[: mutant.line - 1]) + _byte_to_char(lines[mutant.line - 1], mutant.col)
    end = sum(len(line) for line in lines[: mutant.end_line - 1]) + _byte_to_char(
        lines[mutant.end_line - 1], mutant.end_col
    )
    after = mutant.after + "\n" * (mutant.end_line - mutant.line - mutant.after.count("\n"))
    if mutant.after.count("\n") > mutant.end_line - mutant.line:
        raise ValueError(f"{mutant.key}: the new text has more lines than the old")
    return source[:start] + after + source[end:]


def _chosen(qualname: str, only: frozenset[str]) -> bool:
    return any(qualname == name or qualname.startswith(name + ".") for name in only)


def _short(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= 60 else text[:57] + "..."


def _byte_to_char(line: str, offset: int) -> int:
    """ast's columns count UTF-8 bytes."""
    return len(line.encode("utf-8")[:offset].decode("utf-8", "replace"))


class _Finder:
    def __init__(self, source: str, file: str) -> None:
        self.source = source
        self.lines = _LINES.findall(source)  # once: ast.get_source_segment splits the whole source each call
        self.file = file
        self.found: list[Mutant] = []
        self.scope: list[str] = []
        self.in_function = False

    def run(self, tree: ast.Module) -> list[Mutant]:
        self.body(tree.body)
        return self.found

    # -- walking: scopes, and what is never mutated --------------------------------------------------------

    def body(self, statements: list[ast.stmt]) -> None:
        for i, stmt in enumerate(statements):
            if i == 0 and _is_docstring(stmt):
                continue
            self.statement(stmt)

    def statement(self, node: ast.stmt) -> None:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for expr in [*node.decorator_list, *node.args.defaults, *(d for d in node.args.kw_defaults if d)]:
                self.expression(expr, self._name(node.name))
            self.nested(node.name, node.body, function=True)
            return
        if isinstance(node, ast.ClassDef):
            for expr in [*node.decorator_list, *node.bases, *(k.value for k in node.keywords)]:
                self.expression(expr, self._name(node.name))
            self.nested(node.name, node.body, function=self.in_function)
            return
        if isinstance(node, ast.If) and _names_type_checking(node.test):
            self.body(node.orelse)  # the body runs only for type checkers
            return
        if isinstance(node, ast.Assign) and _assigns_type_checking(node):
            return
        where = self._name(_assigned_name(node)) if not self.scope else ".".join(self.scope)
        if isinstance(node, REMOVABLE) and not (isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)):
            self.add(node, "statement", "pass", where)
        if isinstance(node, ast.AugAssign) and type(node.op) in AUGMENTED:
            swapped = ast.AugAssign(node.target, AUGMENTED[type(node.op)](), node.value)
            self.add(node, "augmented", ast.unparse(swapped), where)
        if isinstance(node, ast.Continue):
            self.add(node, "loop", "break", where)
        elif isinstance(node, ast.Break):
            self.add(node, "loop", "continue", where)
        if isinstance(node, ast.If):
            self.condition(node.test, where)
        for field, value in ast.iter_fields(node):
            if field == "annotation" or field == "returns":
                continue
            if isinstance(value, list) and value and isinstance(value[0], ast.stmt):
                for stmt in value:
                    self.statement(stmt)
            elif isinstance(value, list):
                for item in value:
                    if isinstance(item, ast.AST):
                        self.any(item, where)
            elif isinstance(value, ast.AST):
                self.any(value, where)

    def nested(self, name: str, statements: list[ast.stmt], *, function: bool) -> None:
        outer = self.in_function
        self.scope.append(name)
        self.in_function = function
        self.body(statements)
        self.scope.pop()
        self.in_function = outer

    def any(self, node: ast.AST, where: str) -> None:
        if isinstance(node, ast.expr):
            self.expression(node, where)
        elif isinstance(node, ast.excepthandler):
            for s in node.body:
                self.statement(s)
            if node.type is not None:
                self.expression(node.type, where)
        elif isinstance(node, ast.comprehension):
            self.expression(node.iter, where)
            for test in node.ifs:
                self.condition(test, where)
                self.expression(test, where)
        elif isinstance(node, ast.arguments):
            pass  # a lambda's defaults: none here
        elif isinstance(node, (ast.withitem, ast.keyword, ast.match_case)):
            for child in ast.iter_child_nodes(node):
                self.any(child, where)

    def expression(self, node: ast.expr, where: str) -> None:
        if isinstance(node, ast.JoinedStr):
            for value in node.values:  # the expressions inside an f-string, not its text
                if isinstance(value, ast.FormattedValue):
                    self.expression(value.value, where)
            return
        self.mutate_expression(node, where)
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.comprehension):
                self.any(child, where)
            elif isinstance(child, ast.expr):
                self.expression(child, where)
            elif isinstance(child, ast.keyword):
                self.expression(child.value, where)

    # -- the operators ---------------------------------------------------------------------------------------

    def mutate_expression(self, node: ast.expr, where: str) -> None:
        if isinstance(node, ast.Compare):
            for i, op in enumerate(node.ops):
                ops = list(node.ops)
                ops[i] = COMPARE[type(op)]()
                self.add(node, "compare", ast.unparse(ast.Compare(node.left, ops, node.comparators)), where)
        elif isinstance(node, ast.BoolOp):
            other = ast.Or() if isinstance(node.op, ast.And) else ast.And()
            self.add(node, "boolean", ast.unparse(ast.BoolOp(other, node.values)), where)
        elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
            operand = ast.unparse(node.operand)
            atom = isinstance(node.operand, (ast.Name, ast.Attribute, ast.Call, ast.Subscript, ast.Constant))
            self.add(node, "not", operand if atom else f"({operand})", where)
        elif isinstance(node, ast.BinOp) and type(node.op) in ARITHMETIC:
            swapped = ast.BinOp(node.left, ARITHMETIC[type(node.op)](), node.right)
            self.add(node, "arithmetic", ast.unparse(swapped), where)
        elif isinstance(node, ast.IfExp):
            self.condition(node.test, where)
        elif isinstance(node, ast.Constant):
            self.constant(node, where)

    def condition(self, test: ast.expr, where: str) -> None:
        if isinstance(test, ast.Constant):
            return
        self.add(test, "condition", "True", where)
        self.add(test, "condition", "False", where)

    def constant(self, node: ast.Constant, where: str) -> None:
        value = node.value
        if isinstance(value, bool):
            self.add(node, "constant", repr(not value), where)
        elif isinstance(value, int | float):
            self.add(node, "constant", repr(value + 1), where)
        elif isinstance(value, str) and not any(c.isspace() for c in value):
            self.add(node, "constant", repr("XX" + value + "XX"), where)
        elif isinstance(value, bytes) and not any(chr(c).isspace() for c in value):
            self.add(node, "constant", repr(b"XX" + value + b"XX"), where)

    # -- bookkeeping -----------------------------------------------------------------------------------------

    def add(self, node: ast.AST, operator: str, after: str, where: str) -> None:
        before = self._segment(node) or ast.unparse(node)
        if after == before:
            return
        self.found.append(
            Mutant(
                self.file,
                where,
                operator,
                node.lineno,  # type: ignore[attr-defined]
                node.col_offset,  # type: ignore[attr-defined]
                node.end_lineno,  # type: ignore[attr-defined]
                node.end_col_offset,  # type: ignore[attr-defined]
                before,
                after,
                self.in_function,
            )
        )

    def _segment(self, node: ast.AST) -> str:
        """ast.get_source_segment's text of ``node``, from the lines split once."""
        first, last = node.lineno - 1, node.end_lineno - 1  # type: ignore[attr-defined]
        start, end = node.col_offset, node.end_col_offset  # type: ignore[attr-defined]
        if first == last:
            return self.lines[first].encode()[start:end].decode()
        return "".join(
            [
                self.lines[first].encode()[start:].decode(),
                *self.lines[first + 1 : last],
                self.lines[last].encode()[:end].decode(),
            ]
        )

    def _name(self, name: str | None) -> str:
        return ".".join([*self.scope, name]) if name else (".".join(self.scope) or "<module>")


# Lines as ast counts them (and get_source_segment splits them): only \r\n, \r and \n end one, not \f or \u2028.
_LINES = re.compile(r"[^\r\n]*(?:\r\n|\r|\n)|[^\r\n]+")


def _is_docstring(node: ast.stmt) -> bool:
    return isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)


def _names_type_checking(test: ast.expr) -> bool:
    return isinstance(test, ast.Name) and test.id == "TYPE_CHECKING"


def _assigns_type_checking(node: ast.Assign) -> bool:
    return any(isinstance(t, ast.Name) and t.id == "TYPE_CHECKING" for t in node.targets)


def _assigned_name(node: ast.stmt) -> str | None:
    """The module-level name a statement sets (``CHECK_PEER_UID = ...``), for choosing it with ``only``."""
    targets: list[ast.expr] = []
    if isinstance(node, ast.Assign):
        targets = node.targets
    elif isinstance(node, (ast.AnnAssign, ast.AugAssign)):
        targets = [node.target]
    names = [t.id for t in targets if isinstance(t, ast.Name)]
    return names[0] if names else None
