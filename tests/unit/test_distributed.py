"""DDP plumbing that needs no second process: launch detection, commands, batch and loss maths."""

from __future__ import annotations

import os
import sys

import pytest
import torch
import torch.nn.functional as F

from pathtrail.config.loading import ParamsError
from pathtrail.core.errors import PathTrailError
from pathtrail.data.loaders import KeyedBatchSampler
from pathtrail.train import distributed as D

WORKER_ENV = {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"}


def test_torchrun_worker_environment_is_recognised():
    assert D.launched_world({}) is None
    assert D.launched_world({"WORLD_SIZE": "2"}) is None  # LOCAL_RANK missing: not a torchrun worker
    w = D.launched_world(WORKER_ENV)
    assert (w.rank, w.size, w.local_rank, w.local_size) == (3, 4, 1, 2)
    assert w.distributed and not w.is_main
    with pytest.raises(ParamsError, match="RANK, WORLD_SIZE and LOCAL_RANK must be integers"):
        D.launched_world({"WORLD_SIZE": "two", "LOCAL_RANK": "0"})
    with pytest.raises(ParamsError, match="inconsistent"):
        D.launched_world({"WORLD_SIZE": "2", "LOCAL_RANK": "0", "RANK": "5"})


def test_relaunch_only_when_asked_and_not_already_launched():
    assert not D.should_relaunch(1, {})
    assert D.should_relaunch(2, {})
    assert not D.should_relaunch(2, WORKER_ENV)  # inside torchrun (e.g. user-launched multi-node)


def test_launch_command_is_standalone_torchrun_with_the_same_args():
    cmd = D.launch_command("stages.train", ["--params", "p.yaml"], 2)
    assert cmd[:3] == [sys.executable, "-m", "torch.distributed.run"]
    assert cmd[3:] == ["--standalone", "--nnodes", "1", "--nproc-per-node", "2", "-m", "stages.train",
                       "--params", "p.yaml"]


def test_launch_env_finds_the_stage_package_and_splits_the_cores():
    env = D.launch_env("stages.train", 2, {"PYTHONPATH": "/elsewhere"})
    root = env["PYTHONPATH"].split(os.pathsep)
    assert os.path.isdir(os.path.join(root[0], "stages")) and root[1] == "/elsewhere"
    assert int(env["OMP_NUM_THREADS"]) >= 1
    assert D.launch_env("stages.train", 2, {"OMP_NUM_THREADS": "7"})["OMP_NUM_THREADS"] == "7"  # user's wins


def test_batch_size_is_global_and_must_divide():
    assert D.per_rank_batch(64, 1) == 64 and D.per_rank_batch(64, 4) == 16
    with pytest.raises(ParamsError, match=r"'train\.batch_size' is 10, .* 4 training processes"):
        D.per_rank_batch(10, 4)


def test_rank_batches_together_are_the_single_process_batch():
    """Rank r's b-th batch of B/W holds the samples at positions r, r+W, ... of global batch b."""
    n, batch, world = 37, 8, 2
    single = KeyedBatchSampler(n, batch, seed=3, shuffle=True)
    ranks = [KeyedBatchSampler(n, batch // world, seed=3, shuffle=True, rank=r, world=world) for r in range(world)]
    for s in (single, *ranks):
        s.set_epoch(5)
    per_rank = [list(r) for r in ranks]
    assert len(single) == len(per_rank[0]) == len(per_rank[1])
    for b, global_batch in enumerate(single):
        union = {i for r in per_rank for _, i in r[b]}
        assert {i for _, i in global_batch} <= union  # the last batch also holds one padding repeat


def test_ddp_loss_normalisation_equals_the_global_batch_loss():
    """sum over ranks of (per-sample losses * world / global weight sum), averaged by DDP, is the
    CrossEntropyLoss(weight, label_smoothing) of the whole global batch."""
    g = torch.Generator().manual_seed(0)
    logits, y = torch.randn(12, 3, generator=g, dtype=torch.float64), torch.randint(0, 3, (12,), generator=g)
    w = torch.tensor([0.5, 1.0, 3.0], dtype=torch.float64)
    whole = F.cross_entropy(logits, y, weight=w, label_smoothing=0.1)
    world, total_w = 3, w[y].sum()
    parts = [F.cross_entropy(logits[r::world], y[r::world], weight=w, label_smoothing=0.1, reduction="none").sum()
             * world / total_w for r in range(world)]
    assert torch.allclose(sum(parts) / world, whole, rtol=0, atol=1e-12)


def test_rank_seeds_are_keyed_and_distinct():
    seeds = {D.rank_seed(42, r) for r in range(64)}
    assert len(seeds) == 64 and all(0 <= s < 2**31 for s in seeds)
    assert D.rank_seed(42, 1) != D.rank_seed(43, 0)  # not seed + rank
    assert D.rank_seed(42, 1) == D.rank_seed(42, 1)


def test_single_process_collectives_are_identities():
    t = torch.arange(6.0).reshape(3, 2)
    assert torch.equal(D.all_reduce_sum(t.clone(), D.SINGLE), t)
    assert D.all_gather_rows(t, D.SINGLE).shape == (1, 3, 2)
    assert D.all_gather_object("x", D.SINGLE) == ["x"] and D.broadcast_object(5, D.SINGLE) == 5
    assert D.backend_for(torch.device("cpu")) == "gloo" and D.backend_for(torch.device("cuda", 0)) == "nccl"


def test_fit_with_several_ranks_needs_a_process_group(tmp_path):
    from pathtrail.train.loop import fit

    with pytest.raises(PathTrailError, match="initialized process group"):
        fit(None, None, None, None, None, None, num_classes=2, fingerprint="f", world=D.World(rank=0, size=2))


def test_process_group_is_a_no_op_for_one_process():
    with D.process_group(D.SINGLE, torch.device("cpu")) as world:
        assert world is D.SINGLE and not torch.distributed.is_initialized()
