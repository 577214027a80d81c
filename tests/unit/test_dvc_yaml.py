"""dvc.yaml stays honest: each stage depends on exactly the code it runs, derived from the imports."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from imports_graph import reachable, stage_code_deps

ROOT = Path(__file__).resolve().parents[2]
STAGES = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
ALL_CODE = {"stages", "src/pathtrail"}  # the card stage depends on all of it (see dvc.yaml)


def dep_paths(stage: dict) -> set[str]:
    return {d if isinstance(d, str) else next(iter(d)) for d in stage.get("deps", [])}


def code_deps(stage: dict) -> set[str]:
    return {d for d in dep_paths(stage) if d.startswith(("stages", "src/"))}


@pytest.mark.parametrize("name", sorted(set(STAGES) - {"model_card"}))
def test_stage_depends_on_exactly_the_code_it_runs(name):
    stage = STAGES[name]
    assert stage["cmd"] == f"python -m stages.{name}"
    listed, needed = code_deps(stage), stage_code_deps(name)
    assert not needed - listed, f"dvc.yaml stage {name!r} lacks deps on {sorted(needed - listed)}"
    assert not listed - needed, f"dvc.yaml stage {name!r} depends on code it does not use: {sorted(listed - needed)}"
    for dep in listed:
        assert (ROOT / dep).exists(), f"dvc.yaml stage {name!r}: dep {dep} does not exist"


def test_folder_deps_cover_every_module_a_stage_loads():
    """The derivation itself: every file a stage loads lies in one of its code deps."""
    for name in STAGES:
        listed = code_deps(STAGES[name])
        for f in reachable(ROOT / "stages" / f"{name}.py"):
            rel = f.relative_to(ROOT).as_posix()
            if rel.endswith("__init__.py") and rel.count("/") <= 2:
                continue  # stages/__init__.py and the package roots' empty markers
            assert any(rel == d or rel.startswith(d + "/") for d in listed), (name, rel)


def test_the_card_stage_depends_on_all_pipeline_code():
    deps = code_deps(STAGES["model_card"])
    assert ALL_CODE <= deps and "stages/model_card.py" in deps


def test_every_stage_of_the_design_is_chained():
    assert list(STAGES) == ["demo_data", "validate", "split", "stain_fit", "normalize", "train",
                            "compile_check", "evaluate", "model_card"]


def test_a_library_change_reruns_only_the_stages_that_load_it():
    """Example of exactness: the review package (verify) is in no stage's deps but the card's."""
    for name, stage in STAGES.items():
        if name != "model_card":
            assert not any(d.startswith("src/pathtrail/review") for d in code_deps(stage)), name
    assert "src/pathtrail/train" not in code_deps(STAGES["validate"])
