"""The train stage with local initial weights and stain augmentation: the weights file is a recorded
input, its sha256 and the augmentation's params reach models/model.pt; weights that do not fit stop it."""

from __future__ import annotations

import hashlib

import pytest
import torch
from test_train_checkpoint_trail import _stage
from test_train_stage import make_inputs, stage_entries

from pathtrail.config.loading import read_params
from pathtrail.config.sections import training_sections
from pathtrail.core.hashing import digest
from pathtrail.train.model_file import read_model
from pathtrail.train.models import build_model


def test_weights_and_stain_augment_are_recorded(tmp_path):
    torch.manual_seed(3)
    (tmp_path / "weights").mkdir()
    torch.save(build_model("small_cnn", 5, 8, 0.2).state_dict(), tmp_path / "weights/cnn.pt")  # 5 classes
    sha = hashlib.sha256((tmp_path / "weights/cnn.pt").read_bytes()).hexdigest()
    stain = {"enabled": True, "sigma_scale": 0.1, "sigma_shift": 0.02}
    params = make_inputs(tmp_path, **{"train.epochs": 1, "model.weights_path": "weights/cnn.pt",
                                      "train.stain_augment": stain})
    out, trail = tmp_path / "out", tmp_path / "trail.jsonl"
    _stage(tmp_path, params, out, trail)
    start, end = stage_entries(trail)
    assert start["inputs"]["weights/cnn.pt"] == sha and end["outcome"] == "ok"
    model, meta = read_model(out / "model.pt")  # rebuilt from the metadata alone
    assert model.head[-1].out_features == 2  # the 5-class head of the file was not taken
    assert meta["local_weights_sha256"] == sha and meta["arch"] == "small_cnn" and "vit" not in meta
    assert meta["params_sha256"] == digest(training_sections(read_params(params)))
    assert training_sections(read_params(params))["train"]["stain_augment"] == stain  # enabled: hashed


def test_a_weights_file_that_does_not_fit_stops_the_stage_before_training(tmp_path):
    torch.save(build_model("small_cnn", 2, 16, 0.2).state_dict(), tmp_path / "wide.pt")  # model.width 8
    params = make_inputs(tmp_path, **{"train.epochs": 1, "model.weights_path": str(tmp_path / "wide.pt")})
    out, trail = tmp_path / "out", tmp_path / "trail.jsonl"
    with pytest.raises(SystemExit) as info:
        _stage(tmp_path, params, out, trail)
    assert info.value.code != 0 and not (out / "model.pt").exists()
    _start, end = stage_entries(trail)
    assert end["outcome"] != "ok" and "does not fit model.arch='small_cnn'" in str(end) and "of another shape" in str(end)
