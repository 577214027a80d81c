"""The train stage as DVC runs it: killed and rerun, relaunched under torchrun, launched multi-node.

Run as a script, this file is the instrumented stage the kill test drives: it records every patch
the stage loads (`epoch index dataset_len` per line) and can slow loading down, then runs
`stages.train.main(<args after -->)`. Nothing else about the stage is changed.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import REPO, tiny_params, write_params
from pathtrail.data.store import StoreWriter
from pathtrail.provenance.audit import chain_problems, read_entries

N_PATCHES = 95          # 64 train; 31 val (16 benign, 15 tumour): 2 ranks pad it with one repeat
N_TRAIN = 64
TIMEOUT = 240


def make_inputs(root: Path, name: str = "params.yaml", **overrides) -> Path:
    """What the train stage reads (store, split tables, stain reference) plus tiny params.

    Class 1 patches carry a dark 8x8 blob at a random place on noisy pink: hard enough that the
    validation AUROC moves over the 3 epochs (0.6 -> 0.98 measured), so it can tell runs apart.
    """
    rng = np.random.default_rng(0)
    labels = np.arange(N_PATCHES) % 2
    imgs = rng.integers(170, 240, size=(N_PATCHES, 32, 32, 3), dtype=np.uint8)
    for i in np.flatnonzero(labels):
        r, c = rng.integers(0, 24, 2)
        imgs[i, r:r + 8, c:c + 8] = rng.integers(80, 150, size=(8, 8, 3), dtype=np.uint8)
    paths = [f"p{i:03d}.png" for i in range(N_PATCHES)]
    if not (root / "data/store/index.csv").is_file():
        writer = StoreWriter(root / "data/store", shard_size=40, patch_shape=(32, 32, 3))
        writer.add(imgs, pd.DataFrame({"path": paths, "label": labels}))
        writer.close()
        table = pd.DataFrame({"path": paths, "label": labels, "patient_id": [f"pt{i // 2}" for i in range(N_PATCHES)],
                              "slide_id": [f"s{i // 2}" for i in range(N_PATCHES)], "site": "site_a"})
        (root / "data/split").mkdir(parents=True, exist_ok=True)
        table.iloc[:N_TRAIN].to_csv(root / "data/split/train.csv", index=False)
        table.iloc[N_TRAIN:].to_csv(root / "data/split/val.csv", index=False)
        (root / "models").mkdir(exist_ok=True)
        (root / "models/stain_reference.json").write_text(json.dumps({"reference_sha256": "ref"}))
    # these tests are about the stage's own run: the compile check's run beside it is left out
    # (tests/stages/test_other_mode.py and test_pipeline_stages.py test that one)
    params = tiny_params(root, **{"train.epochs": 3, "train.batch_size": 8, "model.width": 8,
                                  "compile_check.enabled": False, **overrides})
    return write_params(root, params).rename(root / name)


def stage_args(params: Path, out: Path, trail: Path | None = None) -> list[str]:
    """Stage arguments sending every output (and the checkpoint) under `out`."""
    args = ["--params", str(params), "--model-out", str(out / "model.pt"), "--val-probs", str(out / "val_probs.csv"),
            "--metrics", str(out / "train.json"), "--curves", str(out / "curves"),
            "--checkpoint", str(out / "ckpt/last.pt"), "--log-file", str(out / "train.jsonl"),
            "--other-mode-run", str(out / "other_mode_run.pt")]
    return args + (["--trail", str(trail)] if trail else [])


def subprocess_env(**extra: str) -> dict[str, str]:
    # This checkout's src first: the instrumented stage imports pathtrail before `stages` can put it
    # there, and the editable install may point at another checkout.
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO / "src"), str(REPO), str(REPO / "tests")]), **extra)
    env.pop("LOCAL_RANK", None)
    env.pop("WORLD_SIZE", None)
    return env


def weights(out: Path) -> dict[str, torch.Tensor]:
    return torch.load(out / "model.pt", weights_only=True)["state_dict"]


def stage_entries(trail: Path, stage: str = "train") -> list[dict]:
    return [e for e in read_entries(trail) if e.get("stage") == stage]


# --- kill -9 and rerun ----------------------------------------------------------------------------

def _instrumented(args: list[str], progress: Path, delay: float) -> list[str]:
    return [sys.executable, __file__, "--progress", str(progress), "--delay", str(delay), "--", *args]


def _train_items(progress: Path, epoch: int) -> int:
    if not progress.is_file():
        return 0
    rows = [line.split() for line in progress.read_text().splitlines() if line.strip()]
    return sum(1 for e, _, n in rows if int(e) == epoch and int(n) == N_TRAIN)


@pytest.mark.parametrize(("accumulation", "kill_after"), [(1, 16), pytest.param(2, 24, marks=pytest.mark.slow)])
def test_sigkill_mid_epoch_then_rerun_gives_bitwise_identical_weights(tmp_path, accumulation, kill_after):
    """With accumulation_steps=2 the kill lands inside a window (micro-batch 2 loaded, 3 not yet
    stepped); checkpoints exist only at optimizer-step boundaries, so the rerun is bitwise too."""
    params = make_inputs(tmp_path, **{"train.accumulation_steps": accumulation})
    ref_out, out = tmp_path / "ref", tmp_path / "run"
    env = subprocess_env()
    # The uninterrupted reference runs alongside the victim (same command, own outputs and trail).
    ref = subprocess.Popen(_instrumented(stage_args(params, ref_out, tmp_path / "ref_trail.jsonl"),
                                         tmp_path / "ref_progress.txt", 0.0),
                           cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    progress = tmp_path / "progress.txt"
    trail = tmp_path / "trail.jsonl"
    args = stage_args(params, out, trail)
    victim = subprocess.Popen(_instrumented(args, progress, 0.02), cwd=tmp_path, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt = out / "ckpt/last.pt"
    deadline = time.monotonic() + TIMEOUT
    # Kill once the epoch-0 checkpoint exists and `kill_after` patches of epoch 1 have been loaded.
    while not (ckpt.is_file() and _train_items(progress, 1) >= kill_after):
        assert victim.poll() is None, "the run ended before it could be killed"
        assert time.monotonic() < deadline, "no epoch-1 progress in time"
        time.sleep(0.005)
    victim.send_signal(signal.SIGKILL)
    assert victim.wait(TIMEOUT) == -signal.SIGKILL
    assert kill_after <= _train_items(progress, 1) < N_TRAIN, "killed mid-way through epoch 1"
    assert ckpt.is_file() and not (out / "model.pt").exists()

    rerun = subprocess.run(_instrumented(args, progress, 0.0), cwd=tmp_path, env=env, capture_output=True,
                           text=True, timeout=TIMEOUT, check=False)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    _, ref_err = ref.communicate(timeout=TIMEOUT)
    assert ref.returncode == 0, ref_err.decode()[-3000:]

    end = stage_entries(trail)[-1]
    assert end["action"] == "end" and end["outcome"] == "ok" and end["facts"]["resumed_from"] == 1
    killed_run_saved = [e for e in stage_entries(trail) if e["action"] == "checkpoint_saved"
                        and e["run_id"] != end["run_id"]]
    assert end["facts"]["resumed_checkpoint_sha256"] == killed_run_saved[-1]["sha256"]  # the one it recorded
    a, b = weights(ref_out), weights(out)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    for rel in ("train.json", "curves/steps.csv", "curves/epochs.csv", "val_probs.csv"):
        assert (ref_out / rel).read_bytes() == (out / rel).read_bytes(), rel
    assert not ckpt.exists() and not (ref_out / "ckpt/last.pt").exists(), "a finished run leaves no checkpoint"


# --- DDP: relaunched by the stage, and launched by the user as two "nodes" ------------------------

@pytest.fixture(scope="module")
def single_process(tmp_path_factory):
    """One process, global batch 8, dropout off (see the tolerance note below)."""
    root = tmp_path_factory.mktemp("ddp")
    params = make_inputs(root, "single.yaml", **{"model.dropout": 0.0})
    out = root / "single"
    cwd = os.getcwd()
    os.chdir(root)
    try:
        import stages.train

        stages.train.main(stage_args(params, out, root / "single_trail.jsonl"))
    finally:
        os.chdir(cwd)
    return root, out


# Tolerances, measured on this 2-core CPU (gloo, torch 2.13): with dropout off, 2 processes x 4
# samples and 1 process x 8 samples run the same global batches with the same global-batch loss,
# so they differ only in float summation order. Measured: |dAUROC| = 0 at every epoch (0.8375,
# 1.0, 1.0), validation probabilities within 7.4e-8, validation loss within 6e-8, step losses
# within 1.2e-7, weights within 1.0e-6. The bounds leave room for other CPUs / BLAS builds: one
# swapped (tumour, benign) pair moves the AUROC by 1 / (15 * 16) = 0.0042, so that is the AUROC
# bound; probabilities and losses get 1e-5, ~100x the measured drift. (With dropout on, each rank
# draws its own masks, so runs agree only statistically: epoch-1 AUROC 1.0 vs 0.90 was seen.)
AUROC_TOL = 1 / (15 * 16)
VALUE_TOL = 1e-5


def _assert_close_to_single(single: Path, other: Path) -> None:
    m1, m2 = json.loads((single / "train.json").read_text()), json.loads((other / "train.json").read_text())
    assert abs(m1["best_val_auroc"] - m2["best_val_auroc"]) <= AUROC_TOL
    e1, e2 = pd.read_csv(single / "curves/epochs.csv"), pd.read_csv(other / "curves/epochs.csv")
    assert np.abs(e1.val_auroc - e2.val_auroc).max() <= AUROC_TOL
    assert np.abs(e1.val_loss - e2.val_loss).max() <= VALUE_TOL
    s1, s2 = pd.read_csv(single / "curves/steps.csv"), pd.read_csv(other / "curves/steps.csv")
    assert len(s1) == len(s2) and np.abs(s1.loss - s2.loss).max() <= VALUE_TOL
    p1, p2 = pd.read_csv(single / "val_probs.csv"), pd.read_csv(other / "val_probs.csv")
    assert p1.path.tolist() == p2.path.tolist()  # every validation patch once, in the original order
    assert np.abs(p1.prob_tumour - p2.prob_tumour).max() <= VALUE_TOL


def _assert_one_set_of_outputs(out: Path, trail: Path) -> None:
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == [
        "curves/epochs.csv", "curves/steps.csv", "model.pt", "other_mode_run.pt", "train.json", "train.jsonl", "val_probs.csv"]
    entries = [e for e in stage_entries(trail) if e["action"] != "checkpoint_saved"]
    assert [(e["action"], e["outcome"]) for e in entries] == [("start", "running"), ("end", "ok")]
    assert chain_problems(read_entries(trail)) == []
    assert entries[1]["facts"]["world_size"] == 2
    assert entries[1]["outputs"][f"{out}/model.pt"] is not None
    logged = [json.loads(line) for line in (out / "train.jsonl").read_text().splitlines()]
    assert [e.get("rank", 0) for e in logged if e["event"] == "train.done"] == [0]
    assert torch.load(out / "model.pt", weights_only=True)["metadata"]["world_size"] == 2


def test_two_processes_via_relaunch_match_one_process(single_process, tmp_path, monkeypatch):
    root, single = single_process
    params = make_inputs(root, "two.yaml", **{"model.dropout": 0.0, "train.distributed": {"nproc_per_node": 2}})
    out = root / "runs" / tmp_path.name  # a stage writes inside its working directory only
    monkeypatch.chdir(root)
    for k in ("LOCAL_RANK", "WORLD_SIZE"):
        monkeypatch.delenv(k, raising=False)
    import stages.train

    stages.train.main(stage_args(params, out))  # relaunches itself under torchrun, waits
    logged = [json.loads(line) for line in (out / "train.jsonl").read_text().splitlines()]
    assert any(e["event"] == "train.relaunch" for e in logged)
    assert {e.get("rank") for e in logged} >= {0, 1}  # both workers ran (rank 1 logs, never writes)
    _assert_close_to_single(single, out)
    _assert_one_set_of_outputs(out, Path(os.environ["PATHTRAIL_AUDIT_TRAIL"]))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_user_launched_two_node_torchrun_is_joined_not_relaunched(single_process, tmp_path):
    """`torchrun --nnodes 2 --node-rank K ...` twice on one machine stands in for two nodes."""
    root, single = single_process
    params = make_inputs(root, "nodes.yaml", **{"model.dropout": 0.0})  # nproc_per_node 1: torchrun decides
    out, trail = root / "runs" / tmp_path.name, tmp_path / "trail.jsonl"  # outputs inside the cwd
    port = _free_port()
    env = subprocess_env(OMP_NUM_THREADS="1")
    nodes = [subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node-rank", str(k),
         "--nproc-per-node", "1", "--master-addr", "127.0.0.1", "--master-port", str(port),
         "-m", "stages.train", *stage_args(params, out, trail)],
        cwd=root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for k in (0, 1)]
    for node in nodes:
        _, err = node.communicate(timeout=TIMEOUT)
        assert node.returncode == 0, err.decode()[-3000:]
    logged = [json.loads(line) for line in (out / "train.jsonl").read_text().splitlines()]
    assert not any(e["event"] == "train.relaunch" for e in logged)
    _assert_close_to_single(single, out)
    _assert_one_set_of_outputs(out, trail)


@pytest.mark.slow
@pytest.mark.parametrize("accumulation", [1, 2])
def test_sigterm_to_a_two_process_run_checkpoints_and_resumes_bitwise(tmp_path, accumulation):
    """SIGTERM to the stage reaches every rank through torchrun; they stop after the same optimizer
    step (with accumulation_steps=2 the window in progress is finished first), rank 0 saves every
    rank's RNG state, and the rerun ends on the uninterrupted run's weights."""
    params = make_inputs(tmp_path, "two.yaml", **{"train.distributed": {"nproc_per_node": 2}, "train.epochs": 8,
                                                  "train.accumulation_steps": accumulation,
                                                  "train.early_stopping": {"patience": 100, "min_delta": 0.0}})
    env = subprocess_env()
    cmd = [sys.executable, "-m", "stages.train"]
    ref_out, out, trail = tmp_path / "ref", tmp_path / "run", tmp_path / "trail.jsonl"
    ref = subprocess.Popen([*cmd, *stage_args(params, ref_out, tmp_path / "ref_trail.jsonl")], cwd=tmp_path, env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    args = stage_args(params, out, trail)
    victim = subprocess.Popen([*cmd, *args], cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    ckpt, deadline = out / "ckpt/last.pt", time.monotonic() + TIMEOUT
    while not ckpt.is_file():  # end of epoch 0; 7 epochs remain
        assert victim.poll() is None and time.monotonic() < deadline
        time.sleep(0.005)
    victim.send_signal(signal.SIGTERM)
    _, err = victim.communicate(timeout=TIMEOUT)
    assert victim.returncode == 1 and "checkpoint saved" in err.decode()
    end = stage_entries(trail)[-1]
    assert end["action"] == "end" and end["outcome"] == "failed" and "interrupted by signal" in end["error"]
    assert ckpt.is_file() and not (out / "model.pt").exists()

    rerun = subprocess.run([*cmd, *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=TIMEOUT,
                           check=False)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    _, ref_err = ref.communicate(timeout=TIMEOUT)
    assert ref.returncode == 0, ref_err.decode()[-3000:]
    assert stage_entries(trail)[-1]["facts"]["resumed_from"] >= 1
    assert stage_entries(trail)[-1]["facts"]["resumed_checkpoint_sha256"] is not None
    a, b = weights(ref_out), weights(out)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert (ref_out / "curves/steps.csv").read_bytes() == (out / "curves/steps.csv").read_bytes()
    assert not ckpt.exists()


def _main() -> None:
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("--progress", required=True)
    parser.add_argument("--delay", type=float, default=0.0)
    own, rest = sys.argv[1:sys.argv.index("--")], sys.argv[sys.argv.index("--") + 1:]
    opts = parser.parse_args(own)

    from pathtrail.data.loaders import PatchDataset

    original = PatchDataset.__getitem__
    sink = open(opts.progress, "a", buffering=1)  # noqa: SIM115 - lives as long as the process

    def recorded(self, key):
        sink.write(f"{key[0]} {key[1]} {len(self)}\n")
        if opts.delay:
            time.sleep(opts.delay)
        return original(self, key)

    PatchDataset.__getitem__ = recorded
    import stages.train

    stages.train.main(rest)


if __name__ == "__main__":
    _main()
