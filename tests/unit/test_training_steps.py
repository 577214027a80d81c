"""The named pieces of `fit` (one step, one epoch, validation, the checkpoint) can run on their own
and, strung together by hand, give exactly what `fit` gives."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from test_training import _fit, _params, _same, make_tiny_store

from pathtrail.train import steps
from pathtrail.train.checkpoint_file import read_header
from pathtrail.train.distributed import SINGLE
from pathtrail.train.loop import build_run
from pathtrail.train.resume import read_checkpoint, restore, save_checkpoint


def _run(tmp_path, **overrides):
    store, train, val = make_tiny_store(tmp_path)
    params = _params(tmp_path, **overrides)
    run, _ = build_run(store, train, val, *params, num_classes=2, use_compile=False, fallback_random=True,
                       device=torch.device("cpu"), world=SINGLE)
    return run, (store, train, val), params


def test_epochs_by_hand_equal_fit(tmp_path):
    run, data, params = _run(tmp_path, **{"train.epochs": 2})
    for _ in range(2):
        timing = steps.train_epoch(run, lambda: None, lambda: None)
        assert timing.seen == len(data[1].rows)
        steps.end_epoch(run, timing, *steps.validate(run))
    result = _fit(*data, params)
    assert _same(run.state["best_state"], result.state_dict)
    assert [s["loss"] for s in run.state["steps"]] == [s["loss"] for s in result.steps]
    assert [h["val_auroc"] for h in run.state["history"]] == [h["val_auroc"] for h in result.history]


def test_one_optimizer_step_changes_the_weights_and_returns_the_batch_loss(tmp_path):
    run, _, _ = _run(tmp_path)
    before = {k: v.clone() for k, v in run.net.state_dict().items()}
    x, y, _ = next(iter(run.train_loader))
    value, stop = steps.optimizer_step(run, x, y, do_step=True, stop_flag=0.0)
    assert np.isfinite(value) and value > 0 and stop is False
    assert not _same(before, run.net.state_dict())
    run2, _, _ = _run(tmp_path / "again")
    value2, _ = steps.optimizer_step(run2, x, y, do_step=False, stop_flag=1.0)
    assert value2 == value  # same forward, no step taken
    assert _same(before, run2.net.state_dict())


def test_batch_loss_is_the_weighted_cross_entropy(tmp_path):
    run, _, _ = _run(tmp_path)
    logits = torch.tensor([[2.0, -1.0], [0.5, 0.25], [-3.0, 1.0]])
    y = torch.tensor([0, 1, 1])
    loss, value, stop = steps.batch_loss(run, logits, y, 1.0)
    expected = torch.nn.functional.cross_entropy(logits, y, weight=run.criterion.weight,
                                                 label_smoothing=run.params.label_smoothing)
    assert torch.allclose(loss, expected) and value == float(expected) and stop is True


def _epoch(run):
    timing = steps.train_epoch(run, lambda: None, lambda: None)
    steps.end_epoch(run, timing, *steps.validate(run))


def test_checkpoint_round_trip_restores_the_run(tmp_path):
    """Save after epoch 0, finish the run; a fresh run restored from the file finishes identically
    (the global RNG, which dropout draws from, is part of the checkpoint)."""
    run, _, _ = _run(tmp_path, **{"train.epochs": 2})
    _epoch(run)
    path = tmp_path / "ck.pt"
    save_checkpoint(run, path, "fp")
    _epoch(run)
    fresh, _, _ = _run(tmp_path / "fresh", **{"train.epochs": 2})
    restore(fresh, read_checkpoint(path, "fp", SINGLE).payload)
    assert fresh.state["epoch"] == 1 and fresh.state["steps"] == run.state["steps"][:len(fresh.state["steps"])]
    _epoch(fresh)
    assert _same(fresh.net.state_dict(), run.net.state_dict())
    assert fresh.state["history"][-1]["val_loss"] == run.state["history"][-1]["val_loss"]


@pytest.mark.parametrize("scheduler", ["none", "cosine", "onecycle", "plateau"])
def test_every_scheduler_checkpoints_with_weights_only(tmp_path, scheduler):
    run, _, _ = _run(tmp_path, **{"train.epochs": 2, "train.scheduler": scheduler})
    _epoch(run)
    path = tmp_path / "ck.pt"
    save_checkpoint(run, path, "fp")
    _, payload, _ = read_header(path)
    torch.load(io.BytesIO(payload), weights_only=True)  # raises unless only tensors and plain values
    ck = read_checkpoint(path, "fp", SINGLE)
    assert ck is not None
    fresh, _, _ = _run(tmp_path / "fresh", **{"train.epochs": 2, "train.scheduler": scheduler})
    restore(fresh, ck.payload)
    assert isinstance(fresh.state["best_val_probs"], np.ndarray)
    assert np.array_equal(fresh.state["best_val_probs"], run.state["best_val_probs"])
