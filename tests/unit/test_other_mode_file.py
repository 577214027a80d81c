"""The file the train stage writes for compile_check (`pathtrail.pipeline.other_mode`)."""

from __future__ import annotations

import numpy as np
import torch

from pathtrail.pipeline import other_mode


def test_a_run_round_trips_bit_for_bit(tmp_path):
    rng = np.random.default_rng(0)
    run = other_mode.OtherRun(True, {"used": True, "mode": "default"}, rng.normal(size=7),
                              rng.random((5, 2), dtype=np.float32), {"w": torch.randn(3, 4)})
    other_mode.write_run(run, tmp_path / "run.pt")
    back = other_mode.read_run(tmp_path / "run.pt")
    assert back.use_compile is True and back.compile == run.compile
    assert back.losses.dtype == np.float64 and back.losses.tobytes() == run.losses.tobytes()
    assert back.val_probs.dtype == np.float32 and back.val_probs.tobytes() == run.val_probs.tobytes()
    assert torch.equal(back.state_dict["w"], run.state_dict["w"])


def test_no_run_is_started_when_the_check_is_off_or_train_is_distributed(tmp_path, repo_params):
    params = {**repo_params, "compile_check": {**repo_params["compile_check"], "enabled": False}}
    assert other_mode.start(params, "store", "split", tmp_path / "off.pt", distributed=False) is None
    params["compile_check"]["enabled"] = True
    assert other_mode.start(params, "store", "split", tmp_path / "ddp.pt", distributed=True) is None
    for name, reason in (("off.pt", "enabled is false"), ("ddp.pt", "torchrun")):
        meta = torch.load(tmp_path / name, weights_only=True)["metadata"]
        assert meta["computed"] is False and reason in meta["reason"]
        assert other_mode.read_run(tmp_path / name) is None  # compile_check then trains it itself
    assert other_mode.read_run(tmp_path / "absent.pt") is None



def test_the_child_loads_its_data_in_its_own_process(repo_params):
    """Spawned loader workers import torch at every epoch, forked ones corrupt a compiled process's
    heap: the child's loader has no workers, whatever the runtime section says."""
    from pathtrail.config.sections import runtime_of

    params = {**repo_params, "runtime": {"num_workers": 4, "persistent_workers": True, "prefetch_factor": 3}}
    child = other_mode.in_process_loading(params)
    assert runtime_of(child).loader == {**runtime_of(params).loader, "num_workers": 0, "persistent_workers": False}
    assert runtime_of(other_mode.in_process_loading({})).num_workers == 0
    assert params["runtime"]["num_workers"] == 4  # the stage's own params are not changed
