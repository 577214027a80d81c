"""A checkpoint file is never trusted: forged sizes, forged payloads, unrecorded files, special files
and a blocked checkpoint path are each set aside or refused before training, never a crash later.

(The stage's side, the audit-trail record of every checkpoint it writes, is in
tests/stages/test_train_checkpoint_trail.py.)"""

from __future__ import annotations

import hashlib
import io
import json
import os
import threading

import pytest
import torch
from structlog.testing import capture_logs
from test_training import _fit, _params, _same, make_tiny_store

from pathtrail.core.errors import PathTrailError
from pathtrail.train.checkpoint_file import (
    MAGIC,
    Rejected,
    read_header,
    set_aside,
    write_checkpoint_file,
)
from pathtrail.train.distributed import SINGLE
from pathtrail.train.resume import read_checkpoint, run_fingerprint

FP = run_fingerprint("f", torch.device("cpu"), SINGLE)  # what `_fit` (fingerprint "f") expects


def _rejected(ckpt):
    return sorted(p.name for p in ckpt.parent.glob(f"{ckpt.name}.rejected-*"))


def _reasons(logs):
    return [e["reason"] for e in logs if e["event"] == "train.checkpoint_set_aside"]


@pytest.fixture(scope="module")
def genuine(tmp_path_factory):
    """The tiny store, params (2 epochs) and the bytes of a genuine epoch-1 checkpoint of them."""
    root = tmp_path_factory.mktemp("genuine")
    data = make_tiny_store(root)
    params = _params(root, **{"train.epochs": 2, "train.checkpoint_every": 1})
    ckpt = root / "last.pt"
    fresh = _fit(*data, params, checkpoint=ckpt)  # epoch 1 < 2 epochs: its checkpoint stays
    return data, params, ckpt.read_bytes(), fresh


def _payload(raw: bytes) -> dict:
    return torch.load(io.BytesIO(raw[raw.index(b"\n", len(MAGIC)) + 1:]), weights_only=True)


# --- 1. a forged payload size ---------------------------------------------------------------------

@pytest.mark.parametrize("size", [10**13, 2**62, -1, 0])
def test_a_forged_payload_size_is_set_aside_without_reading_that_much(tmp_path, size):
    ckpt = tmp_path / "last.pt"
    header = {"fingerprint": FP, "world_size": 1, "payload_bytes": size, "payload_sha256": "0" * 64}
    ckpt.write_bytes(MAGIC + json.dumps(header).encode() + b"\n" + b"x" * 100)
    with capture_logs() as logs:
        assert read_checkpoint(ckpt, FP, SINGLE) is None
    assert not ckpt.exists() and len(_rejected(ckpt)) == 1
    assert f"the header says {size} bytes, the file holds 100" in _reasons(logs)[0]


def test_after_a_forged_size_training_starts_afresh(genuine, tmp_path):
    data, params, _, fresh = genuine
    ckpt = tmp_path / "last.pt"
    header = {"fingerprint": FP, "world_size": 1, "payload_bytes": 2**62, "payload_sha256": "0" * 64}
    ckpt.write_bytes(MAGIC + json.dumps(header).encode() + b"\n")
    result = _fit(*data, params, checkpoint=ckpt)
    assert result.resumed_from is None and _same(result.state_dict, fresh.state_dict)
    assert len(_rejected(ckpt)) == 1


# --- 2. a well-formed payload that is not this run's state ----------------------------------------

def _forge(raw: bytes, how: str) -> dict:
    ck = _payload(raw)
    if how == "empty":
        return {"model": {}, "state": {}}
    if how == "state_lacks_history":
        del ck["state"]["history"]
    elif how == "epoch_is_text":
        ck["state"]["epoch"] = "1"
    elif how == "weights_of_another_shape":
        name = next(iter(ck["model"]))
        ck["model"][name] = torch.zeros(3, 3)
    elif how == "best_weights_foreign":
        ck["state"]["best_state"] = {"w": torch.zeros(2)}
    elif how == "optimizer_garbled":
        ck["optimizer"] = {"state": {}, "param_groups": []}
    return ck


@pytest.mark.parametrize("how", ["empty", "state_lacks_history", "epoch_is_text", "weights_of_another_shape",
                                 "best_weights_foreign", "optimizer_garbled"])
def test_a_checkpoint_that_cannot_be_restored_is_set_aside_and_training_starts_afresh(genuine, tmp_path, how):
    data, params, raw, fresh = genuine
    ckpt = tmp_path / "last.pt"
    write_checkpoint_file(_forge(raw, how), ckpt, FP, 1)  # right fingerprint and payload sha256
    forged = ckpt.read_bytes()
    with capture_logs() as logs:
        result = _fit(*data, params, checkpoint=ckpt)
    assert result.resumed_from is None and result.epochs_run == 2
    assert _same(result.state_dict, fresh.state_dict)  # bitwise the run without the file
    (moved,) = _rejected(ckpt)
    assert (tmp_path / moved).read_bytes() == forged
    assert any("cannot be restored into this run" in r for r in _reasons(logs))


def test_the_genuine_checkpoint_still_resumes_bitwise(genuine, tmp_path):
    data, params, raw, fresh = genuine
    ckpt = tmp_path / "last.pt"
    ckpt.write_bytes(raw)
    result = _fit(*data, params, checkpoint=ckpt)
    assert result.resumed_from == 1 and result.resumed_sha256 == hashlib.sha256(raw).hexdigest()
    assert _same(result.state_dict, fresh.state_dict)


# --- 3. only the checkpoint the caller recorded ---------------------------------------------------

def test_each_saved_checkpoint_is_reported_with_its_sha256(tmp_path):
    data = make_tiny_store(tmp_path)
    params = _params(tmp_path, **{"train.epochs": 3, "train.checkpoint_every": 1})
    ckpt, saved = tmp_path / "last.pt", []
    _fit(*data, params, checkpoint=ckpt, on_saved=lambda **facts: saved.append(facts))
    assert [(s["epoch"], s["batch"]) for s in saved] == [(1, 0), (2, 0)]
    assert saved[-1]["sha256"] == hashlib.sha256(ckpt.read_bytes()).hexdigest()
    assert saved[-1]["fingerprint"] == FP


@pytest.mark.parametrize("expected", ["", "0" * 64])
def test_a_checkpoint_other_than_the_expected_one_is_set_aside(genuine, tmp_path, expected):
    data, params, raw, fresh = genuine
    ckpt = tmp_path / "last.pt"
    ckpt.write_bytes(raw)  # well-formed and of this run, but not the one the caller recorded
    with capture_logs() as logs:
        result = _fit(*data, params, checkpoint=ckpt, expected_sha256=expected)
    assert result.resumed_from is None and _same(result.state_dict, fresh.state_dict)
    assert "not a checkpoint this pipeline recorded" in _reasons(logs)[0]
    result = _fit(*data, params, checkpoint=ckpt, expected_sha256=hashlib.sha256(raw).hexdigest())
    assert result.resumed_from is None  # it is gone (set aside), nothing to resume
    ckpt.write_bytes(raw)
    result = _fit(*data, params, checkpoint=ckpt, expected_sha256=hashlib.sha256(raw).hexdigest())
    assert result.resumed_from == 1


# --- 4. a checkpoint path that cannot be used -----------------------------------------------------

def test_a_directory_at_the_checkpoint_path_is_set_aside_and_checkpoints_are_written(genuine, tmp_path):
    data, params, _, fresh = genuine
    ckpt = tmp_path / "last.pt"
    (ckpt / "inner").mkdir(parents=True)
    result = _fit(*data, params, checkpoint=ckpt)
    assert _same(result.state_dict, fresh.state_dict)
    assert ckpt.is_file() and (tmp_path / "last.pt.rejected-directory/inner").is_dir()


def test_a_checkpoint_path_that_cannot_be_cleared_fails_before_training(genuine, tmp_path):
    data, params, _, _ = genuine
    ckpt = tmp_path / ("c" * 245 + ".pt")  # a name the set-aside name (and a temporary file) cannot extend
    ckpt.mkdir()
    saved = []
    with pytest.raises(PathTrailError, match="cannot keep the resumable checkpoint at") as info:
        _fit(*data, params, checkpoint=ckpt, on_saved=lambda **facts: saved.append(facts))
    assert str(ckpt) in str(info.value) and "name another checkpoint path" in str(info.value)
    assert ckpt.is_dir() and not saved


# --- 5. special files: unique names, links not followed, nothing blocks ---------------------------

def test_special_files_are_set_aside_under_names_that_never_overwrite(tmp_path):
    ckpt = tmp_path / "last.pt"
    moved = []
    for make in (os.mkfifo, os.mkfifo, os.mkdir, os.mkdir):
        make(ckpt)
        with capture_logs():
            moved.append(set_aside(ckpt, "test"))
        assert not os.path.lexists(ckpt)
    assert [m.name for m in moved] == ["last.pt.rejected-fifo", "last.pt.rejected-fifo-2",
                                       "last.pt.rejected-directory", "last.pt.rejected-directory-2"]
    ckpt.write_bytes(b"one")
    first = set_aside(ckpt, "test")
    ckpt.write_bytes(b"one")  # same bytes, same sha8: the first is kept
    second = set_aside(ckpt, "test")
    assert first != second and first.read_bytes() == second.read_bytes() == b"one"


def test_a_symlink_is_neither_followed_nor_hashed_through(tmp_path):
    target = tmp_path / "elsewhere.pt"
    write_checkpoint_file({"model": {}, "state": {}}, target, FP, 1)
    ckpt = tmp_path / "last.pt"
    ckpt.symlink_to(target)
    with pytest.raises(Rejected, match="symbolic link"):
        read_header(ckpt)
    with capture_logs():
        assert read_checkpoint(ckpt, FP, SINGLE) is None
    (moved,) = _rejected(ckpt)
    link_sha = hashlib.sha256(os.fsencode(str(target))).hexdigest()[:8]
    assert moved == f"last.pt.rejected-symlink-{link_sha}" and (tmp_path / moved).is_symlink()
    assert target.is_file()  # the target is untouched


def test_a_fifo_is_rejected_without_blocking(tmp_path):
    ckpt = tmp_path / "last.pt"
    os.mkfifo(ckpt)
    outcome = []
    worker = threading.Thread(target=lambda: outcome.append(_try(read_header, ckpt)), daemon=True)
    worker.start()
    worker.join(10)
    if worker.is_alive():  # unblock the hung open before failing
        os.close(os.open(ckpt, os.O_WRONLY | os.O_NONBLOCK))
        pytest.fail("reading a FIFO checkpoint blocked")
    assert outcome and "not a regular file (a fifo)" in outcome[0]


def _try(fn, *args):
    try:
        fn(*args)
    except Rejected as exc:
        return str(exc)
    return "accepted"
