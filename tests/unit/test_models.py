"""model.gradient_checkpointing: same results, less activation memory, early failure if unsupported."""

from __future__ import annotations

import sys
import types
import weakref
from collections import OrderedDict

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from conftest import tiny_params, write_params
from pathtrail.config.loading import ParamsError, load_section
from pathtrail.config.sections import ModelParams
from pathtrail.core.errors import PathTrailError
from pathtrail.core.hashing import digest
from pathtrail.train import models, recompute
from pathtrail.train.models import CheckpointedSequential, SmallCNN, build_model


def _grads_after_step(model: nn.Module, x: torch.Tensor, seed: int = 1) -> tuple:
    """Loss, parameter gradients, buffers (BatchNorm statistics) and the RNG state after a step."""
    model.train()
    torch.manual_seed(seed)
    loss = model(x).square().mean()
    loss.backward()
    buffers = {k: v.clone() for k, v in model.named_buffers()}
    return loss.detach(), [p.grad.clone() for p in model.parameters()], buffers, torch.get_rng_state()


def _twin(make, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return make()


def _assert_bitwise_same(a, b) -> None:
    (loss_a, grads_a, buf_a, rng_a), (loss_b, grads_b, buf_b, rng_b) = a, b
    assert torch.equal(loss_a, loss_b)
    assert len(grads_a) == len(grads_b) and all(torch.equal(g, h) for g, h in zip(grads_a, grads_b, strict=True))
    assert buf_a.keys() == buf_b.keys() and all(torch.equal(buf_a[k], buf_b[k]) for k in buf_a)
    assert torch.equal(rng_a, rng_b)  # recomputation leaves the global RNG where it was


def test_small_cnn_checkpointing_is_bitwise_identical_with_dropout():
    x = torch.randn(4, 3, 32, 32)
    plain = _twin(lambda: build_model("small_cnn", 2, 8, 0.5))
    ckpt = _twin(lambda: build_model("small_cnn", 2, 8, 0.5, gradient_checkpointing=True))
    assert isinstance(ckpt, SmallCNN) and ckpt.gradient_checkpointing and not plain.gradient_checkpointing
    assert plain.state_dict().keys() == ckpt.state_dict().keys()  # saved models load either way
    _assert_bitwise_same(_grads_after_step(plain, x), _grads_after_step(ckpt, x))
    ckpt.eval()
    with torch.no_grad():  # inference takes the plain path
        assert torch.equal(plain.eval()(x), ckpt(x))


def _mlp(dropout_cls=nn.Dropout, seq=nn.Sequential) -> nn.Sequential:
    """A vit-like trunk: named blocks with dropout inside the recomputed segments."""
    return seq(OrderedDict(
        (f"block_{i}", nn.Sequential(nn.Linear(16, 16), nn.GELU(), dropout_cls(0.5))) for i in range(3)
    ))


def test_checkpointed_sequential_replays_dropout_masks():
    x = torch.randn(8, 16)
    plain = _twin(_mlp)
    ckpt = _twin(lambda: _mlp(seq=CheckpointedSequential))
    assert plain.state_dict().keys() == ckpt.state_dict().keys()
    _assert_bitwise_same(_grads_after_step(plain, x), _grads_after_step(ckpt, x))


def test_without_rng_preservation_the_gradients_would_differ():
    """Control: the comparison above does see dropout masks that are not replayed."""

    class Unpreserved(nn.Sequential):
        def forward(self, x):
            for m in self:
                x = torch.utils.checkpoint.checkpoint(m, x, use_reentrant=False, preserve_rng_state=False)
            return x

    x = torch.randn(8, 16)
    plain = _grads_after_step(_twin(_mlp), x)[1]
    broken = _grads_after_step(_twin(lambda: _mlp(seq=Unpreserved)), x)[1]
    assert not all(torch.equal(g, h) for g, h in zip(plain, broken, strict=True))


class _LiveBytes(TorchDispatchMode):
    """Peak bytes of live tensor storages created by ops (a CPU stand-in for max_memory_allocated).

    Each new storage is counted when an op returns it and uncounted when it is freed.
    """

    def __init__(self) -> None:
        super().__init__()
        self.live = self.peak = 0
        self._ptrs: set[int] = set()

    def _free(self, ptr: int, n: int) -> None:
        self._ptrs.discard(ptr)
        self.live -= n

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                st = t.untyped_storage()
                ptr = st.data_ptr()
                if ptr and ptr not in self._ptrs:
                    self._ptrs.add(ptr)
                    self.live += st.nbytes()
                    self.peak = max(self.peak, self.live)
                    weakref.finalize(st, self._free, ptr, st.nbytes())
        return out


def _memory(gradient_checkpointing: bool, x: torch.Tensor) -> tuple[int, int, int]:
    """(bytes saved for backward, live bytes after forward, peak live bytes over forward + backward)."""
    model = _twin(lambda: build_model("small_cnn", 2, 8, 0.2, gradient_checkpointing=gradient_checkpointing))
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        st = t.untyped_storage()
        saved[st.data_ptr()] = st.nbytes()
        return t

    with _LiveBytes() as mode:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss = model(x).mean()
        after_forward = mode.live
        loss.backward()
    return sum(saved.values()), after_forward, mode.peak


def test_checkpointing_lowers_activation_memory():
    x = torch.randn(4, 3, 256, 256)
    saved_plain, fwd_plain, peak_plain = _memory(False, x)
    saved_ckpt, fwd_ckpt, peak_ckpt = _memory(True, x)
    first_conv_out = 4 * 8 * 256 * 256 * 4  # bytes of one float32 activation of the first block
    assert fwd_plain >= 2 * first_conv_out  # the counter does see the activations
    # Measured (4x3x256x256, width 8): saved 50.0 -> 6.5 MiB, live after forward 47.0 -> 3.5 MiB,
    # peak over forward + backward 47.6 -> 34.1 MiB (the recomputed first block dominates).
    assert saved_ckpt < 0.25 * saved_plain
    assert fwd_ckpt < 0.25 * fwd_plain
    assert peak_ckpt < 0.8 * peak_plain


def _fake_torchvision(monkeypatch, **builders) -> dict:
    """Install a stand-in `torchvision.models` whose builders record their keyword arguments."""
    calls: dict = {}
    tvm = types.ModuleType("torchvision.models")
    for name, make in builders.items():
        def builder(*, weights=None, num_classes=1000, _name=name, _make=make, **kw):
            calls[_name] = {"weights": weights, "num_classes": num_classes, **kw}
            return _make(num_classes)
        setattr(tvm, name, builder)
    tv = types.ModuleType("torchvision")
    tv.models = tvm
    monkeypatch.setitem(sys.modules, "torchvision", tv)
    monkeypatch.setitem(sys.modules, "torchvision.models", tvm)
    return calls


class _ResNetLike(nn.Module):
    """torchvision's resnet layout: layer1..layer4 are nn.Sequentials of blocks with BatchNorm."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        for i in range(1, 5):
            setattr(self, f"layer{i}", nn.Sequential(
                nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(inplace=True)),
                nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4), nn.Dropout(0.3)),
            ))
        self.fc = nn.Linear(4, num_classes)

    def forward(self, x):
        x = self.stem(x)
        for i in range(1, 5):
            x = getattr(self, f"layer{i}")(x)
        return self.fc(x.mean((2, 3)))


def test_torchvision_resnet_stages_are_checkpointed(monkeypatch):
    _fake_torchvision(monkeypatch, resnet18=_ResNetLike)
    plain = _twin(lambda: build_model("resnet18", 2))
    ckpt = _twin(lambda: build_model("resnet18", 2, gradient_checkpointing=True))
    assert all(type(getattr(ckpt, f"layer{i}")) is CheckpointedSequential for i in range(1, 5))
    assert type(plain.layer1) is nn.Sequential
    assert plain.state_dict().keys() == ckpt.state_dict().keys()
    x = torch.randn(2, 3, 16, 16)
    _assert_bitwise_same(_grads_after_step(plain, x), _grads_after_step(ckpt, x))


def test_recomputed_batchnorm_updates_running_stats_once(monkeypatch):
    _fake_torchvision(monkeypatch, resnet18=_ResNetLike)
    x = torch.randn(2, 3, 16, 16)
    plain = _grads_after_step(_twin(lambda: build_model("resnet18", 2)), x)[2]
    ckpt = _grads_after_step(_twin(lambda: build_model("resnet18", 2, gradient_checkpointing=True)), x)[2]
    assert int(ckpt["layer1.0.1.num_batches_tracked"]) == 1
    assert all(torch.equal(plain[k], ckpt[k]) for k in plain)
    # control: without the guard the recomputation updates them a second time
    monkeypatch.setattr(recompute, "_running_stat_norms", lambda module: [])
    twice = _grads_after_step(_twin(lambda: build_model("resnet18", 2, gradient_checkpointing=True)), x)[2]
    assert int(twice["layer1.0.1.num_batches_tracked"]) == 2
    assert not torch.equal(plain["layer1.0.1.running_mean"], twice["layer1.0.1.running_mean"])


def test_torchvision_vit_encoder_layers_are_checkpointed(monkeypatch):
    def vit(num_classes):
        m = nn.Module()
        m.encoder = nn.Module()
        m.encoder.layers = _mlp()
        return m

    _fake_torchvision(monkeypatch, vit_b_16=vit)
    model = build_model("vit_b_16", 2, gradient_checkpointing=True)
    assert type(model.encoder.layers) is CheckpointedSequential
    assert list(model.encoder.layers.state_dict()) == list(_mlp().state_dict())


def _densenet_like(num_classes: int) -> nn.Module:
    """torchvision's densenet layout: a `features` Sequential whose stem has an in-place ReLU."""
    m = nn.Module()
    m.features = nn.Sequential(OrderedDict([
        ("conv0", nn.Conv2d(3, 4, 3, padding=1)), ("norm0", nn.BatchNorm2d(4)),
        ("relu0", nn.ReLU(inplace=True)), ("pool0", nn.MaxPool2d(2)),
        ("denseblock1", nn.Sequential(nn.BatchNorm2d(4), nn.ReLU(inplace=True), nn.Conv2d(4, 4, 3, padding=1))),
        ("norm5", nn.BatchNorm2d(4)),
    ]))
    m.classifier = nn.Linear(4, num_classes)
    m.forward = lambda x: m.classifier(torch.relu(m.features(x)).mean((2, 3)))
    return m


def test_torchvision_densenet_features_are_checkpointed(monkeypatch):
    calls = _fake_torchvision(monkeypatch, densenet121=_densenet_like)
    plain = _twin(lambda: build_model("densenet121", 3))
    ckpt = _twin(lambda: build_model("densenet121", 3, gradient_checkpointing=True))
    # not torchvision's memory_efficient: it recomputes BatchNorm without restoring its statistics
    assert calls["densenet121"] == {"weights": None, "num_classes": 3}
    assert type(ckpt.features) is CheckpointedSequential
    x = torch.randn(2, 3, 8, 8)
    _assert_bitwise_same(_grads_after_step(plain, x), _grads_after_step(ckpt, x))


def test_unsupported_architecture_fails_before_training(monkeypatch):
    _fake_torchvision(monkeypatch, resnet18=lambda n: nn.Linear(2, n), resnet34=_ResNetLike)
    with pytest.raises(PathTrailError, match=r"model\.gradient_checkpointing.*'resnet18'.*'layer1'"):
        build_model("resnet18", 2, gradient_checkpointing=True)  # torchvision changed its layout
    build_model("resnet18", 2)  # without checkpointing it builds
    monkeypatch.delitem(models.CHECKPOINT_STAGES, "resnet34")
    with pytest.raises(PathTrailError, match=r"model\.gradient_checkpointing.*'resnet34'"):
        build_model("resnet34", 2, gradient_checkpointing=True)


def test_param_is_explicit_in_params(tmp_path, repo_params):
    committed = repo_params["model"]
    assert committed["gradient_checkpointing"] is False
    path = write_params(tmp_path, tiny_params(tmp_path, **{"model.gradient_checkpointing": True}))
    assert load_section(path, "model", ModelParams).gradient_checkpointing is True
    # the model section (hashed into the model metadata and the card) differs with it
    assert digest(committed) != digest(dict(committed, gradient_checkpointing=True))
    path = write_params(tmp_path, tiny_params(tmp_path, **{"model.gradient_checkpointing": "yes"}))
    with pytest.raises(ParamsError, match=r"model\.gradient_checkpointing' must be true or false"):
        load_section(path, "model", ModelParams)
    p = tiny_params(tmp_path)
    del p["model"]["gradient_checkpointing"]
    with pytest.raises(ParamsError, match=r"missing params key 'model\.gradient_checkpointing'"):
        load_section(write_params(tmp_path, p), "model", ModelParams)


@pytest.mark.slow
def test_compiled_checkpointed_small_cnn_matches_eager():
    """torch.compile traces the checkpoints without a graph break (about 20 s on 2 CPU cores)."""
    import torch._inductor.config as inductor_config

    x = torch.randn(4, 3, 32, 32)
    eager = _grads_after_step(_twin(lambda: build_model("small_cnn", 2, 8, 0.0)), x)
    model = _twin(lambda: build_model("small_cnn", 2, 8, 0.0, gradient_checkpointing=True))
    # torch's own patch, never pytest's monkeypatch: its undo deletes a config key of torch's
    # config modules, which breaks every later compile in the process
    with inductor_config.patch(fallback_random=True):
        compiled = _grads_after_step(torch.compile(model), x)
    assert torch.allclose(eager[0], compiled[0], atol=1e-6)
    assert all(torch.allclose(g, h, atol=1e-5) for g, h in zip(eager[1], compiled[1], strict=True))
