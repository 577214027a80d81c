"""The compile check's run beside the train stage (`pathtrail.pipeline.other_mode`) dies with it.

The train stage, started as `python -m stages.train` on a tiny pipeline, is killed (SIGKILL) or
stopped (SIGTERM) while its second process trains: that process is gone within seconds, nothing
is published, and the stage's rerun publishes the run (tests/stages/test_pipeline_stages.py checks
its bits).
"""

from __future__ import annotations

import contextlib
import importlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO, tiny_params, write_params

pytestmark = pytest.mark.slow


def children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except FileNotFoundError:
        return []


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def other_mode_child(pid: int) -> int | None:
    """The process multiprocessing spawned (not its resource tracker)."""
    for c in children(pid):
        with contextlib.suppress(FileNotFoundError):
            if b"spawn_main" in Path(f"/proc/{c}/cmdline").read_bytes():
                return c
    return None


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("other_mode")
    shutil.copytree(REPO / "stages", root / "stages", ignore=shutil.ignore_patterns("__pycache__"))
    # long enough that neither run could end by itself during the test
    write_params(root, tiny_params(root, **{"train.epochs": 500, "train.early_stopping.patience": 1000}))
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.setenv("PATHTRAIL_AUDIT_TRAIL", str(root / "audit/trail.jsonl"))
        for name in ("demo_data", "validate", "split", "stain_fit", "normalize"):
            importlib.import_module(f"stages.{name}").main(["--log-file", f"logs/{name}.jsonl"])
    return root


@pytest.mark.parametrize("signame", ["SIGKILL", "SIGTERM"])
def test_the_other_mode_run_dies_with_the_train_stage(root, signame):
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "PATHTRAIL_AUDIT_TRAIL": str(root / "audit/trail.jsonl")}
    proc = subprocess.Popen([sys.executable, "-m", "stages.train", "--log-file", "logs/train.jsonl"], cwd=root,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while (child := other_mode_child(proc.pid)) is None:
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()[-3000:]
        time.sleep(0.05)
    time.sleep(2)  # the second process is importing or training
    assert alive(child)
    proc.send_signal(getattr(signal, signame))
    code = proc.wait(timeout=120)
    err = proc.stderr.read()
    if signame == "SIGKILL":
        assert code == -signal.SIGKILL, err[-3000:]
    else:  # before its first optimizer step the stage exits 130; after, it stops at a step boundary
        stopped = "training interrupted by signal 15" in err and "checkpoint saved" in err
        assert code == 130 or (code == 1 and stopped), err[-3000:]
    deadline = time.monotonic() + 20
    while alive(child):
        assert time.monotonic() < deadline, f"the other mode's run (pid {child}) outlived the train stage"
        time.sleep(0.05)
    assert not (root / "models/other_mode_run.pt").exists() and not (root / "models/model.pt").exists()
