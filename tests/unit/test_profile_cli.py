"""`pathtrail profile`: a trace and a summary of real training steps, written outside every hashed file."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import yaml

from conftest import REPO, tiny_params, write_params
from pathtrail.cli.main import main
from pathtrail.core.hashing import sha256_path
from pathtrail.data.store import StoreWriter


@pytest.fixture
def workspace(tmp_path):
    params = tiny_params(tmp_path, **{"train.batch_size": 8})
    params["profiler"] = yaml.safe_load((REPO / "pipelines/profiler/steps.yaml").read_text())
    size = params["data"]["patch_size"]
    rng = np.random.default_rng(0)
    paths = [f"p{i:02d}.png" for i in range(24)]
    writer = StoreWriter(tmp_path / "data/store", shard_size=8, patch_shape=(size, size, 3))
    writer.add(rng.integers(0, 256, (24, size, size, 3), dtype=np.uint8), pd.DataFrame({"path": paths}))
    writer.close()
    (tmp_path / "data/split").mkdir(parents=True)
    for name, rows in (("train", paths[:16]), ("val", paths[16:])):
        pd.DataFrame({"path": rows, "label": [i % 2 for i in range(len(rows))]}).to_csv(
            tmp_path / f"data/split/{name}.csv", index=False)
    write_params(tmp_path, params)
    return tmp_path


def _files(root):
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


def test_profile_writes_a_trace_and_a_summary_and_nothing_else(workspace, capsys):
    before, store_sha = _files(workspace), sha256_path(workspace / "data/store")
    assert main(["profile", "--active", "2"]) == 0
    out = capsys.readouterr().out
    summary = json.loads((workspace / "reports/profile/summary.json").read_text())
    assert summary["steps"] == {"wait": 1, "warmup": 1, "active": 2} and summary["device"] in ("cpu", "cuda")
    assert summary["samples_per_s"] > 0 and summary["peak_memory"]["cpu_peak_rss_mb"] > 0
    rows = summary["summary_rows"]
    assert 1 <= len(rows) <= 15 and any(r["op"].startswith("aten::") for r in rows)
    assert [r["self_cpu_ms"] for r in rows] == sorted((r["self_cpu_ms"] for r in rows), reverse=True)
    trace = json.loads((workspace / "reports/profile/trace.json").read_text())
    names = {e.get("name") for e in trace["traceEvents"]}
    assert "pathtrail.train_step" in names and rows[0]["op"] in names
    assert rows[0]["op"] in out and "samples/s" in out
    assert (workspace / "reports/profile/summary.md").read_text().startswith("# Profile: 2 training steps")
    added = _files(workspace) - before
    assert added == {"reports/profile/trace.json", "reports/profile/summary.json", "reports/profile/summary.md",
                     "reports/profile/.pathtrail-profile"}
    assert main(["profile", "--active", "1"]) == 0  # its own folder is replaced by the next profile
    assert json.loads((workspace / "reports/profile/summary.json").read_text())["steps"]["active"] == 1
    assert sha256_path(workspace / "data/store") == store_sha


def test_missing_store_is_a_clear_error(workspace, capsys):
    assert main(["profile", "--store", "nowhere"]) == 1
    err = capsys.readouterr().err
    assert "--store 'nowhere': no such folder" in err and "dvc repro normalize" in err
    assert not (workspace / "reports/profile").exists()


def test_a_folder_with_other_files_is_never_replaced(workspace, capsys):
    keep = workspace / "models"
    keep.mkdir()
    (keep / "model.pt").write_bytes(b"weights")
    assert main(["profile", "--out", "models"]) == 1
    assert "holds files this command did not write (model.pt)" in capsys.readouterr().err
    assert (keep / "model.pt").read_bytes() == b"weights"


def test_unknown_preset_and_bad_values(workspace, capsys):
    assert main(["profile", "--preset", "nope"]) == 1
    assert "--preset 'nope': no such preset in pipelines/profiler; presets there: none" in capsys.readouterr().err
    assert main(["profile", "--active", "0"]) == 1
    assert "'profiler.active' must be in [1, 1000]" in capsys.readouterr().err


@pytest.mark.gpu
def test_on_cuda_the_profile_has_cuda_times_and_memory(workspace):
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    assert main(["profile", "--active", "2"]) == 0
    summary = json.loads((workspace / "reports/profile/summary.json").read_text())
    assert summary["device"] == "cuda" and summary["peak_memory"]["cuda_max_allocated_mb"] > 0
    assert all("self_cuda_ms" in r for r in summary["summary_rows"])


@pytest.mark.parametrize("make", ["nested", "generic", "dot", "inside_store", "above_store"])
def test_nothing_the_command_did_not_write_is_ever_replaced(workspace, capsys, make):
    keep = workspace / "victim"
    if make == "nested":  # a folder named like a profile file, with the user's notes in it
        (keep / "trace.json").mkdir(parents=True)
        (keep / "trace.json" / "notes.txt").write_text("precious")
        out, message = "victim", "holds files this command did not write (trace.json)"
    elif make == "generic":  # the user's own summary.md, without the mark file
        keep.mkdir()
        (keep / "summary.md").write_text("precious")
        out, message = "victim", "holds files this command did not write (summary.md)"
    elif make == "dot":
        out, message = ".", "is the working folder or above it"
    elif make == "inside_store":
        out, message = "data/store/prof", "lies inside the pipeline output"
    else:
        out, message = "data", "is, holds or lies inside the pipeline output"
    before = {p: p.read_bytes() for p in workspace.rglob("*") if p.is_file()}
    assert main(["profile", "--active", "1", "--out", out]) == 1
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert {p: p.read_bytes() for p in workspace.rglob("*") if p.is_file()} == before


def test_inputs_that_cannot_be_profiled_are_clear_errors(workspace, capsys):
    (workspace / "emptysplit").mkdir()
    assert main(["profile", "--split", "emptysplit"]) == 1
    assert "--split 'emptysplit' has no train.csv" in capsys.readouterr().err
    (workspace / "params.yaml.d").write_text("a file")
    assert main(["profile", "--out", "params.yaml.d/sub"]) == 1
    assert "params.yaml.d is not a folder" in capsys.readouterr().err
    (workspace / "pipelines/profiler").mkdir(parents=True)
    (workspace / "pipelines/profiler/broken.yaml").write_text("wait: [1")
    assert main(["profile", "--preset", "broken"]) == 1
    assert "broken.yaml: not readable as UTF-8 YAML" in capsys.readouterr().err
    assert main(["profile", "--store", "\x1b[2Jzz"]) == 1
    err = capsys.readouterr().err
    assert "\x1b" not in err and "no such folder" in err
    header = (workspace / "data/split/train.csv").read_text().splitlines()[0]
    (workspace / "emptytrain").mkdir()
    (workspace / "emptytrain/train.csv").write_text(header + "\n")
    (workspace / "emptytrain/val.csv").write_text((workspace / "data/split/val.csv").read_text())
    assert main(["profile", "--split", "emptytrain", "--active", "1"]) == 1
    assert "the train split has no patches" in capsys.readouterr().err
    assert not (workspace / "reports/profile").exists()
