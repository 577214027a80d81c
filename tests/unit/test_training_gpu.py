"""CUDA paths of the training loop: determinism, bf16 / fp16 AMP, channels-last, fused AdamW,
compile. Marked `gpu`: skipped without a CUDA device (CI has none)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_training import _fit, _params, _same, make_tiny_store

pytestmark = pytest.mark.gpu
CUDA = torch.device("cuda")


@pytest.fixture
def tiny_store(tmp_path):
    return make_tiny_store(tmp_path)


def _gpu_fit(store, train, val, tmp_path, **overrides):
    return _fit(store, train, val, _params(tmp_path, **overrides), device=CUDA)


def test_cuda_training_is_bitwise_deterministic(tiny_store, tmp_path):
    a = _gpu_fit(*tiny_store, tmp_path)
    b = _gpu_fit(*tiny_store, tmp_path)
    assert _same(a.state_dict, b.state_dict)
    assert [s["loss"] for s in a.steps] == [s["loss"] for s in b.steps]


def test_cuda_agrees_with_cpu_closely(tiny_store, tmp_path):
    # Dropout off: CPU and CUDA have different random generators, so their masks differ by design.
    gpu = _gpu_fit(*tiny_store, tmp_path, **{"model.dropout": 0.0})
    cpu = _fit(*tiny_store, _params(tmp_path, **{"model.dropout": 0.0}), device=torch.device("cpu"))
    g, c = np.array([s["loss"] for s in gpu.steps]), np.array([s["loss"] for s in cpu.steps])
    # Different kernels, same maths: fp32 losses agree to float rounding accumulated over 12 steps.
    assert np.abs(g - c).max() < 1e-3


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_amp_on_cuda_trains_and_is_deterministic(tiny_store, tmp_path, amp):
    a = _gpu_fit(*tiny_store, tmp_path, **{"train.amp": amp})
    b = _gpu_fit(*tiny_store, tmp_path, **{"train.amp": amp})
    losses = [s["loss"] for s in a.steps]
    assert np.isfinite(losses).all() and losses[-1] < losses[0] + 0.1
    assert _same(a.state_dict, b.state_dict)


def test_channels_last_and_fused_adamw(tiny_store, tmp_path):
    result = _gpu_fit(*tiny_store, tmp_path, **{"train.channels_last": True})
    assert np.isfinite([s["loss"] for s in result.steps]).all()
    plain = _gpu_fit(*tiny_store, tmp_path)
    # channels-last changes only the memory layout; the losses stay within rounding
    diff = np.abs(np.array([s["loss"] for s in result.steps]) - [s["loss"] for s in plain.steps])
    assert diff.max() < 1e-3


def test_benchmark_profile_flags_run(tiny_store, tmp_path):
    result = _gpu_fit(*tiny_store, tmp_path, **{"train.deterministic": False, "train.cudnn_benchmark": True,
                                                 "train.allow_tf32": True, "train.amp": "bf16"})
    assert np.isfinite([s["loss"] for s in result.steps]).all()


def test_compiled_training_on_cuda_matches_eager(tiny_store, tmp_path):
    eager = _gpu_fit(*tiny_store, tmp_path)
    compiled = _fit(*tiny_store, _params(tmp_path), device=CUDA, use_compile=True, fallback_random=True)
    assert compiled.compile["used"], compiled.compile
    e, c = np.array([s["loss"] for s in eager.steps]), np.array([s["loss"] for s in compiled.steps])
    assert abs(e[0] - c[0]) < 1e-4 and np.abs(e - c).max() < 5e-3
