"""dvc.yaml stays honest: each stage depends on every library module its code imports."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
STAGES = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


def library_modules(source: Path, seen: set[str] | None = None) -> set[str]:
    """Repo-relative paths of the pathtrail modules `source` imports, transitively."""
    seen = set() if seen is None else seen
    for node in ast.walk(ast.parse(source.read_text(encoding="utf-8"))):
        names: list[str] = []
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("pathtrail"):
            names = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names if a.name.startswith("pathtrail")]
        for name in names:
            rel = "src/" + name.replace(".", "/") + ".py"
            if (ROOT / rel).is_file() and rel not in seen:
                seen.add(rel)
                library_modules(ROOT / rel, seen)
    return seen


def dep_paths(stage: dict) -> set[str]:
    return {d if isinstance(d, str) else next(iter(d)) for d in stage.get("deps", [])}


@pytest.mark.parametrize("name", sorted(STAGES))
def test_stage_depends_on_the_code_it_runs(name):
    stage = STAGES[name]
    assert stage["cmd"] == f"python -m stages.{name}"
    deps = dep_paths(stage)
    assert f"stages/{name}.py" in deps
    missing = sorted(library_modules(ROOT / "stages" / f"{name}.py") - deps)
    assert not missing, f"dvc.yaml stage {name!r} lacks deps on {missing}"


def test_every_stage_of_the_design_is_chained():
    assert list(STAGES) == ["demo_data", "validate", "split", "stain_fit", "normalize", "train",
                            "compile_check", "evaluate", "model_card"]
