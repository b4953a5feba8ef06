"""Which ``diffpref`` modules a module can import: the code a stage depends on.

Read from the source, not by importing it: every ``import diffpref...`` / ``from diffpref...``
statement, at module level or inside a function (a lazy import still runs), closed
transitively, with the ``__init__`` of every package on the way (Python runs those too).
Imports under ``if TYPE_CHECKING:`` never run and are left out. Files a module reads from the
package itself (weights, templates) it names in ``PACKAGE_DATA``, paths relative to its folder;
they count as its code. What a module imports by a computed name (the registries of losses,
reward models and backbones) is not seen here: the DAG table adds those per job
(:func:`diffpref.config.dag.plugins`).
"""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

PACKAGE = "diffpref"


def package_dir() -> Path:
    """The ``src/diffpref`` to read: the project's own copy when run from a project root (a
    test's copy of the project, say), else the installed one."""
    here = Path("src", PACKAGE)
    return (
        here.resolve() if (here / "__init__.py").is_file() else Path(__file__).resolve().parents[1]
    )


def module_file(name: str, src: Path) -> Path | None:
    """``diffpref.a.b`` -> ``src/a/b.py`` or ``src/a/b/__init__.py``; None if neither exists."""
    parts = name.split(".")[1:]
    for path in (src.joinpath(*parts).with_suffix(".py"), src.joinpath(*parts, "__init__.py")):
        if parts and path.is_file():
            return path
    return src / "__init__.py" if not parts else None


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _nodes(tree: ast.AST):
    """Every node but those under ``if TYPE_CHECKING:`` (their ``else`` still runs)."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        if isinstance(node, ast.If) and _is_type_checking(node):
            stack.extend(node.orelse)
        else:
            stack.extend(ast.iter_child_nodes(node))


@cache
def imports_of(name: str, src: Path) -> frozenset[str]:
    """The ``diffpref`` modules module ``name`` imports directly."""
    path = module_file(name, src)
    if path is None:
        return frozenset()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in _nodes(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from . import x / from ..a import b
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            found.add(base)
            # `from diffpref.a import b` imports the submodule b when there is one
            found |= {
                f"{base}.{a.name}" for a in node.names if module_file(f"{base}.{a.name}", src)
            }
    return frozenset(m for m in found if m == PACKAGE or m.startswith(PACKAGE + "."))


@cache
def package_data(name: str, src: Path) -> tuple[Path, ...]:
    """The files under the paths module ``name`` lists in ``PACKAGE_DATA``."""
    path = module_file(name, src)
    if path is None:
        return ()
    found: list[Path] = []
    for node in ast.parse(path.read_text(), str(path)).body:
        if not (isinstance(node, ast.Assign) and isinstance(node.value, ast.Tuple | ast.List)):
            continue
        if any(isinstance(t, ast.Name) and t.id == "PACKAGE_DATA" for t in node.targets):
            for item in node.value.elts:
                assert isinstance(item, ast.Constant), f"{path}: PACKAGE_DATA holds literal paths"
                data = path.parent / item.value
                found += (
                    [data]
                    if data.is_file()
                    else sorted(
                        f for f in data.rglob("*") if f.is_file() and "__pycache__" not in f.parts
                    )
                )
    return tuple(found)


def _with_parents(name: str) -> set[str]:
    parts = name.split(".")
    return {".".join(parts[:i]) for i in range(1, len(parts) + 1)}


def closure(roots: list[str] | tuple[str, ...], src: Path | None = None) -> set[str]:
    """Every ``diffpref`` module importing ``roots`` can run (roots and packages included)."""
    src = src or package_dir()
    seen: set[str] = set()
    todo = [m for r in roots for m in _with_parents(r)]
    while todo:
        name = todo.pop()
        if name in seen or module_file(name, src) is None:
            continue
        seen.add(name)
        for m in imports_of(name, src):
            todo.extend(_with_parents(m))
    return seen


def files(modules: set[str], src: Path | None = None) -> list[str]:
    """The modules' source files and package data as project paths (``src/diffpref/...``)."""
    src = src or package_dir()
    out = []
    for m in modules:
        path = module_file(m, src)
        assert path is not None, m
        for f in (path, *package_data(m, src)):
            out.append(Path("src", PACKAGE, f.relative_to(src)).as_posix())
    return sorted(out)


def all_modules(src: Path | None = None) -> list[str]:
    """Every module of the package (what the oracle test edits one at a time)."""
    src = src or package_dir()
    out = []
    for path in sorted(src.rglob("*.py")):
        rel = path.relative_to(src).with_suffix("")
        parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
        out.append(".".join([PACKAGE, *parts]))
    return out
