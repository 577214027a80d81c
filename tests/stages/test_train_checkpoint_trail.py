"""The train stage resumes only a checkpoint it wrote itself: each one it writes is recorded in the
audit trail (`checkpoint_saved`, with the file's sha256), and a file at the checkpoint path that is
not the last one recorded by an unfinished run is set aside, however well-formed. A checkpoint path
that cannot be used stops the stage before any training, with a clear message."""

from __future__ import annotations

import hashlib
import io
import json
import os
from pathlib import Path

import pytest
import torch
from test_train_stage import make_inputs, stage_args, stage_entries, weights

from pathtrail.config.loading import read_params
from pathtrail.pipeline.train import recorded_checkpoint
from pathtrail.provenance.audit import append, chain_problems, read_entries
from pathtrail.train.checkpoint_file import MAGIC, write_checkpoint_file
from pathtrail.train.distributed import SINGLE
from pathtrail.train.inputs import load_training_inputs
from pathtrail.train.loop import fit
from pathtrail.train.resume import run_fingerprint


def _stage(root: Path, params: Path, out: Path, trail: Path) -> None:
    import stages.train

    cwd = os.getcwd()
    os.chdir(root)
    try:
        stages.train.main(stage_args(params, out, trail))
    finally:
        os.chdir(cwd)


@pytest.fixture(scope="module")
def fresh(tmp_path_factory):
    """A finished stage run (3 epochs, a checkpoint after epochs 1 and 2) and its trail."""
    root = tmp_path_factory.mktemp("ckpt_trail")
    params = make_inputs(root, **{"train.checkpoint_every": 1})
    out, trail = root / "fresh", root / "fresh_trail.jsonl"
    _stage(root, params, out, trail)
    return root, params, out, trail


def test_every_checkpoint_written_is_recorded_and_the_chain_holds(fresh):
    _, _, out, trail = fresh
    entries = stage_entries(trail)
    assert [e["action"] for e in entries] == ["start", "checkpoint_saved", "checkpoint_saved", "end"]
    assert len({e["run_id"] for e in entries}) == 1 and chain_problems(read_entries(trail)) == []
    assert [(e["epoch"], e["batch"]) for e in entries[1:3]] == [(1, 0), (2, 0)]
    assert all(len(e["sha256"]) == 64 and e["checkpoint"] == f"{out}/ckpt/last.pt" for e in entries[1:3])
    assert entries[-1]["outcome"] == "ok" and entries[-1]["facts"]["resumed_from"] is None
    assert entries[-1]["facts"]["resumed_checkpoint_sha256"] is None
    assert recorded_checkpoint(read_entries(trail)) == ""  # that run ended ok: nothing to resume


def _forged(root: Path, params: Path, ckpt: Path) -> bytes:
    """A well-formed checkpoint with the stage's fingerprint claiming a finished run (epoch 3 of 3)
    whose best weights are all zeros: what someone able to write last.pt could leave there."""
    inp = load_training_inputs(read_params(params), str(root / "data/store"), str(root / "data/split"),
                               str(root / "models/stain_reference.json"))
    p = inp.train
    fit(inp.store, inp.splits["train"], inp.splits["val"], p, inp.model, inp.runtime, num_classes=2,
        fingerprint=inp.fingerprint, checkpoint=ckpt)  # leaves the epoch-2 checkpoint
    raw = ckpt.read_bytes()
    ck = torch.load(io.BytesIO(raw[raw.index(b"\n", len(MAGIC)) + 1:]), weights_only=True)
    state = ck["state"]
    state["epoch"], state["history"] = 3, [*state["history"], dict(state["history"][-1])]
    state["best_state"] = {k: torch.zeros_like(v) for k, v in state["best_state"].items()}
    state["best_epoch"] = 2
    write_checkpoint_file(ck, ckpt, run_fingerprint(inp.fingerprint, torch.device("cpu"), SINGLE), 1)
    return ckpt.read_bytes()


def test_a_forged_checkpoint_is_set_aside_and_its_weights_never_published(fresh, tmp_path):
    root, params, fresh_out, _ = fresh
    out, trail = root / f"run-{tmp_path.name}", tmp_path / "trail.jsonl"  # outputs inside the stage's folder
    ckpt = out / "ckpt/last.pt"
    forged = _forged(root, params, ckpt)
    _stage(root, params, out, trail)
    ours, theirs = weights(out), weights(fresh_out)
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs)  # trained afresh, not the forged zeros
    (moved,) = ckpt.parent.glob("last.pt.rejected-*")
    assert moved.read_bytes() == forged
    end = stage_entries(trail)[-1]
    assert end["outcome"] == "ok" and end["facts"]["resumed_from"] is None
    logged = [json.loads(line) for line in (out / "train.jsonl").read_text().splitlines()]
    (warned,) = [e for e in logged if e["event"] == "train.checkpoint_set_aside"]
    assert "not a checkpoint this pipeline recorded" in warned["reason"]


def test_a_recorded_checkpoint_of_an_unfinished_run_is_resumed(fresh, tmp_path):
    """The trail of a run killed after its epoch-2 checkpoint: start and checkpoint_saved, no end."""
    root, params, fresh_out, _ = fresh
    out, trail = root / f"run-{tmp_path.name}", tmp_path / "trail.jsonl"  # outputs inside the stage's folder
    ckpt = out / "ckpt/last.pt"
    inp = load_training_inputs(read_params(params), str(root / "data/store"), str(root / "data/split"),
                               str(root / "models/stain_reference.json"))
    saved = []
    fit(inp.store, inp.splits["train"], inp.splits["val"], inp.train, inp.model, inp.runtime, num_classes=2,
        fingerprint=inp.fingerprint, checkpoint=ckpt, on_saved=lambda **f: saved.append(f))
    killed = {"stage": "train", "run_id": "killed-run"}
    append({**killed, "action": "start", "outcome": "running"}, trail)
    append({**killed, "action": "checkpoint_saved", "outcome": "ok", **saved[-1]}, trail)
    sha = hashlib.sha256(ckpt.read_bytes()).hexdigest()
    assert recorded_checkpoint(read_entries(trail)) == sha == saved[-1]["sha256"]
    _stage(root, params, out, trail)
    end = stage_entries(trail)[-1]
    assert end["facts"]["resumed_from"] == 2 and end["facts"]["resumed_checkpoint_sha256"] == sha
    ours, theirs = weights(out), weights(fresh_out)
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs)


def test_recorded_checkpoint_is_the_last_one_of_a_run_that_did_not_end_ok():
    def e(run, action, **kw):
        return {"stage": kw.pop("stage", "train"), "run_id": run, "action": action, **kw}

    killed = [e("a", "start"), e("a", "checkpoint_saved", sha256="s1"), e("a", "checkpoint_saved", sha256="s2")]
    assert recorded_checkpoint(killed) == "s2"
    assert recorded_checkpoint([*killed, e("a", "end", outcome="failed")]) == "s2"  # stopped by SIGTERM
    assert recorded_checkpoint([*killed, e("a", "end", outcome="ok")]) == ""
    assert recorded_checkpoint([*killed, e("b", "start")]) == "s2"  # a resumed run killed before saving
    assert recorded_checkpoint([*killed, e("b", "start"), e("b", "checkpoint_saved", sha256="s3")]) == "s3"
    assert recorded_checkpoint([e("x", "checkpoint_saved", sha256="s9", stage="evaluate")]) == ""
    assert recorded_checkpoint([e("a", "checkpoint_saved", sha256=None)]) == ""
    assert recorded_checkpoint([]) == ""


def test_a_checkpoint_path_that_cannot_be_used_stops_the_stage_before_training(fresh, tmp_path, capsys):
    root, params, _, _ = fresh
    out, trail = root / f"run-{tmp_path.name}", tmp_path / "trail.jsonl"  # outputs inside the stage's folder
    import stages.train

    args = stage_args(params, out, trail)
    blocked = out / "ckpt" / ("c" * 245 + ".pt")
    blocked.mkdir(parents=True)
    args[args.index("--checkpoint") + 1] = str(blocked)
    cwd = os.getcwd()
    os.chdir(root)
    try:
        with pytest.raises(SystemExit) as info:
            stages.train.main(args)
    finally:
        os.chdir(cwd)
    err = capsys.readouterr().err
    assert info.value.code != 0 and "Traceback" not in err
    assert "cannot keep the resumable checkpoint at" in err and "name another checkpoint path" in err
    assert not (out / "model.pt").exists() and blocked.is_dir()
    entries = stage_entries(trail)
    assert [e["action"] for e in entries] == ["start", "end"] and entries[-1]["outcome"] == "failed"


@pytest.mark.slow
def test_under_ddp_an_unrestorable_recorded_checkpoint_is_set_aside_once_and_every_rank_starts_afresh(
        tmp_path, monkeypatch):
    """Rank 0 reads it, every rank tries to restore it, all agree it failed: one set-aside, a fresh run."""
    params = make_inputs(tmp_path, "two.yaml", **{"train.distributed": {"nproc_per_node": 2}, "train.epochs": 2,
                                                  "train.checkpoint_every": 1})
    out, trail = tmp_path / "run", tmp_path / "trail.jsonl"
    ckpt = out / "ckpt/last.pt"
    for k in ("LOCAL_RANK", "WORLD_SIZE"):
        monkeypatch.delenv(k, raising=False)
    _stage(tmp_path, params, tmp_path / "first", trail)  # records the fingerprint its workers use
    (first,) = [e for e in stage_entries(trail) if e["action"] == "checkpoint_saved"]
    sha = write_checkpoint_file({"model": {}, "state": {}}, ckpt, first["fingerprint"], 2)
    killed = {"stage": "train", "run_id": "killed-run"}
    append({**killed, "action": "start", "outcome": "running"}, trail)
    append({**killed, "action": "checkpoint_saved", "outcome": "ok", "sha256": sha}, trail)
    _stage(tmp_path, params, out, trail)  # relaunches itself under torchrun
    end = stage_entries(trail)[-1]
    assert end["outcome"] == "ok" and end["facts"]["resumed_from"] is None and end["facts"]["world_size"] == 2
    assert len(list(ckpt.parent.glob("last.pt.rejected-*"))) == 1
    logged = [json.loads(line) for line in (out / "train.jsonl").read_text().splitlines()]
    warned = [e for e in logged if e["event"] == "train.checkpoint_set_aside"]
    assert len(warned) == 1 and "cannot be restored into this run" in warned[0]["reason"]
    assert {e.get("rank", 0) for e in logged if e["event"] == "train.resume"} == set()
