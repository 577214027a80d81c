"""model.weights_path: local pretrained weights, loaded with weights_only=True, sha256 recorded, and
every file that does not fit refused with what differs."""

from __future__ import annotations

import hashlib

import pytest
import torch
from test_monai_models import TINY
from test_training import _params, make_tiny_store

from conftest import tiny_params, write_params
from pathtrail.config.loading import ParamsError, load_section
from pathtrail.config.sections import DataParams, ModelParams
from pathtrail.core.errors import PathTrailError
from pathtrail.train.inputs import check_model_fits
from pathtrail.train.models import HEADS, build_model
from pathtrail.train.weights import load_local_weights


def _model(arch="monai_resnet18", num_classes=2, seed=0, **kw):
    torch.manual_seed(seed)
    return build_model(arch, num_classes, **{**TINY.get(arch, {"width": 8, "dropout": 0.2}), **kw})


def _load(model, path, arch="monai_resnet18"):
    return load_local_weights(model, path, arch=arch, head=HEADS[arch])


def _same(a, b) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("arch", ["small_cnn", "monai_densenet121", "monai_resnet18", "monai_vit"])
def test_round_trip_loads_every_weight_and_records_the_sha256(tmp_path, arch):
    source = _model(arch, seed=1)
    path = tmp_path / "pretrained.pt"
    torch.save(source.state_dict(), path)
    target = _model(arch, seed=2)
    assert not _same(source.state_dict(), target.state_dict())
    loaded = _load(target, path, arch)
    assert _same(source.state_dict(), target.state_dict())
    assert loaded.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert loaded.loaded == len(source.state_dict()) and loaded.head_kept == []


def test_weights_for_another_number_of_classes_keep_the_new_head(tmp_path):
    """ImageNet-style pretraining: the backbone is loaded, the classifier stays freshly initialised."""
    source = _model(num_classes=5, seed=1)
    torch.save(source.state_dict(), tmp_path / "w.pt")
    target = _model(num_classes=2, seed=2)
    fresh_head = target.fc.weight.clone()
    loaded = _load(target, tmp_path / "w.pt")
    assert loaded.head_kept == ["fc.bias", "fc.weight"]
    assert torch.equal(target.fc.weight, fresh_head)
    assert torch.equal(target.conv1.weight, source.conv1.weight)


def test_model_file_and_ddp_prefixes_are_accepted(tmp_path):
    source = _model(seed=1)
    torch.save({"state_dict": source.state_dict(), "metadata": {"arch": "monai_resnet18"}}, tmp_path / "model.pt")
    torch.save({f"module.{k}": v for k, v in source.state_dict().items()}, tmp_path / "ddp.pt")
    for name in ("model.pt", "ddp.pt"):
        target = _model(seed=2)
        _load(target, tmp_path / name)
        assert _same(source.state_dict(), target.state_dict())


class Payload:
    def __reduce__(self):
        return (print, ("this ran",))


@pytest.mark.parametrize("content, match", [
    (None, r"is not a file \(weights are never downloaded\).*model\.weights_path=null"),
    (b"not a torch file", r"cannot be read with torch\.load\(weights_only=True\) \(\w+\)"),
    ("pickle", r"cannot be read with torch\.load\(weights_only=True\).*never loaded"),
    ([torch.zeros(2)], r"holds no state_dict"),
    ({}, r"holds no state_dict"),
])
def test_unreadable_files_are_refused(tmp_path, capsys, content, match):
    path = tmp_path / "w.pt"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content == "pickle":
        torch.save({"conv1.weight": Payload()}, path)
    elif content is not None:
        torch.save(content, path)
    model = _model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(PathTrailError, match=match):
        _load(model, path)
    assert "this ran" not in capsys.readouterr().out
    assert _same(before, model.state_dict())  # nothing half-loaded


def test_weights_of_another_architecture_or_width_are_refused(tmp_path):
    torch.save(_model("small_cnn").state_dict(), tmp_path / "cnn.pt")
    with pytest.raises(PathTrailError, match=r"does not fit model\.arch='monai_resnet18': \d+ weight\(s\) the model "
                                             r"lacks \(features\.0\.weight.*the file lacks \(bn1\.bias"):
        _load(_model(), tmp_path / "cnn.pt")
    torch.save(_model(width=16).state_dict(), tmp_path / "wide.pt")
    with pytest.raises(PathTrailError, match=r"of another shape \(bn1\.bias: \(16,\) in the file, \(8,\) in the model"):
        _load(_model(width=8), tmp_path / "wide.pt")
    partial = {k: v for k, v in _model().state_dict().items() if not k.startswith("layer4.")}
    torch.save(partial, tmp_path / "partial.pt")
    with pytest.raises(PathTrailError, match=r"\d+ the file lacks \(layer4\."):
        _load(_model(), tmp_path / "partial.pt")


def test_a_missing_weights_file_fails_before_any_work(tmp_path):
    path = write_params(tmp_path, tiny_params(tmp_path, **{"model.weights_path": str(tmp_path / "nope.pt")}))
    model, data = load_section(path, "model", ModelParams), load_section(path, "data", DataParams)
    with pytest.raises(ParamsError, match=r"'model\.weights_path' is .*nope\.pt', which is not a file"):
        check_model_fits(model, data)


def test_training_starts_from_the_weights_and_reports_their_sha256(tmp_path):
    from pathtrail.train.distributed import SINGLE
    from pathtrail.train.loop import build_run

    store, train, val = make_tiny_store(tmp_path)
    source = _model("small_cnn", seed=5)
    torch.save(source.state_dict(), tmp_path / "init.pt")

    def start(**overrides):
        tp, mp, rp = _params(tmp_path, **overrides)
        return build_run(store, train, val, tp, mp, rp, num_classes=2, use_compile=False, fallback_random=True,
                         device=torch.device("cpu"), world=SINGLE)

    plain, none = start()
    warm, sha = start(**{"model.weights_path": str(tmp_path / "init.pt")})
    assert none is None and sha == hashlib.sha256((tmp_path / "init.pt").read_bytes()).hexdigest()
    assert _same(warm.net.state_dict(), source.state_dict())
    assert not _same(plain.net.state_dict(), source.state_dict())


def test_verify_ties_the_cards_initial_weights_sha256_to_the_model_file(tmp_path):
    from pathtrail.review.card_release import training_params_problems
    from pathtrail.train.model_file import write_model

    write_model({}, {"params_sha256": "p" * 64, "local_weights_sha256": "a" * 64}, tmp_path / "model.pt")
    card = {"model": {"training_params_sha256": "p" * 64, "initial_weights_sha256": "a" * 64}, "params": {}}
    assert training_params_problems(card, tmp_path / "model.pt") == []
    card["model"]["initial_weights_sha256"] = "b" * 64
    [problem] = training_params_problems(card, tmp_path / "model.pt")
    assert "model.initial_weights_sha256 = bbbb" in problem and "local_weights_sha256 aaaa" in problem
