"""The ensemble's stages refuse what they cannot use before any work, naming the fix."""

from __future__ import annotations

import pytest
import yaml

from conftest import REPO, tiny_params
from pathtrail.core.errors import PathTrailError
from pathtrail.ensemble.params import compose_ensemble, read_ensemble
from pathtrail.pipeline import ensemble, ensemble_member


@pytest.fixture
def ens_params(tmp_path):
    path = tmp_path / "ensemble/params.yaml"
    path.parent.mkdir()
    path.write_text(compose_ensemble("demo", REPO / "pipelines"))
    return path


def test_missing_or_mixed_ensemble_params_name_the_command_that_makes_them(tmp_path, ens_params):
    with pytest.raises(PathTrailError, match="make ensemble-params"):
        read_ensemble(tmp_path / "absent.yaml")
    mixed = tmp_path / "mixed.yaml"
    mixed.write_text(yaml.safe_dump({**yaml.safe_load(ens_params.read_text()), "train": {}}))
    with pytest.raises(PathTrailError, match="the `ensemble` section only"):
        read_ensemble(mixed)
    assert read_ensemble(ens_params)[0].names() == ["cnn", "vit"]


def test_the_ensemble_stage_needs_its_members_and_a_binary_problem(tmp_path, ens_params):
    paths = ensemble.Paths(ensemble_params=str(ens_params), members=str(tmp_path / "members"),
                           main_model=str(tmp_path / "model.pt"), main_compile_check=str(tmp_path / "cc.json"),
                           meta=str(tmp_path / "out/meta.json"), metrics=str(tmp_path / "out/m.json"),
                           predictions=str(tmp_path / "out/pred"), card=str(tmp_path / "out/card"))
    with pytest.raises(PathTrailError, match=r"missing .*model\.pt.*members/vit/model\.pt.*dvc repro ensemble"):
        ensemble.run(tiny_params(tmp_path), paths)
    three = tiny_params(tmp_path, **{"data.classes": ["a", "b", "c"], "data.label_mode": "multiclass"})
    with pytest.raises(PathTrailError, match="binary problems only"):
        ensemble.run(three, paths)
    assert not (tmp_path / "out").exists()


def test_a_member_stage_needs_a_known_member(tmp_path, ens_params):
    params = tiny_params(tmp_path)
    with pytest.raises(PathTrailError, match="--member NAME"):
        ensemble_member.run(params, ensemble_member.Paths(ensemble_params=str(ens_params)))
    with pytest.raises(PathTrailError, match="not a trained member.*vit"):
        ensemble_member.run(params, ensemble_member.Paths(member="cnn", ensemble_params=str(ens_params)))
