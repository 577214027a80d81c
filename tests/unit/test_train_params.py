"""Training params are checked before anything starts, and each error names the key to fix."""

from __future__ import annotations

import pytest

from conftest import tiny_params, write_params
from pathtrail.config import sections as settings
from pathtrail.config.loading import ParamsError, load_section
from pathtrail.config.sections import ModelParams, TrainParams
from pathtrail.provenance.audit import read_entries


def _load(tmp_path, section, cls, **overrides):
    return load_section(write_params(tmp_path, tiny_params(tmp_path, **overrides)), section, cls)


@pytest.mark.parametrize(
    ("key", "value", "match"),
    [
        ("train.lr", 0.0, r"'train\.lr' must be positive, got 0\.0"),
        ("train.lr", -0.01, r"'train\.lr' must be positive"),
        ("train.scheduler", "cosine_warm", r"'train\.scheduler' must be one of 'none', 'cosine'"),
        ("train.accumulation_steps", 0, r"'train\.accumulation_steps' must be >= 1, got 0"),
        ("train.distributed", {"nproc_per_node": 0}, r"'train\.distributed\.nproc_per_node' must be >= 1"),
        ("train.distributed", {"nproc_per_node": 2, "nnodes": 2}, r"train\.distributed\.nnodes"),
    ],
)
def test_bad_train_value_is_rejected_naming_the_key(tmp_path, key, value, match):
    with pytest.raises(ParamsError, match=match):
        _load(tmp_path, "train", TrainParams, **{key: value})


def test_unknown_architecture_is_rejected_at_params_load(tmp_path):
    with pytest.raises(ParamsError, match=r"'model\.arch' is 'resnet9000'.*choose one of: small_cnn, "
                                          r"monai_densenet121, .*, resnet18"):
        _load(tmp_path, "model", ModelParams, **{"model.arch": "resnet9000"})


@pytest.mark.parametrize(("available", "kind"), [((2, "CPUs"), "CPUs"), ((1, "GPUs"), "GPUs")])
def test_more_processes_than_cpus_or_gpus_is_rejected(tmp_path, monkeypatch, available, kind):
    monkeypatch.setattr(settings, "_available_devices", lambda: available)
    with pytest.raises(ParamsError, match=rf"'train\.distributed\.nproc_per_node' is 3, .* only {available[0]} {kind}"):
        _load(tmp_path, "train", TrainParams, **{"train.distributed": {"nproc_per_node": 3}})


def test_available_devices_counts_cpus_without_cuda():
    n, kind = settings._available_devices()
    assert n >= 1 and kind in {"CPUs", "GPUs"}


def test_global_batch_must_divide_among_processes(tmp_path, monkeypatch):
    monkeypatch.setattr(settings, "_available_devices", lambda: (4, "CPUs"))
    with pytest.raises(ParamsError, match=r"'train\.batch_size' is 10, .*nproc_per_node=4 processes.*multiple of 4"):
        _load(tmp_path, "train", TrainParams, **{"train.batch_size": 10, "train.distributed": {"nproc_per_node": 4}})
    ok = _load(tmp_path, "train", TrainParams, **{"train.batch_size": 12, "train.distributed": {"nproc_per_node": 4}})
    assert ok.batch_size == 12


@pytest.mark.parametrize(
    ("key", "value", "named"),
    [("train.lr", 0.0, "train.lr"), ("model.arch", "resnet9000", "model.arch"),
     ("train.distributed", {"nproc_per_node": 4096}, "train.distributed.nproc_per_node")],
)
def test_train_stage_stops_before_training_or_launching(tmp_path, monkeypatch, capsys, key, value, named):
    import stages.train

    params = write_params(tmp_path, tiny_params(tmp_path, **{key: value}))
    monkeypatch.setattr("pathtrail.train.distributed.relaunch", lambda *a: pytest.fail("must not launch"))
    monkeypatch.setattr("pathtrail.pipeline.train.fit", lambda *a, **k: pytest.fail("must not train"))
    with pytest.raises(SystemExit) as exc:
        stages.train.main(["--params", str(params), "--log-file", str(tmp_path / "log.jsonl"),
                           "--trail", str(tmp_path / "trail.jsonl")])
    assert exc.value.code == 1
    assert f"'{named}'" in capsys.readouterr().err
    assert read_entries(tmp_path / "trail.jsonl") == []  # nothing recorded as started
