"""The house stays easy to read: no import circles inside the package, and units a reader can hold."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "torch_label_mae"
MAX_FUNCTION_LINES = 80
MAX_CLASS_LINES = 250


def imports_of(path: Path) -> set[str]:
    """The package modules ``path`` imports (``from .x import``, ``from . import x``), at any depth."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            if node.module:
                found.add(node.module.split(".")[0])
            else:
                found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("torch_label_mae."):
            found.add(node.module.split(".")[1])
    return found


def test_the_import_graph_has_no_cycle():
    graph = {p.stem: imports_of(p) for p in PACKAGE.glob("*.py")}
    state: dict[str, str] = {}

    def visit(m: str, path: list[str]) -> None:
        state[m] = "open"
        for n in sorted(graph.get(m, ())):
            if n not in graph:
                continue
            assert state.get(n) != "open", "import circle: " + " -> ".join([*path, m, n])
            if n not in state:
                visit(n, [*path, m])
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m, [])


def test_every_module_imports():
    import importlib

    for p in sorted(PACKAGE.glob("*.py")):
        if p.stem != "__main__":  # runs the CLI
            importlib.import_module(f"torch_label_mae.{p.stem}")


def test_no_unit_is_too_long():
    long = []
    for p in sorted(PACKAGE.glob("*.py")):
        for node in ast.walk(ast.parse(p.read_text())):
            limit = MAX_CLASS_LINES if isinstance(node, ast.ClassDef) else MAX_FUNCTION_LINES
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                n = node.end_lineno - node.lineno + 1
                if n > limit:
                    long.append(f"{p.name}:{node.lineno} {node.name} ({n} lines > {limit})")
    assert not long, long


WRITERS = {"save", "save_file", "write_text", "write_bytes"}  # PIL / safetensors / torch / pathlib writes
OPEN_TO_WRITE = {  # the writes that are not whole files, by the function that makes them
    ("train.py", "_open_log"),  # the training log, appended line by line
    ("outputs.py", "_write_new"),  # a lock, created with O_EXCL
    ("cli.py", "main"),  # os.devnull over a closed stdout
    ("io.py", "atomic_write"),  # its temp file, reopened to flush it to disk
}


def _functions_of(tree: ast.AST) -> dict[int, str]:
    """``id(node) -> the name of the innermost function holding it``, for every node of ``tree``."""
    owner: dict[int, str] = {}

    def visit(node: ast.AST, name: str) -> None:
        for child in ast.iter_child_nodes(node):
            inner = child.name if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)) else name
            owner[id(child)] = inner
            visit(child, inner)

    visit(tree, "<module>")
    return owner


def test_every_file_the_package_writes_goes_through_atomic_write():
    """A file is written whole or not at all: each writer call is the body of ``lambda tmp: ...`` handed
    to ``atomic_write`` (which renames the temp file over the target), so a kill leaves no half file; the
    few files opened to write otherwise (a log, a lock) are named here by the function that opens them."""
    stray, opened = [], set()
    for path in sorted(PACKAGE.glob("*.py")):
        tree = ast.parse(path.read_text())
        owner, safe = _functions_of(tree), set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "atomic_write":
                for arg in node.args[1:]:
                    if isinstance(arg, ast.Lambda) and [a.arg for a in arg.args.args][:1] == ["tmp"]:
                        safe.update(id(n) for n in ast.walk(arg.body))
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            name = getattr(node.func, "attr", None) or getattr(node.func, "id", None)
            if name in WRITERS and id(node) not in safe:
                stray.append(f"{path.name}:{node.lineno} {ast.unparse(node.func)}")
            if name in ("open", "fdopen") and _opens_to_write(node):
                opened.add((path.name, owner[id(node)]))
    assert stray == [], f"writes outside atomic_write: {stray}"
    assert opened <= OPEN_TO_WRITE, f"files opened to write: {sorted(opened - OPEN_TO_WRITE)}"


def _opens_to_write(call: ast.Call) -> bool:
    """``open(path, "w"/"a"/"x"...)``, ``path.open("a")``, ``os.fdopen(fd, "w")`` or ``os.open(..., O_WRONLY /
    O_RDWR ...)``."""
    args = [a for a in call.args if isinstance(a, ast.Constant) and isinstance(a.value, str)]
    if any(set(a.value) & set("wax+") for a in args):
        return True
    return any("O_WRONLY" in ast.unparse(a) or "O_RDWR" in ast.unparse(a) for a in call.args)
