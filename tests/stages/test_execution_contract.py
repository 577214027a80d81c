"""The execution contract for real: the stages, run as `dvc repro` runs them (`python -m stages.X`, a
fresh process each), give the same bytes whatever the machine's thread count, CPU kernel level or
loader workers; and with the contract lifted the same variation does change the weights."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import REPO, tiny_params
from pathtrail.core.hashing import sha256_path

STAGES = ("demo_data", "validate", "split", "stain_fit", "normalize", "train", "evaluate")
OUTPUTS = ("data/raw", "data/validated", "data/split", "models/stain_reference.json", "data/store",
           "models/model.pt", "models/val_probs.csv", "metrics/train.json", "predictions", "metrics/eval.json",
           "plots/eval", "reports/validation.json", "reports/split.json", "reports/normalization.json")
# What a reviewer's machine may differ in (the variables the contract pins, and the core count).
MACHINE = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "ATEN_CPU_CAPABILITY",
           "ONEDNN_MAX_CPU_ISA", "MKL_CBWR", "OPENBLAS_CORETYPE", "NPY_DISABLE_CPU_FEATURES")

pytestmark = pytest.mark.slow


def run_stages(folder: Path, machine: dict[str, str], stages=STAGES, **overrides) -> dict[str, str]:
    """Write tiny params into `folder`, run `stages` there as separate processes; output sha256s."""
    folder.mkdir(parents=True, exist_ok=True)
    params = tiny_params(folder, **{"train.epochs": 1, "eval.n_bootstrap": 100, **overrides})
    (folder / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k not in MACHINE}
    env |= {**machine, "PYTHONPATH": str(REPO), "DVC_NO_ANALYTICS": "1"}
    for stage in stages:
        done = subprocess.run([sys.executable, "-m", f"stages.{stage}", "--trail", "trail.jsonl"], check=False,
                              cwd=folder,
                              env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, f"{stage} under {machine}:\n{done.stderr[-3000:]}"
    return {rel: sha256_path(folder / rel) for rel in OUTPUTS if (folder / rel).exists()}


def test_other_threads_kernels_and_workers_give_identical_outputs(tmp_path):
    folder = tmp_path / "run"  # the same path both times: absolute data paths are part of the params
    best = run_stages(folder, {}, **{"runtime.num_workers": 0})
    assert set(best) == set(OUTPUTS)
    folder.rename(tmp_path / "first")
    other = run_stages(folder, {"OMP_NUM_THREADS": "1", "ONEDNN_MAX_CPU_ISA": "AVX2",
                                "ATEN_CPU_CAPABILITY": "default", "MKL_NUM_THREADS": "3"},
                       **{"runtime.num_workers": 2, "runtime.persistent_workers": True})
    assert other == best
    # the trail says what each stage ran with: the contract honoured, the runtime knobs as set
    from pathtrail.provenance.audit import read_entries

    starts = [e for e in read_entries(folder / "trail.jsonl") if e["action"] == "start"]
    assert [e["stage"] for e in starts] == list(STAGES)
    assert all(e["execution"]["honoured"] and e["execution"]["threads"] == 1 for e in starts)
    assert all(e["execution"]["aten_cpu_capability"] == "AVX2" for e in starts)
    assert {e["runtime"]["num_workers"] for e in starts} == {2}


def _has_avx2() -> bool:
    import torch

    return torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512")


@pytest.mark.skipif(not _has_avx2(), reason="the control compares AVX2 kernels with the default ones")
def test_with_the_contract_lifted_the_kernel_level_changes_the_weights(tmp_path):
    """The negative control: the variation the test above survives is a real one."""
    folder = tmp_path / "run"
    run_stages(folder, {}, stages=STAGES[:5])
    shutil.copytree(folder, tmp_path / "base")
    weights = {}
    for name, machine in (("avx2", {"ATEN_CPU_CAPABILITY": "avx2"}), ("default", {"ATEN_CPU_CAPABILITY": "default"})):
        lifted = run_stages(folder, machine, stages=("train",),
                            **{"execution.threads": 0, "execution.cpu_isa": "native"})
        weights[name] = lifted["models/model.pt"]
        shutil.rmtree(folder)
        shutil.copytree(tmp_path / "base", folder)
    assert weights["avx2"] != weights["default"]
