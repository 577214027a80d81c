"""Config: pipelines/ composes to the committed params.yaml; params load strictly."""

from __future__ import annotations

import dataclasses
import shutil
import subprocess

import pytest
import yaml

from conftest import REPO, tiny_params, write_params
from pathtrail.config.compose import REGENERATE, compose_params
from pathtrail.config.loading import ParamsError, from_dict, load_section
from pathtrail.config.sections import DataParams, EvalParams, ModelParams, StainParams, TrainParams


def params_drift(composed: str, workspace: str, committed: str | None) -> str | None:
    """Why params.yaml is not the composition of pipelines/, or None when it is.

    Either the workspace's params.yaml or the committed one must be it, byte for byte: a
    `dvc exp run -S ...` rewrites the workspace's with its overrides (then the committed one still
    is the composition), while an edit of pipelines/ without `make params` leaves neither."""
    texts = [workspace] + ([committed] if committed is not None else [])
    if composed in texts:
        return None
    if any(yaml.safe_load(text) == yaml.safe_load(composed) for text in texts):
        return f"params.yaml is not byte-identical to the composition of pipelines/; regenerate with {REGENERATE}"
    return ("params.yaml is out of date with pipelines/ (neither the workspace's nor the committed one is their "
            f"composition); regenerate with {REGENERATE}")


def committed_file(path: str) -> str | None:
    """The file as HEAD has it (`git show HEAD:path`), or None outside a git checkout."""
    shown = subprocess.run(["git", "-C", str(REPO), "show", f"HEAD:{path}"], capture_output=True, text=True,
                           timeout=60, check=False)
    return shown.stdout if shown.returncode == 0 else None


@pytest.mark.workspace
def test_params_yaml_is_the_composition_of_pipelines():
    problem = params_drift(compose_params(REPO / "pipelines"), (REPO / "params.yaml").read_text(),
                           committed_file("params.yaml"))
    assert problem is None, problem


def test_params_drift_catches_a_pipelines_edit_but_not_an_experiment(tmp_path):
    shutil.copytree(REPO / "pipelines", tmp_path / "pipelines")
    composed = compose_params(tmp_path / "pipelines")
    experiment = compose_params(tmp_path / "pipelines", ["train.epochs=1", "eval.n_bootstrap=100"])
    assert experiment != composed
    assert params_drift(composed, composed, composed) is None
    assert params_drift(composed, experiment, composed) is None  # after `dvc exp run -S ...`
    assert params_drift(composed, composed, None) is None  # no git: the workspace's must be it
    with (tmp_path / "pipelines/config.yaml").open("a") as config:
        config.write("\ndrift_probe:\n  value: 1\n")  # an edit of pipelines/ without `make params`
    edited = compose_params(tmp_path / "pipelines")
    assert yaml.safe_load(edited)["drift_probe"] == {"value": 1}
    for workspace in (composed, experiment):
        problem = params_drift(edited, workspace, composed)
        assert problem is not None and "regenerate with make params" in problem
    assert params_drift(edited, experiment, None) is not None
    reformatted = yaml.safe_dump(yaml.safe_load(composed), sort_keys=True)
    assert "not byte-identical" in params_drift(composed, reformatted, reformatted)


@pytest.mark.parametrize("profile", ["production", "fast", "benchmark"])
def test_every_profile_composes_into_valid_params(profile, tmp_path):
    params = yaml.safe_load(compose_params(REPO / "pipelines", [f"profile={profile}"]))
    path = write_params(tmp_path, params)
    for section, cls in [("data", DataParams), ("stain", StainParams), ("model", ModelParams),
                         ("train", TrainParams), ("eval", EvalParams)]:
        load_section(path, section, cls)
    assert params["profile"]["name"] == profile


def test_production_profile_is_medical_grade():
    params = yaml.safe_load(compose_params(REPO / "pipelines", ["profile=production"]))
    assert params["train"]["deterministic"] is True
    assert params["train"]["grad_clip_norm"] == 1.0
    assert params["stain"]["enable_stain_norm"] is True
    assert params["compile_check"]["enabled"] is True


def test_unknown_key_is_named(repo_params):
    train = dict(repo_params["train"], lerning_rate=0.1)
    with pytest.raises(ParamsError, match=r"train\.lerning_rate"):
        from_dict(TrainParams, train, prefix="train")


def test_missing_key_is_named(repo_params):
    train = dict(repo_params["train"])
    del train["epochs"]
    with pytest.raises(ParamsError, match=r"missing params key 'train\.epochs'"):
        from_dict(TrainParams, train, prefix="train")


def test_nested_unknown_key_is_named(repo_params):
    train = dict(repo_params["train"], early_stopping={"patience": 2, "min_delta": 0.0, "x": 1})
    with pytest.raises(ParamsError, match=r"train\.early_stopping\.x"):
        from_dict(TrainParams, train, prefix="train")


@pytest.mark.parametrize(
    ("key", "value", "match"),
    [
        ("lr", -0.1, r"train\.lr"),
        ("scheduler", "warmup_cosine_v2", r"train\.scheduler"),
        ("accumulation_steps", 0, r"train\.accumulation_steps"),
        ("epochs", "ten", r"train\.epochs"),
        ("distributed", {"nproc_per_node": 4096}, r"train\.distributed\.nproc_per_node"),
        ("amp", "fp8", r"train\.amp"),
    ],
)
def test_bad_train_params_fail_naming_the_key(repo_params, key, value, match):
    with pytest.raises(ParamsError, match=match):
        from_dict(TrainParams, dict(repo_params["train"], **{key: value}), prefix="train")


def test_unknown_architecture_fails_before_training(tmp_path):
    from pathtrail.core.errors import PathTrailError
    from pathtrail.train.models import build_model

    with pytest.raises(PathTrailError, match="unknown model.arch 'resnet9000'"):
        build_model("resnet9000", 2)


def test_params_dataclasses_are_frozen(tmp_path):
    path = write_params(tmp_path, tiny_params(tmp_path))
    train = load_section(path, "train", TrainParams)
    with pytest.raises(dataclasses.FrozenInstanceError):
        train.lr = 1.0  # type: ignore[misc]
