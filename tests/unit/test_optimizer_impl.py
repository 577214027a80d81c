"""train.optimizer_impl: which AdamW kernels the loop builds, each deterministic run to run."""

from __future__ import annotations

import pytest
import torch

from pathtrail.train.loop import adamw_kernels

CPU = torch.device("cpu")


def _train(impl: str) -> torch.Tensor:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))
    opt = torch.optim.AdamW(net.parameters(), lr=1e-2, weight_decay=1e-4, **adamw_kernels(impl, CPU))
    x, y = torch.randn(32, 8), torch.randint(0, 2, (32,))
    for _ in range(5):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
    assert opt.defaults["fused"] is (impl == "fused")
    assert opt.defaults["foreach"] is (True if impl == "foreach" else None)
    return torch.cat([p.detach().flatten() for p in net.parameters()])


@pytest.mark.parametrize("impl", ["auto", "foreach", "fused"])
def test_each_adamw_kernel_is_deterministic(impl):
    assert torch.equal(_train(impl), _train(impl))


def test_auto_is_fused_on_cuda_only():
    assert adamw_kernels("auto", CPU) == {"fused": False}
    assert adamw_kernels("auto", torch.device("cuda")) == {"fused": True}
    assert adamw_kernels("foreach", torch.device("cuda")) == {"fused": False, "foreach": True}


def test_the_kernels_agree_to_float_rounding():
    auto, fused = _train("auto"), _train("fused")
    torch.testing.assert_close(auto, fused, rtol=1e-4, atol=1e-5)


def test_auto_leaves_the_training_params_hash_as_before():
    """models/model.pt's params_sha256 with the default kernels is the hash it had before the option
    existed; another choice changes it (it changes the weights)."""
    from pathtrail.config.sections import training_sections
    from pathtrail.core.hashing import digest

    before = {"data": {}, "model": {}, "execution": {}, "train": {"seed": 1}}
    auto = {**before, "train": {"seed": 1, "optimizer_impl": "auto"}}
    fused = {**before, "train": {"seed": 1, "optimizer_impl": "fused"}}
    assert digest(training_sections(auto)) == digest(training_sections(before)) == digest(before)
    assert digest(training_sections(fused)) != digest(before)
