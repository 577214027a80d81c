"""bench/optimizations.py at a tiny size: the table's columns mean what the README says."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import REPO


@pytest.mark.slow
def test_tiny_optimization_run(tmp_path):
    out = tmp_path / "opt.json"
    cmd = [sys.executable, str(REPO / "bench/optimizations.py"), "--out", str(out), "--patients", "3",
           "--patches", "4", "--epochs", "2", "--variants", "baseline,adamw_foreach,stain_norm_off,amp_fp16",
           "--sweep", "8,16"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=900, check=False,
                          env={**os.environ, "PYTHONPATH": str(REPO / "src")})
    assert done.returncode == 0, done.stderr[-3000:]
    d = json.loads(out.read_text())
    v = d["variants"]
    assert v["baseline"]["same_weights_as_baseline"] is True and v["baseline"]["speedup"] == 1.0
    assert v["adamw_foreach"]["samples_per_s"] > 0 and 0 <= v["adamw_foreach"]["external_auroc"] <= 1
    assert v["stain_norm_off"]["same_weights_as_baseline"] is False  # other pixels, other weights
    if not d["machine"]["cuda"]:
        assert v["amp_fp16"] == {"skipped": "needs CUDA (this run is on a CPU)"}
        ro = d["inference"]["reduce-overhead"]
        assert ro["compiled"] is False and ro["max_abs_diff_vs_eager"] == 0.0 and "fallback" in ro
    assert d["inference"]["none"]["max_abs_diff_vs_eager"] == 0.0
    rows = d["batch_sweep"]["rows"]
    assert [r["batch_size"] for r in rows] == [8, 16] and all(r["peak_memory_mb"] > 0 for r in rows)
    assert d["batch_sweep"]["largest_that_fits"] == 16
    assert "| baseline |" in done.stdout
