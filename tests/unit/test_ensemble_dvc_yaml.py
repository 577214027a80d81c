"""ensemble/dvc.yaml stays honest (the code deps its stages import) and apart from the main pipeline."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from imports_graph import stage_code_deps

ROOT = Path(__file__).resolve().parents[2]
ENSEMBLE = yaml.safe_load((ROOT / "ensemble/dvc.yaml").read_text())["stages"]
MAIN = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


def body(name: str) -> dict:
    stage = ENSEMBLE[name]
    return stage["do"] if "foreach" in stage else stage


def deps(stage: dict) -> set[str]:
    return {d if isinstance(d, str) else next(iter(d)) for d in stage.get("deps", [])}


def outs(stage: dict) -> set[str]:
    return {o if isinstance(o, str) else next(iter(o)) for o in stage.get("outs", [])}


@pytest.mark.parametrize("name", sorted(ENSEMBLE))
def test_each_stage_runs_from_the_root_and_depends_on_exactly_the_code_it_runs(name):
    stage = body(name)
    assert stage["wdir"] == ".." and stage["cmd"].split()[:3] == ["python", "-m", f"stages.{name}"]
    listed = {d for d in deps(stage) if d.startswith(("stages", "src/"))}
    needed = stage_code_deps(name)
    assert listed == needed, (sorted(needed - listed), sorted(listed - needed))
    for dep in deps(stage):
        assert "${" in dep or (ROOT / dep).exists() or dep.startswith(("data/", "models/", "metrics/")), dep


def test_its_outputs_overlap_none_of_the_main_pipelines():
    main = {o for s in MAIN.values() for o in outs(s)}
    mine = {o.replace("${key}", "x") for n in ENSEMBLE for o in outs(body(n))}
    for a in mine:
        for b in main:
            assert not (a == b or a.startswith(b + "/") or b.startswith(a + "/")), (a, b)


def test_the_members_come_from_the_ensemble_params_and_the_main_models_inputs_are_deps():
    assert ENSEMBLE["ensemble_member"]["foreach"] == "${ensemble.members}"
    member = body("ensemble_member")
    assert {"ensemble/params.yaml": ["ensemble.members.${key}"]} in member["params"]
    assert {"models/model.pt", "metrics/compile_check.json", "models/ensemble/members"} <= deps(body("ensemble"))
