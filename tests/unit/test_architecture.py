"""The layout the README's Design section promises: no import cycles, layers, thin stages."""

from __future__ import annotations

import ast

import pytest

from imports_graph import ROOT, SRC, find_cycle, graph, imports_of, package_of

# Which subpackages each one may import (README, "Design"); a package may always import itself.
ALLOWED = {
    "pathtrail": {"core"},  # pathtrail/__init__.py (the version)
    "core": set(),
    "config": {"core"},
    "provenance": {"pathtrail", "core", "config"},
    "data": {"core", "config"},
    "stain": {"pathtrail", "core"},
    "evaluation": {"core", "config", "data"},
    "train": {"core", "config", "data", "evaluation"},
    "card": {"core", "config"},
    "wsi": {"core", "config", "data"},
    "review": {"pathtrail", "core", "config", "card", "provenance", "ensemble"},
    "ensemble": {"core", "config", "evaluation"},
    "pipeline": {"core", "config", "provenance", "data", "stain", "evaluation", "train", "card", "wsi", "ensemble"},
    "inference": {"pathtrail", "core", "config", "provenance", "data", "stain", "evaluation", "train", "card",
                  "pipeline", "review", "wsi"},
    "cli": {"core", "config", "data", "provenance", "review", "inference", "train"},
}
MAX_STAGE_LINES = 40
MAX_MODULE_LINES = 400


def test_the_library_has_no_import_cycle():
    assert find_cycle(graph()) is None


def test_find_cycle_finds_one():
    assert find_cycle({"a": frozenset({"b"}), "b": frozenset({"c"}), "c": frozenset({"a"})}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": frozenset({"b"}), "b": frozenset()}) is None


def test_every_import_follows_the_layers():
    wrong = []
    for module, imported in graph().items():
        pkg = package_of(module)
        assert pkg in ALLOWED, f"{module}: subpackage {pkg!r} is not in the README's map"
        for other in imported:
            if package_of(other) not in ALLOWED[pkg] | {pkg}:
                wrong.append(f"{module} imports {other}")
    assert not wrong, "\n".join(wrong)


def test_the_library_never_imports_stages():
    for path in (SRC / "pathtrail").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = ([node.module or ""] if isinstance(node, ast.ImportFrom)
                     else [a.name for a in node.names] if isinstance(node, ast.Import) else [])
            assert not any(n == "stages" or n.startswith("stages.") for n in names), path


@pytest.mark.parametrize("path", sorted((ROOT / "stages").glob("*.py")), ids=lambda p: p.name)
def test_each_stage_is_a_thin_shim(path):
    lines = path.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= MAX_STAGE_LINES, f"{path.name}: {len(lines)} lines"
    if path.name != "__init__.py":
        pipeline = {m for m in imports_of(path) if m.startswith("pathtrail.pipeline.")} - {"pathtrail.pipeline.stagekit"}
        assert pipeline == {f"pathtrail.pipeline.{path.stem}"}, "a stage calls its own pipeline module only"
        assert all(m.startswith("pathtrail.pipeline") for m in imports_of(path)), "a stage imports nothing else"


def test_no_module_is_too_long():
    long = {p.relative_to(SRC).as_posix(): n for p in (SRC / "pathtrail").rglob("*.py")
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_MODULE_LINES}
    assert not long


def test_package_inits_are_small():
    for init in (SRC / "pathtrail").glob("*/__init__.py"):
        tree = ast.parse(init.read_text(encoding="utf-8"))
        assert ast.get_docstring(tree), f"{init}: states its public API in a docstring"
        assert len(tree.body) <= 4, f"{init}: no re-export walls"
