"""Stage normalize with `stain.fallback: slide`: slides are normalized whole, and
reports/normalization.json counts the patches that used their slide's estimate."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import tiny_params, write_params
from pathtrail.core.files import read_json, read_table
from pathtrail.data.store import load_rgb, open_store
from pathtrail.provenance.audit import read_entries
from pathtrail.stain import MacenkoNormalizer


def run_stage(name: str) -> None:
    importlib.import_module(f"stages.{name}").main(["--log-file", f"logs/{name}.jsonl"])


def _make_sparse(path: Path) -> None:
    """Glass with one 8x8 spot of the patch's own tissue: < 5 % tissue, so its own estimate is
    unusable, while its slide's other patches are tissue-rich demo patches."""
    image = np.asarray(Image.open(path).convert("RGB"))
    sparse = np.full_like(image, 245)
    sparse[20:28, 20:28] = image[20:28, 20:28]
    Image.fromarray(sparse).save(path)


def test_slide_fallback_counts_reach_the_report(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PATHTRAIL_AUDIT_TRAIL", str(tmp_path / "audit/trail.jsonl"))
    params = tiny_params(tmp_path, **{"stain.fallback": "slide"})
    write_params(tmp_path, params)
    run_stage("demo_data")
    raw = Path("data/raw")
    manifest = read_table(raw / "internal.csv")
    slide = manifest.slide_id.value_counts().index[0]  # a slide with several patches
    members = sorted(manifest.path[manifest.slide_id == slide])
    _make_sparse(raw / members[1])
    for name in ("validate", "split", "stain_fit", "normalize"):
        run_stage(name)

    report = json.loads(Path("reports/normalization.json").read_text())
    assert report["fallback"] == "slide" and report["scope"] == "patch"
    for counts in report["cohorts"].values():
        assert set(counts) == {"patches", "fallback", "fallback_slide"}
        assert 0 <= counts["fallback_slide"] <= counts["fallback"] <= counts["patches"]
    assert report["cohorts"]["internal"]["fallback_slide"] >= 1
    end = [e for e in read_entries(tmp_path / "audit/trail.jsonl")
           if e["stage"] == "normalize" and e["action"] == "end"]
    assert len(end) == 1 and end[0]["outcome"] == "ok"

    # the sparse patch was normalized with its whole slide's estimate (patches sorted by path)
    normalizer = MacenkoNormalizer.from_dict(read_json("models/stain_reference.json"))
    assert normalizer.fallback == "slide"
    validated = set(read_table("data/validated/internal.csv").path)
    kept = [p for p in members if p in validated]
    assert members[1] in kept
    batch = np.stack([load_rgb(raw / p, params["data"]["patch_size"]) for p in kept])
    expected = normalizer.normalize_slide(batch)[kept.index(members[1])]
    store = open_store("data/store")
    stored = store.patch(int(store.rows_for([members[1]])[0]))
    assert np.array_equal(stored, expected)
    reference = MacenkoNormalizer.from_dict(normalizer.to_dict(), fallback="reference")
    assert not np.array_equal(stored, reference.normalize(batch[kept.index(members[1])][None])[0])


def test_unknown_fallback_stops_the_stage(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    write_params(tmp_path, tiny_params(tmp_path, **{"stain.fallback": "slides"}))
    with pytest.raises(SystemExit):
        run_stage("normalize")
    err = capsys.readouterr().err
    assert "stain.fallback" in err and "'slide'" in err and "Traceback" not in err


def test_store_bytes_do_not_depend_on_workers(tmp_path, monkeypatch):
    """Row groups run on runtime.num_workers threads, a few in flight, and are written in order."""
    from pathtrail.core.hashing import sha256_path
    from pathtrail.pipeline import normalize

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PATHTRAIL_AUDIT_TRAIL", str(tmp_path / "audit/trail.jsonl"))
    write_params(tmp_path, tiny_params(tmp_path))
    for name in ("demo_data", "validate", "split", "stain_fit"):
        run_stage(name)
    monkeypatch.setattr(normalize, "CHUNK", 7)  # many row groups, so several are in flight
    digests = {}
    for workers in (0, 1, 3):
        monkeypatch.setenv("PATHTRAIL_NUM_WORKERS", str(workers))
        run_stage("normalize")
        digests[workers] = (sha256_path("data/store"), Path("reports/normalization.json").read_bytes())
    assert digests[0] == digests[1] == digests[3]
    assert len(list(Path("data/store").glob("shard_*.npy"))) >= 1
    ends = [e for e in read_entries(tmp_path / "audit/trail.jsonl")
            if e["stage"] == "normalize" and e["action"] == "end"]
    assert [e["facts"]["workers"] for e in ends] == [0, 1, 3]
    assert all(e["facts"]["device"] == ("cuda" if torch.cuda.is_available() else "cpu") for e in ends)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_normalize_runs_on_cuda_when_present(tmp_path):
    """On a GPU the store is normalized there; CUDA bits may differ from the CPU's by rounding
    (README, "GPU users"); each is within 1 level of the float64 map, so they are within 2."""
    import dataclasses

    import pandas as pd

    from pathtrail.config.loading import parse_section
    from pathtrail.config.sections import DataParams, StainParams
    from pathtrail.core.parallel import PerThread
    from pathtrail.pipeline.normalize import normalize_group

    params = tiny_params(tmp_path)
    data = dataclasses.replace(parse_section(params, "data", DataParams), patch_size=32)
    stain = dataclasses.replace(parse_section(params, "stain", StainParams), enable_stain_norm=True,
                                scope="patch")
    rng = np.random.default_rng(0)
    root = tmp_path / "raw"
    root.mkdir()
    base = np.array([200, 120, 190], dtype=np.int16)
    for i in range(6):
        image = np.clip(base + rng.integers(-40, 40, (32, 32, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(image).save(root / f"p{i}.png")
    group = pd.DataFrame({"path": [f"p{i}.png" for i in range(6)], "slide_id": ["s"] * 6})
    normalizers = PerThread(MacenkoNormalizer())
    _, raw, gpu, _ = normalize_group(group, normalizers, root, data, stain, torch.device("cuda"))
    _, _, cpu, _ = normalize_group(group, normalizers, root, data, stain, torch.device("cpu"))
    assert gpu.dtype == np.uint8 and gpu.shape == raw.shape
    assert np.abs(gpu.astype(int) - cpu.astype(int)).max() <= 2
