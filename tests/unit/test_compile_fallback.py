"""torch.compile failing after the first step (a recompile for the smaller last batch) falls back
to eager for the rest of the run, recorded, and a resumed run keeps to eager."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch._dynamo
from test_training import _params, make_tiny_store

from pathtrail.train import steps
from pathtrail.train.distributed import SINGLE
from pathtrail.train.loop import build_run
from pathtrail.train.resume import read_checkpoint, restore, save_checkpoint


def _run(tmp_path, params, use_compile=True):
    store, train, val = make_tiny_store(tmp_path)
    run, _ = build_run(store, train, val, *params, num_classes=2, use_compile=use_compile, fallback_random=True,
                       device=torch.device("cpu"), world=SINGLE)
    return run


@pytest.mark.slow
def test_a_recompile_failure_at_a_later_step_falls_back_to_eager_and_is_recorded(tmp_path):
    # 32 training patches in batches of 12: 12, 12, 8. The last, smaller batch makes dynamo recompile;
    # `error_on_recompile` turns that recompile into a real dynamo error at step 2. (torch's own
    # config patch: pytest's monkeypatch would delete the key on undo, breaking later compiles.)
    torch._dynamo.reset()
    with torch._dynamo.config.patch(error_on_recompile=True):
        _recompile_failure_falls_back(tmp_path)
    torch._dynamo.reset()


def _recompile_failure_falls_back(tmp_path):
    params = _params(tmp_path, **{"train.batch_size": 12, "train.epochs": 2, "train.use_compile": True})
    run = _run(tmp_path, params)
    timing = steps.train_epoch(run, lambda: None, lambda: None)
    info = run.compile_info
    assert info["used"] is True and info["eager_from_step"] == 2, info
    assert info["error"].startswith("RecompileError")
    assert run.core is run.net and timing.seen == 32
    assert np.isfinite([s["loss"] for s in run.state["steps"]]).all() and len(run.state["steps"]) == 3
    steps.end_epoch(run, timing, *steps.validate(run))  # validation runs eagerly too (no recompile)
    path = tmp_path / "ck.pt"
    save_checkpoint(run, path, "fp")
    fresh = _run(tmp_path / "fresh", params)
    assert fresh.core is not fresh.net
    restore(fresh, read_checkpoint(path, "fp", SINGLE).payload)
    assert fresh.core is fresh.net and fresh.compile_info["eager_from_step"] == 2


def test_a_real_error_in_a_later_compiled_step_is_not_swallowed(tmp_path):
    """Only compile errors fall back after the first step: a bad batch still raises. (The step
    logic is the same with the plain module in place of the compiled one, so no compile is needed.)"""
    run = _run(tmp_path, _params(tmp_path), use_compile=False)
    run.compile_info["used"] = True  # as after a first compiled step
    x, y, _ = next(iter(run.train_loader))
    with pytest.raises(IndexError):  # label 5 with 2 classes: a real error, not a compile one
        steps.compiled_step(run, x, torch.full_like(y, 5), do_step=True, stop_flag=0.0)
    assert "eager_from_step" not in run.compile_info and "error" not in run.compile_info
    run.compile_info["used"] = False  # the first step falls back on any error, and redoes it eagerly
    with pytest.raises(IndexError):  # ...where a real error raises again
        steps.compiled_step(run, x, torch.full_like(y, 5), do_step=True, stop_flag=0.0)
    assert run.compile_info["eager_from_step"] == 0 and run.compile_info["error"].startswith("IndexError")
