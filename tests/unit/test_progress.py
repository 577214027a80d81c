"""Progress bars and the status line: drawn on a terminal, absent without one (CI logs stay clean)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pty_run import run_on_pty

SCRIPT = """
import time
from pathtrail.core.logs import set_progress
from pathtrail.core.progress import bar, status
set_progress({mode!r})
b = bar(total=8, desc="epoch 1/2", unit="sample")
for _ in range(4):
    b.update(2); b.set_postfix(loss=0.25); time.sleep(0.05)
b.close()
with status("compiling the model"):
    time.sleep(0.7)
print("finished")
"""


def _cmd(mode: str) -> list[str]:
    return [sys.executable, "-c", SCRIPT.format(mode=mode)]


def test_on_a_terminal_bars_and_status_are_drawn():
    status, out = run_on_pty(_cmd("auto"), env=dict(os.environ))
    assert status == 0, out
    assert "epoch 1/2" in out and "8/8" in out and "loss=0.25" in out
    assert "compiling the model" in out and "done in" in out and "finished" in out


def test_without_a_terminal_nothing_is_drawn():
    done = subprocess.run(_cmd("auto"), capture_output=True, text=True, check=False)
    assert done.returncode == 0 and done.stdout == "finished\n" and done.stderr == ""


def test_always_and_never_override_the_terminal_check():
    done = subprocess.run(_cmd("always"), capture_output=True, text=True, check=False)
    assert "8/8" in done.stderr and "done in" in done.stderr
    status, out = run_on_pty(_cmd("never"), env=dict(os.environ))
    assert status == 0 and out.strip() == "finished"


TRAIN = """
import sys
from pathlib import Path

import pytest
from pathlib import Path
sys.path.insert(0, {tests!r})
from test_training import _fit, _params, make_tiny_store
from pathtrail.core.logs import set_progress
tmp = Path({tmp!r})
set_progress("auto")
store, train, val = make_tiny_store(tmp)
_fit(store, train, val, _params(tmp, **{{"train.epochs": 2, "train.use_compile": {compile}}}))
print("trained")
"""


def _train_cmd(tmp_path, compile_: bool = False) -> list[str]:
    tests = str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)
    script = TRAIN.format(tests=tests[1], tmp=str(tmp_path), compile=compile_).replace(
        "sys.path.insert(0, ", f"sys.path.insert(0, {tests[0]!r}); sys.path.insert(0, ")
    return [sys.executable, "-c", script]


def test_training_shows_per_batch_progress_only_on_a_terminal(tmp_path):
    status, out = run_on_pty(_train_cmd(tmp_path / "a"), env=dict(os.environ))
    assert status == 0, out
    assert "train epoch 1/2" in out and "train epoch 2/2" in out and "4/4" in out
    assert "loss=" in out and "samples_s=" in out and "trained" in out
    done = subprocess.run(_train_cmd(tmp_path / "b"), capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert "train epoch" not in done.stderr and "samples_s=" not in done.stderr


@pytest.mark.slow
def test_compiling_shows_a_status_line_on_a_terminal(tmp_path):
    status, out = run_on_pty(_train_cmd(tmp_path, compile_=True), env=dict(os.environ), timeout=900)
    assert status == 0, out
    assert "torch.compile: compiling the model" in out and "done in" in out
    assert "torch.compile: compiling the validation pass" in out and "trained" in out
