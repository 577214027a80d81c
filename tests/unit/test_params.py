"""Config: pipelines/ composes to the committed params.yaml; params load strictly."""

from __future__ import annotations

import dataclasses

import pytest
import yaml

from conftest import REPO, tiny_params, write_params
from pathtrail.config.compose import REGENERATE, compose_params
from pathtrail.config.loading import ParamsError, from_dict, load_section
from pathtrail.config.sections import DataParams, EvalParams, ModelParams, StainParams, TrainParams


def test_params_yaml_is_the_composition_of_pipelines():
    composed = compose_params(REPO / "pipelines")
    committed = (REPO / "params.yaml").read_text()
    assert yaml.safe_load(composed) == yaml.safe_load(committed), (
        f"params.yaml is out of date with pipelines/. Regenerate it: {REGENERATE}"
    )
    assert composed == committed, f"params.yaml is not byte-identical to the composition; run {REGENERATE}"


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
