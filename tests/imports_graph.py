"""The import graph of the library and the stages, read from the source (no code is run)."""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"


def module_file(name: str) -> Path | None:
    """The file of module `name` (a package's `__init__.py`), or None outside this repository."""
    base = (SRC if name.split(".")[0] == "pathtrail" else ROOT) / name.replace(".", "/")
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def module_name(path: Path) -> str:
    rel = path.relative_to(SRC if path.is_relative_to(SRC) else ROOT).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


@cache
def imports_of(path: Path) -> frozenset[str]:
    """Every pathtrail module `path` imports anywhere (top level, in functions, for type checking)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if not node.module.startswith("pathtrail"):
                continue
            subs = {f"{node.module}.{a.name}" for a in node.names
                    if module_file(f"{node.module}.{a.name}") is not None}
            found |= subs
            if len(subs) < len(node.names):  # names defined in the module itself
                found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("pathtrail")}
    return frozenset(m for m in found if module_file(m) is not None)


def library_modules() -> list[str]:
    return sorted(module_name(p) for p in (SRC / "pathtrail").rglob("*.py"))


def graph() -> dict[str, frozenset[str]]:
    return {m: imports_of(module_file(m)) for m in library_modules()}


def reachable(path: Path) -> set[Path]:
    """The repository files `path` loads, transitively (itself included)."""
    seen, todo = {path}, [path]
    while todo:
        for name in imports_of(todo.pop()):
            f = module_file(name)
            if f is not None and f not in seen:
                seen.add(f)
                todo.append(f)
    return seen


def find_cycle(edges: dict[str, frozenset[str]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for n in sorted(edges.get(m, ())):
            if state.get(n) == 1:
                return [*stack[stack.index(n):], n]
            if n not in state and (found := visit(n)):
                return found
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(edges):
        if m not in state and (found := visit(m)):
            return found
    return None


def package_of(module: str) -> str:
    """`pathtrail.train.loop` -> `train`; the top-level `pathtrail` module -> `pathtrail`."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def stage_code_deps(stage: str) -> set[str]:
    """What dvc.yaml must list as the code deps of `stage`: its entry point, the pipeline modules it
    runs (as files: each stage has its own), and every other pathtrail subpackage it loads (as
    folders); `src/pathtrail/__init__.py` when it reads the package version. `stages/__init__.py`
    runs first in every stage (it sets the execution contract), so every stage lists it."""
    deps = set()
    package = ROOT / "stages" / "__init__.py"
    for f in reachable(ROOT / "stages" / f"{stage}.py") | reachable(package):
        rel = f.relative_to(ROOT)
        parts = rel.parts
        if parts[0] == "stages" or len(parts) == 3:
            deps.add(rel.as_posix())
        elif parts[2] == "pipeline":
            if rel.name != "__init__.py":
                deps.add(rel.as_posix())
        else:
            deps.add(f"src/pathtrail/{parts[2]}")
    return deps
