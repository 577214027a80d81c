"""Training: bitwise determinism, independence from num_workers, exact resume after interruption."""

from __future__ import annotations

import signal

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import tiny_params, write_params
from pathtrail.config.loading import load_section
from pathtrail.config.sections import ModelParams, RuntimeParams, TrainParams
from pathtrail.data.loaders import KeyedBatchSampler, PatchDataset
from pathtrail.data.store import StoreWriter, open_store
from pathtrail.train.loop import Split, class_weights, fit
from pathtrail.train.steps import Interrupted


@pytest.fixture
def tiny_store(tmp_path):
    return make_tiny_store(tmp_path)


def make_tiny_store(tmp_path):
    """48 patches of 32x32: class 1 has a dark blob, class 0 is flat pink with noise."""
    rng = np.random.default_rng(0)
    n = 48
    labels = np.arange(n) % 2
    imgs = rng.integers(180, 230, size=(n, 32, 32, 3), dtype=np.uint8)
    imgs[labels == 1, 8:20, 8:20] = rng.integers(40, 90, size=(int(labels.sum()), 12, 12, 3), dtype=np.uint8)
    writer = StoreWriter(tmp_path / "store", shard_size=20, patch_shape=(32, 32, 3))
    writer.add(imgs, pd.DataFrame({"path": [f"p{i:03d}.png" for i in range(n)], "label": labels}))
    writer.close()
    store = open_store(tmp_path / "store")
    train = Split(np.arange(32), labels[:32])
    val = Split(np.arange(32, 48), labels[32:])
    return store, train, val


def _params(tmp_path, **overrides):
    overrides = {"train.epochs": 3, "train.batch_size": 8, "model.width": 8, **overrides}
    path = write_params(tmp_path, tiny_params(tmp_path, **overrides))
    return (load_section(path, "train", TrainParams), load_section(path, "model", ModelParams),
            load_section(path, "runtime", RuntimeParams))


def _fit(store, train, val, params, **kw):
    return fit(store, train, val, *params, num_classes=2, fingerprint="f", **kw)


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_same_seed_gives_bitwise_identical_weights(tiny_store, tmp_path):
    params = _params(tmp_path)
    a, b = _fit(*tiny_store, params), _fit(*tiny_store, params)
    assert _same(a.state_dict, b.state_dict)
    assert [s["loss"] for s in a.steps] == [s["loss"] for s in b.steps]


def test_gradient_checkpointing_gives_bitwise_identical_training(tiny_store, tmp_path):
    """Recomputation in backward changes memory, not results (dropout 0.5: its masks must replay)."""
    plain = _fit(*tiny_store, _params(tmp_path, **{"train.epochs": 1, "model.dropout": 0.5}))
    ckpt = _fit(*tiny_store, _params(tmp_path, **{"train.epochs": 1, "model.dropout": 0.5,
                                                  "model.gradient_checkpointing": True}))
    assert _same(plain.state_dict, ckpt.state_dict)
    assert [s["loss"] for s in plain.steps] == [s["loss"] for s in ckpt.steps]
    assert np.array_equal(plain.val_probs, ckpt.val_probs)


def test_other_seed_gives_other_weights(tiny_store, tmp_path):
    a = _fit(*tiny_store, _params(tmp_path))
    b = _fit(*tiny_store, _params(tmp_path, **{"train.seed": 43}))
    assert not _same(a.state_dict, b.state_dict)


# train.stain_augment on (strong, so that it surely changes the batches) keeps the same guarantees
STAIN_ON = {"train.stain_augment": {"enabled": True, "sigma_scale": 0.2, "sigma_shift": 0.05}}
STAIN = pytest.mark.parametrize("stain", [{}, STAIN_ON], ids=["stain_augment_off", "stain_augment_on"])


@STAIN
def test_weights_do_not_depend_on_num_workers(tiny_store, tmp_path, stain):
    a = _fit(*tiny_store, _params(tmp_path, **stain))
    b = _fit(*tiny_store, _params(tmp_path, **stain, **{"runtime.num_workers": 2, "runtime.persistent_workers": True}))
    assert _same(a.state_dict, b.state_dict)
    if stain:  # the augmentation did change the training
        assert not _same(a.state_dict, _fit(*tiny_store, _params(tmp_path)).state_dict)


@STAIN
def test_interrupted_run_resumes_bitwise_identical(tiny_store, tmp_path, monkeypatch, stain):
    params = _params(tmp_path, **stain)
    reference = _fit(*tiny_store, params)
    ckpt = tmp_path / "ckpt" / "last.pt"
    calls = {"n": 0}
    original = PatchDataset.__getitem__

    def interrupting(self, key):
        calls["n"] += 1
        if calls["n"] == 45:  # mid-epoch 1 (32 train + 16 val per epoch)
            signal.raise_signal(signal.SIGTERM)
        return original(self, key)

    monkeypatch.setattr(PatchDataset, "__getitem__", interrupting)
    with pytest.raises(Interrupted, match="checkpoint saved"):
        _fit(*tiny_store, params, checkpoint=ckpt)
    assert ckpt.is_file()
    monkeypatch.setattr(PatchDataset, "__getitem__", original)
    resumed = _fit(*tiny_store, params, checkpoint=ckpt)
    assert resumed.resumed_from == 1
    assert _same(reference.state_dict, resumed.state_dict)
    assert [s["loss"] for s in reference.steps] == [s["loss"] for s in resumed.steps]


def test_stop_mid_window_finishes_the_window_and_resumes_bitwise(tiny_store, tmp_path, monkeypatch):
    """accumulation_steps=2 with bf16 autocast; SIGTERM while the first micro-batch of epoch 1's first
    window loads: the run finishes that window (one optimizer step), checkpoints at batch 2, exits;
    the resumed run ends on the uninterrupted run's weights (the partial gradient is never lost)."""
    params = _params(tmp_path, **{"train.accumulation_steps": 2, "train.amp": "bf16", "train.epochs": 2})
    reference = _fit(*tiny_store, params)
    ckpt = tmp_path / "ckpt" / "last.pt"
    calls = {"n": 0}
    original = PatchDataset.__getitem__

    def interrupting(self, key):
        calls["n"] += 1
        if calls["n"] == 50:  # epoch 0 loads 32 + 16 items; item 50 is in epoch 1's micro-batch 0
            signal.raise_signal(signal.SIGTERM)
        return original(self, key)

    monkeypatch.setattr(PatchDataset, "__getitem__", interrupting)
    with pytest.raises(Interrupted, match=r"at epoch 1, batch 2 \(an optimizer-step boundary\)"):
        _fit(*tiny_store, params, checkpoint=ckpt)
    assert calls["n"] == 48 + 16  # micro-batch 1 was loaded too: the window was finished
    monkeypatch.setattr(PatchDataset, "__getitem__", original)
    resumed = _fit(*tiny_store, params, checkpoint=ckpt)
    assert resumed.resumed_from == 1
    assert _same(reference.state_dict, resumed.state_dict)
    assert [s["loss"] for s in reference.steps] == [s["loss"] for s in resumed.steps]
    assert np.array_equal(reference.val_probs, resumed.val_probs)


def test_checkpoint_from_other_params_is_not_resumed(tiny_store, tmp_path):
    params = _params(tmp_path, **{"train.checkpoint_every": 1})
    ckpt = tmp_path / "last.pt"
    fit(*tiny_store, *params, num_classes=2, fingerprint="old", checkpoint=ckpt)
    assert ckpt.is_file()  # epochs 1..2 checkpoints remain until the stage removes it
    result = fit(*tiny_store, *params, num_classes=2, fingerprint="new", checkpoint=ckpt)
    assert result.resumed_from is None


def test_class_weights_handle_missing_and_extreme_classes():
    w = class_weights(np.array([0] * 999 + [1]), 3)
    assert torch.isfinite(w).all() and (w > 0).all()
    assert w[1] > w[0] and w.max() / w.min() <= 100.0 + 1e-6


def test_sampler_covers_every_sample_once_across_ranks():
    seen = []
    for rank in range(3):
        s = KeyedBatchSampler(10, 4, seed=1, shuffle=True, rank=rank, world=3)
        s.set_epoch(2)
        seen += [i for batch in s for _, i in batch]
    assert sorted(set(seen)) == list(range(10)) and len(seen) == 12  # padded with 2 repeats


def test_bf16_autocast_trains_on_cpu(tiny_store, tmp_path):
    result = _fit(*tiny_store, _params(tmp_path, **{"train.amp": "bf16", "train.epochs": 1}))
    assert np.isfinite([s["loss"] for s in result.steps]).all()


@pytest.mark.parametrize("scheduler", ["onecycle", "plateau", "none"])
def test_schedulers_and_accumulation_run(tiny_store, tmp_path, scheduler):
    params = _params(tmp_path, **{"train.scheduler": scheduler, "train.accumulation_steps": 2,
                                  "train.label_smoothing": 0.1, "train.epochs": 2})
    result = _fit(*tiny_store, params)
    assert result.epochs_run == 2 and np.isfinite(result.best_val_loss)
