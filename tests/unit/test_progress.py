"""Progress bars and the status line: drawn on a terminal, absent without one (CI logs stay clean)."""

from __future__ import annotations

import os
import subprocess
import sys

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
