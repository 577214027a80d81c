"""The train stage under torchrun when one rank fails inside a training step: every rank ends
promptly, the error is reported once, nothing is written.

Run as a script (by torchrun), this file is the stage with one injected fault: on rank
`--fail-rank`, loading the `--fail-at`-th patch raises a PathTrailError; nothing else changes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
from test_train_stage import TIMEOUT, make_inputs, stage_args, stage_entries, subprocess_env

INJECTED = "injected fault: patch unreadable"


@pytest.mark.slow
def test_an_error_on_one_rank_in_a_step_ends_every_rank_and_is_reported_once(tmp_path):
    params = make_inputs(tmp_path)  # nproc_per_node 1: torchrun decides (2 processes)
    out, trail = tmp_path / "run", tmp_path / "trail.jsonl"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", __file__,
           "--fail-rank", "1", "--fail-at", "20", "--", *stage_args(params, out, trail)]
    t0 = time.monotonic()
    proc = subprocess.run(cmd, cwd=tmp_path, env=subprocess_env(OMP_NUM_THREADS="1"), capture_output=True,
                          text=True, timeout=TIMEOUT, check=False)
    elapsed = time.monotonic() - t0
    assert proc.returncode != 0
    # Reported once, by the rank that failed (its message on the console, its event in the log
    # file); rank 0 says it stopped.
    assert proc.stderr.count(f"ERROR in stage 'train':\n{INJECTED}") == 1, proc.stderr[-4000:]
    assert proc.stderr.count(INJECTED) == 1
    logged = [json.loads(line) for line in (out / "train.jsonl").read_text().splitlines() if line.startswith("{")]
    assert [e.get("rank") for e in logged if INJECTED in json.dumps(e)] == [1]
    assert "rank 0 stopped: a collective with the other training processes failed" in proc.stderr, \
        proc.stderr[-4000:]
    assert not (out / "model.pt").exists() and not (out / "train.json").exists()
    end = stage_entries(trail)[-1]
    assert end["action"] == "end" and end["outcome"] == "failed" and "rank 0 stopped" in end["error"]
    assert elapsed < TIMEOUT / 2


def _main() -> None:
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("--fail-rank", type=int, required=True)
    parser.add_argument("--fail-at", type=int, required=True)
    own, rest = sys.argv[1:sys.argv.index("--")], sys.argv[sys.argv.index("--") + 1:]
    opts = parser.parse_args(own)

    from pathtrail.core.errors import PathTrailError
    from pathtrail.data.loaders import PatchDataset

    original = PatchDataset.__getitem__
    calls = {"n": 0}

    def failing(self, key):
        calls["n"] += 1
        if int(os.environ.get("RANK", "0")) == opts.fail_rank and calls["n"] == opts.fail_at:
            raise PathTrailError(INJECTED)
        return original(self, key)

    PatchDataset.__getitem__ = failing
    import stages.train

    stages.train.main(rest)


if __name__ == "__main__":
    _main()
