"""The suite is hermetic: conftest's guard sees a test open what `dvc exp run` rewrites (issue 17, item 7)."""

from __future__ import annotations

import types
from pathlib import Path

import pytest
import yaml

import conftest
from conftest import REPO, WORKSPACE_OUTPUTS


def pipeline_outputs() -> set[str]:
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    return {o if isinstance(o, str) else next(iter(o))
            for stage in stages.values() for kind in ("outs", "metrics", "plots") for o in stage.get(kind, [])}


def test_every_pipeline_output_is_guarded():
    outputs = pipeline_outputs()
    assert {"models/model.pt", "metrics/eval.json"} <= outputs
    unguarded = sorted(o for o in outputs if Path(o).parts[0] not in WORKSPACE_OUTPUTS)
    assert not unguarded, f"add their folders to conftest.WORKSPACE_OUTPUTS: {unguarded}"


@pytest.mark.workspace  # it opens the workspace's params.yaml on purpose
def test_the_guard_sees_an_open_of_the_workspace_params_and_fails_an_unmarked_test(tmp_path):
    assert Path.cwd() == tmp_path  # tests run in their own folder: relative defaults resolve there
    Path("params.yaml").write_text("x: 1\n")
    conftest._opened.clear()
    assert Path("params.yaml").read_text() == "x: 1\n" and conftest._opened == []
    (REPO / "params.yaml").read_bytes()
    assert conftest._opened == [str(REPO / "params.yaml")]
    unmarked = types.SimpleNamespace(get_closest_marker=lambda name: None)
    with pytest.raises(pytest.fail.Exception, match=r"opened the workspace's params\.yaml, which a `dvc exp run` rewrites"):
        conftest._hermetic(unmarked, None)
