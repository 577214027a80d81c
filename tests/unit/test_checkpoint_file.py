"""The resumable checkpoint is data: a plain header checked first, then a weights-only payload.

A crafted pickle, random bytes or a checkpoint of another run is set aside (renamed, with a
warning naming both paths), never executed, and training goes on from scratch; the fingerprint
changes with the store's pixels even when its index is identical."""

from __future__ import annotations

import io
import json
import shutil
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from structlog.testing import capture_logs
from test_training import _fit, _params, _same, make_tiny_store

from conftest import tiny_params, write_params
from pathtrail.config.loading import read_params
from pathtrail.core.hashing import sha256_bytes
from pathtrail.train.checkpoint_file import MAGIC, read_header, write_checkpoint_file
from pathtrail.train.distributed import SINGLE, World
from pathtrail.train.inputs import load_training_inputs
from pathtrail.train.resume import read_checkpoint, run_fingerprint


class _Exploit:
    """Unpickling this runs `Path(marker).touch()`: what a crafted checkpoint could do."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import pathlib

        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


def _set_aside(ckpt):
    return sorted(p.name for p in ckpt.parent.glob(f"{ckpt.name}.rejected-*"))


def _crafted_pickle(ckpt, marker):
    torch.save({"fingerprint": "f", "world_size": 1, "state": {"x": _Exploit(str(marker))}}, ckpt)


def _crafted_payload_with_header(ckpt, marker, fingerprint):
    """The exploit behind a well-formed header with the right fingerprint and payload hash."""
    buf = io.BytesIO()
    torch.save({"model": {}, "state": {"x": _Exploit(str(marker))}}, buf)
    body = buf.getvalue()
    import hashlib

    header = {"fingerprint": fingerprint, "world_size": 1, "payload_bytes": len(body),
              "payload_sha256": hashlib.sha256(body).hexdigest()}
    ckpt.write_bytes(MAGIC + json.dumps(header).encode() + b"\n" + body)


@pytest.mark.parametrize("content", ["pickle", "pickle_behind_header", "random", "empty"])
def test_a_hostile_or_broken_checkpoint_is_set_aside_never_run_and_training_proceeds(tmp_path, content):
    data = make_tiny_store(tmp_path)
    params = _params(tmp_path, **{"train.epochs": 1})
    ckpt, marker = tmp_path / "ckpt" / "last.pt", tmp_path / "pwned"
    ckpt.parent.mkdir()
    if content == "pickle":
        _crafted_pickle(ckpt, marker)
    elif content == "pickle_behind_header":
        _crafted_payload_with_header(ckpt, marker, run_fingerprint("f", torch.device("cpu"), SINGLE))
    elif content == "random":
        ckpt.write_bytes(np.random.default_rng(0).bytes(4096))
    else:
        ckpt.write_bytes(b"")
    original = ckpt.read_bytes()
    with capture_logs() as logs:
        result = _fit(*data, params, checkpoint=ckpt)
    assert not marker.exists(), "the crafted checkpoint ran code"
    assert result.resumed_from is None and result.epochs_run == 1
    assert _same(result.state_dict, _fit(*data, params).state_dict)  # trained from scratch, as if absent
    (moved,) = _set_aside(ckpt)
    assert (ckpt.parent / moved).read_bytes() == original  # kept as evidence, under a new name
    warned = [e for e in logs if e["event"] == "train.checkpoint_set_aside"]
    assert len(warned) == 1 and warned[0]["checkpoint"] == str(ckpt)
    assert warned[0]["moved_to"] == str(ckpt.parent / moved) and warned[0]["reason"]


def test_the_payload_exploit_is_real(tmp_path):
    """Guards the test above: a full unpickle of the same file does run the payload."""
    ckpt, marker = tmp_path / "last.pt", tmp_path / "pwned"
    _crafted_pickle(ckpt, marker)
    torch.load(ckpt, weights_only=False)
    assert marker.exists()


def test_checkpoint_of_another_run_or_world_size_is_set_aside(tmp_path):
    path = tmp_path / "last.pt"
    write_checkpoint_file({"model": {}, "state": {}}, path, "fp-a", 1)
    assert read_checkpoint(path, "fp-b", SINGLE) is None and not path.exists() and len(_set_aside(path)) == 1
    write_checkpoint_file({"model": {}, "state": {}}, path, "fp-a", 2)
    assert read_checkpoint(path, "fp-a", SINGLE) is None and not path.exists()
    write_checkpoint_file({"model": {"w": torch.ones(2)}, "state": {"epoch": 1}}, path, "fp-a", 1)
    body = path.read_bytes()
    path.write_bytes(body[:-10])  # cut short
    assert read_checkpoint(path, "fp-a", SINGLE) is None and not path.exists()
    path.write_bytes(body)
    ck = read_checkpoint(path, "fp-a", SINGLE)
    assert ck.payload["state"] == {"epoch": 1} and torch.equal(ck.payload["model"]["w"], torch.ones(2))
    header, payload, file_sha256 = read_header(path)
    assert ck.sha256 == file_sha256 == sha256_bytes(path.read_bytes())
    assert header["fingerprint"] == "fp-a" and torch.load(io.BytesIO(payload), weights_only=True)["state"]


def test_run_fingerprint_covers_torch_device_and_world_size():
    cpu = torch.device("cpu")
    base = run_fingerprint("f", cpu, SINGLE)
    assert base == run_fingerprint("f", cpu, SINGLE)
    assert len({base, run_fingerprint("g", cpu, SINGLE), run_fingerprint("f", torch.device("cuda"), SINGLE),
                run_fingerprint("f", cpu, World(size=2))}) == 4


def _inputs(root):
    """What the train stage reads: a store (48 patches, one shard), split tables, stain reference."""
    if not (root / "data/store").is_dir():
        make_tiny_store(root / "data")
        paths = [f"p{i:03d}.png" for i in range(48)]
        table = pd.DataFrame({"path": paths, "label": np.arange(48) % 2, "patient_id": paths})
        (root / "data/split").mkdir()
        table.iloc[:32].to_csv(root / "data/split/train.csv", index=False)
        table.iloc[32:].to_csv(root / "data/split/val.csv", index=False)
        (root / "models").mkdir()
        (root / "models/stain_reference.json").write_text(json.dumps({"reference_sha256": "ref"}))
        write_params(root, tiny_params(root))
    return load_training_inputs(read_params(root / "params.yaml"), str(root / "data/store"),
                                str(root / "data/split"), str(root / "models/stain_reference.json"))


def test_fingerprint_sees_the_pixels_and_the_stain_reference_not_just_the_index(tmp_path):
    a = _inputs(tmp_path / "a")
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    shard = tmp_path / "b/data/store/shard_00000.npy"
    pixels = np.load(shard)
    pixels[0, 0, 0, 0] ^= 1  # one bit of one pixel; index.csv is untouched
    np.save(shard, pixels)
    assert (tmp_path / "a/data/store/index.csv").read_bytes() == (tmp_path / "b/data/store/index.csv").read_bytes()
    assert _inputs(tmp_path / "b").fingerprint != a.fingerprint
    shutil.rmtree(tmp_path / "b")
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    assert _inputs(tmp_path / "b").fingerprint == a.fingerprint  # same content elsewhere: same run
    (tmp_path / "b/models/stain_reference.json").write_text(json.dumps({"reference_sha256": "other"}))
    assert _inputs(tmp_path / "b").fingerprint != a.fingerprint


def test_checkpoint_from_a_store_with_other_pixels_is_not_resumed(tmp_path):
    """End to end: stop a run on store A; the same run on store B (same index, other pixels) starts afresh."""
    a, b = _inputs(tmp_path / "a"), None
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    shard = tmp_path / "b/data/store/shard_00000.npy"
    pixels = np.load(shard)
    np.save(shard, 255 - pixels)
    b = _inputs(tmp_path / "b")
    params = _params(tmp_path, **{"train.epochs": 2, "train.checkpoint_every": 1})
    ckpt = tmp_path / "last.pt"
    from pathtrail.train.loop import fit

    def run(inp):
        return fit(inp.store, inp.splits["train"], inp.splits["val"], *params, num_classes=2,
                   fingerprint=inp.fingerprint, checkpoint=ckpt)

    run(a)
    assert ckpt.is_file()  # the epoch-1 checkpoint stays until the stage removes it
    assert run(b).resumed_from is None and len(_set_aside(ckpt)) == 1
    assert run(b).resumed_from == 1  # its own checkpoint is resumed


def test_fingerprint_sees_the_source_of_every_loaded_library_module(tmp_path, monkeypatch):
    import types

    from pathtrail.train.inputs import library_code_sha256

    before = library_code_sha256()
    source = tmp_path / "probe.py"
    source.write_text("X = 1\n")
    probe = types.ModuleType("pathtrail._probe")
    probe.__file__ = str(source)
    monkeypatch.setitem(sys.modules, "pathtrail._probe", probe)  # as if train had imported it
    with_probe = library_code_sha256()
    source.write_text("X = 2\n")
    assert len({before, with_probe, library_code_sha256()}) == 3
