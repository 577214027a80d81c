"""MONAI's networks in the model registry: each builds, trains, recomputes bitwise and refuses bad
params clearly; nothing is downloaded."""

from __future__ import annotations

import subprocess
import sys
import urllib.request

import pytest
import torch
import yaml
from test_models import _twin
from test_training import _fit, _params, make_tiny_store

from conftest import REPO, tiny_params, write_params
from pathtrail.config.compose import compose_params
from pathtrail.config.loading import ParamsError, load_section
from pathtrail.config.sections import (
    ARCHITECTURES,
    MONAI_ARCHS,
    TORCHVISION_ARCHS,
    DataParams,
    ModelParams,
)
from pathtrail.core.errors import PathTrailError
from pathtrail.train.inputs import check_model_fits
from pathtrail.train.model_file import read_model, write_model
from pathtrail.train.models import HEADS, CheckpointedSequential, build_model

VIT = {"image_size": 32, "patch_size": 8, "num_layers": 2, "num_heads": 2, "mlp_ratio": 2}
# tiny sizes: each builds in well under a second and takes 32-px patches
TINY = {"monai_densenet121": {"width": 8, "dropout": 0.2}, "monai_resnet18": {"width": 8, "dropout": 0.0},
        "monai_resnet34": {"width": 4, "dropout": 0.0}, "monai_resnet50": {"width": 4, "dropout": 0.0},
        "monai_vit": {"width": 16, "dropout": 0.2, "vit": VIT}}


def _build(arch: str, num_classes: int = 2, **kw) -> torch.nn.Module:
    return build_model(arch, num_classes, **{**TINY[arch], **kw})


def test_every_monai_arch_has_a_tiny_size_and_a_head():
    assert set(TINY) == set(MONAI_ARCHS) and set(MONAI_ARCHS) <= set(ARCHITECTURES)
    for arch in MONAI_ARCHS:
        keys = _build(arch).state_dict()
        assert any(k.startswith(HEADS[arch]) for k in keys), arch


@pytest.mark.parametrize("arch", MONAI_ARCHS)
def test_monai_arch_trains_a_step(arch):
    torch.manual_seed(0)
    model = _build(arch, num_classes=3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 1])
    model.train()
    logits = model(x)
    assert logits.shape == (4, 3)  # plain logits (the ViT's hidden states and Tanh are not returned)
    loss = torch.nn.functional.cross_entropy(logits, y)
    loss.backward()
    opt.step()
    assert torch.isfinite(loss)
    changed = [k for k, v in model.state_dict().items() if v.is_floating_point() and not torch.equal(v, before[k])]
    assert any(k.startswith(HEADS[arch]) for k in changed) and len(changed) > 4


# DenseNet-121's 120 layers make its runs the slow ones (about 60 s for this one on 2 busy cores)
SLOW_DENSENET = pytest.param("monai_densenet121", marks=pytest.mark.slow)


@pytest.mark.parametrize("arch", [SLOW_DENSENET, "monai_resnet18", "monai_vit"])
def test_monai_arch_runs_through_fit(arch, tmp_path):
    """One epoch of the real training loop (keyed loaders, validation, best-state) on 32-px patches."""
    store, train, val = make_tiny_store(tmp_path)
    over = {f"model.{k}": v for k, v in TINY[arch].items()}
    params = _params(tmp_path, **{"model.arch": arch, **over, "train.epochs": 1})
    result = _fit(store, train, val, params)
    assert result.epochs_run == 1 and result.val_probs.shape == (16, 2)
    assert set(result.state_dict) == set(_build(arch).state_dict())


def _step(model: torch.nn.Module, x: torch.Tensor) -> tuple:
    """`test_models._grads_after_step`, with parameters that get no gradient (the ViT blocks'
    unused cross-attention norms) as None."""
    model.train()
    torch.manual_seed(1)
    loss = model(x).square().mean()
    loss.backward()
    grads = [None if p.grad is None else p.grad.clone() for p in model.parameters()]
    return loss.detach(), grads, {k: v.clone() for k, v in model.named_buffers()}, torch.get_rng_state()


@pytest.mark.parametrize("arch", [SLOW_DENSENET, "monai_resnet18", "monai_vit"])
def test_monai_gradient_checkpointing_is_bitwise_identical(arch):
    """DenseNet's and ResNet's stages (BatchNorm statistics kept once), the ViT's blocks (dropout replayed)."""
    x = torch.randn(2, 3, 32, 32)
    plain = _step(_twin(lambda: _build(arch)), x)
    ckpt_model = _twin(lambda: _build(arch, gradient_checkpointing=True))
    ckpt = _step(ckpt_model, x)
    assert torch.equal(plain[0], ckpt[0]) and torch.equal(plain[3], ckpt[3])
    assert all((g is None and h is None) or torch.equal(g, h) for g, h in zip(plain[1], ckpt[1], strict=True))
    assert sum(g is not None for g in plain[1]) > 10
    assert plain[2].keys() == ckpt[2].keys() and all(torch.equal(plain[2][k], ckpt[2][k]) for k in plain[2])
    assert _build(arch).state_dict().keys() == ckpt_model.state_dict().keys()
    assert getattr(ckpt_model, "gradient_checkpointing", False) or any(
        isinstance(m, CheckpointedSequential) for m in ckpt_model.modules())  # it did recompute


def test_vit_forward_is_monais():
    """Our ViT forward (logits only, optional recomputation) computes what MONAI's own forward does."""
    from monai.networks.nets import ViT

    ours = _build("monai_vit").eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        logits, hidden = ViT.forward(ours, x)  # MONAI's own forward, on the same module
        assert torch.equal(ours(x), logits) and len(hidden) == VIT["num_layers"]


def test_vit_refuses_another_image_size():
    with pytest.raises(PathTrailError, match=r"built for 32-px patches.*model\.vit\.image_size"):
        _build("monai_vit")(torch.randn(1, 3, 64, 64))


def _sections(tmp_path, **overrides) -> tuple[ModelParams, DataParams]:
    path = write_params(tmp_path, tiny_params(tmp_path, **overrides))
    return load_section(path, "model", ModelParams), load_section(path, "data", DataParams)


def test_vit_image_size_must_be_the_patch_size(tmp_path):
    vit = {**VIT, "image_size": 64}
    model, data = _sections(tmp_path, **{"model.arch": "monai_vit", "model.width": 16, "model.vit": vit,
                                         "data.patch_size": 64})
    check_model_fits(model, data)
    model, data = _sections(tmp_path, **{"model.arch": "monai_vit", "model.width": 16, "model.vit": vit,
                                         "data.patch_size": 224})
    with pytest.raises(ParamsError, match=r"model\.vit\.image_size' is 64 but data\.patch_size is 224.*=224"):
        check_model_fits(model, data)


@pytest.mark.parametrize("overrides, match", [
    ({"model.vit": {**VIT, "patch_size": 5}}, r"model\.vit\.patch_size' is 5, which must divide .*image_size=32"),
    ({"model.vit": {**VIT, "num_heads": 3}}, r"model\.vit\.num_heads' is 3, which must divide model\.width=16"),
    ({"model.vit": None}, r"model\.vit' is missing.*-S model=monai_vit"),
    ({"model.vit": {**VIT, "depth": 2}}, r"unknown params key\(s\) 'model\.vit\.depth'"),
    ({"model.arch": "monai_resnet18", "model.dropout": 0.2, "model.vit": None},
     r"model\.dropout' must be 0 for monai_resnet18"),
    ({"model.arch": "small_cnn"}, r"model\.vit' is only used by model\.arch=monai_vit"),
    ({"model.arch": "monai_densenet", "model.vit": None}, r"monai_densenet121, monai_resnet18.*monai_vit"),
])
def test_bad_monai_params_fail_naming_the_key(tmp_path, overrides, match):
    base = {"model.arch": "monai_vit", "model.width": 16, "model.dropout": 0.0, "model.vit": VIT}
    with pytest.raises(ParamsError, match=match):
        _sections(tmp_path, **{**base, **overrides})


def test_unknown_arch_lists_every_name():
    with pytest.raises(PathTrailError, match="unknown model.arch 'densenet'") as info:
        build_model("densenet", 2)
    assert all(name in str(info.value) for name in ARCHITECTURES)


def test_building_downloads_nothing(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a download was attempted")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)
    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    for arch in MONAI_ARCHS:
        _build(arch)


def test_model_file_rebuilds_a_vit(tmp_path):
    model = _build("monai_vit").eval()
    meta = {"arch": "monai_vit", "num_classes": 2, "width": 16, "dropout": 0.2, "vit": VIT}
    write_model(model.state_dict(), meta, tmp_path / "model.pt")
    again, _ = read_model(tmp_path / "model.pt")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), again(x))


@pytest.mark.slow  # a fresh interpreter importing torch: 3 s on an idle machine, 10 s on a busy one
def test_small_cnn_does_not_import_monai():
    """The demo never pays for importing monai (it is imported when a MONAI network is built)."""
    code = ("import sys; from pathtrail.train.models import build_model; build_model('small_cnn', 2, 8); "
            "assert 'monai' not in sys.modules, 'monai imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("group", sorted(p.stem for p in (REPO / "pipelines" / "model").glob("*.yaml")))
def test_every_model_config_composes_and_builds_for_the_demo_patches(group, tmp_path):
    """`-S model=<group>` gives valid params whose network takes the data's patches."""
    params = yaml.safe_load(compose_params(REPO / "pipelines", [f"model={group}"]))
    path = write_params(tmp_path, params)
    model, data = load_section(path, "model", ModelParams), load_section(path, "data", DataParams)
    check_model_fits(model, data)
    assert model.arch == group and model.weights_path is None
    net = build_model(model.arch, len(data.classes), model.width, model.dropout, vit=model.vit).eval()
    with torch.no_grad():
        assert net(torch.zeros(2, 3, data.patch_size, data.patch_size)).shape == (2, len(data.classes))


def test_the_vit_config_follows_the_patch_size():
    params = yaml.safe_load(compose_params(REPO / "pipelines", ["model=monai_vit", "data.patch_size=224"]))
    assert params["model"]["vit"]["image_size"] == 224


@pytest.mark.parametrize("arch", [a if a != "vit_b_16" else pytest.param(a, marks=pytest.mark.slow)
                                  for a in TORCHVISION_ARCHS])
def test_torchvision_arch_trains_a_step_when_installed(arch, monkeypatch):
    """torchvision's names keep working beside MONAI's (a GPU user installs it: README, "GPU users")."""
    pytest.importorskip("torchvision")
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", lambda *a, **k: pytest.fail("a download"))
    torch.manual_seed(0)
    model = build_model(arch, 2)
    size = 224 if arch == "vit_b_16" else 32  # torchvision's ViT takes its own image size only
    loss = torch.nn.functional.cross_entropy(model(torch.randn(2, 3, size, size)), torch.tensor([0, 1]))
    loss.backward()
    assert torch.isfinite(loss)
    assert any(k.startswith(HEADS[arch]) for k in model.state_dict())


def test_a_torchvision_that_does_not_load_is_reported(monkeypatch):
    """PyPI's torchvision beside the +cpu torch fails at import with a RuntimeError, not an ImportError."""
    import builtins

    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name.startswith("torchvision"):
            raise RuntimeError("operator torchvision::nms does not exist")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(PathTrailError, match=r"torchvision is installed but does not load with torch .*"
                                             r"torchvision::nms does not exist.*built for this torch"):
        build_model("resnet18", 2)
