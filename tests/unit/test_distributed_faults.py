"""DDP failure paths on two real gloo processes: an error on one rank ends every rank, fast.

Run as a script, this file is one rank of a scenario (`--scenario NAME --rank R --out DIR`); it
writes what happened to `DIR/rank<R>.json`.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from conftest import REPO

TIMEOUT = 120


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(scenario: str, out: Path) -> list[subprocess.Popen]:
    port = _free_port()
    procs = []
    for rank in (0, 1):
        env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2",
                   OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([str(REPO / "src"), str(REPO / "tests")]))
        procs.append(subprocess.Popen([sys.executable, __file__, "--scenario", scenario, "--rank", str(rank),
                                       "--out", str(out)], env=env, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.PIPE))
    return procs


def _outcomes(procs: list[subprocess.Popen], out: Path) -> list[dict]:
    for p in procs:
        _, err = p.communicate(timeout=TIMEOUT)
        assert p.returncode == 0, err.decode()[-3000:]
    return [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]


def test_an_error_in_rank_0_only_work_ends_both_ranks_and_a_bad_checkpoint_is_set_aside_once(tmp_path):
    """Rank 0 fails while writing the checkpoint: it raises its error, rank 1 a one-line PeerFailed
    (the error is reported once); then an unreadable checkpoint is set aside by rank 0 alone and
    both ranks start afresh."""
    (tmp_path / "last.pt").write_bytes(np.random.default_rng(1).bytes(1000))
    outcomes = _outcomes(_start("rank0_work", tmp_path), tmp_path)
    assert outcomes[0]["error"] == "PathTrailError" and "disk full (injected)" in outcomes[0]["message"]
    assert outcomes[1]["error"] == "PeerFailed"
    assert "rank 0 failed while writing the checkpoint" in outcomes[1]["message"]
    assert "disk full" not in outcomes[1]["message"]
    assert all(o["seconds"] < 30 for o in outcomes)
    assert [o["resumed"] for o in outcomes] == [False, False]
    assert not (tmp_path / "last.pt").exists() and len(list(tmp_path.glob("last.pt.rejected-*"))) == 1


def test_a_hung_rank_ends_the_other_within_the_collective_timeout(tmp_path):
    procs = _start("hung_peer", tmp_path)
    _, err = procs[0].communicate(timeout=TIMEOUT)
    assert procs[0].returncode == 0, err.decode()[-3000:]
    procs[1].kill()
    procs[1].wait(TIMEOUT)
    rank0 = json.loads((tmp_path / "rank0.json").read_text())
    assert rank0["collective_failure"] and rank0["error"] == "PeerFailed", rank0
    assert rank0["seconds"] < 15  # timeout 2 s; rank 1 sleeps 60 s before its all-reduce


def _scenario(name: str, rank: int, out: Path) -> dict:
    import datetime

    import torch

    from pathtrail.core.errors import PathTrailError
    from pathtrail.train import distributed as D
    from pathtrail.train.resume import read_checkpoint

    world = D.World(rank=rank, size=2, local_rank=rank, local_size=2)
    (out / f"ready{rank}").touch()  # start together: the hung-peer group has a 2 s timeout
    while not all((out / f"ready{r}").exists() for r in (0, 1)):
        time.sleep(0.01)
    timeout = datetime.timedelta(seconds=2 if name == "hung_peer" else 60)
    result: dict = {}
    with D.process_group(world, torch.device("cpu"), timeout=timeout):
        D.barrier(world)
        t0 = time.monotonic()
        try:
            if name == "rank0_work":
                def fail():
                    raise PathTrailError("disk full (injected)")
                D.main_only(fail, world, "writing the checkpoint")
            elif name == "hung_peer":
                if rank == 1:
                    time.sleep(60)
                D.all_reduce_sum(torch.zeros(3), world)
        except Exception as exc:  # noqa: BLE001  recorded for the test to judge
            failure = D.is_collective_failure(exc)
            exc = D.peer_failure(exc, world) if failure else exc
            result.update(error=type(exc).__name__, message=str(exc), collective_failure=failure)
        result["seconds"] = time.monotonic() - t0
        if name == "rank0_work":  # the group survives a failure in rank-0-only work
            result["resumed"] = read_checkpoint(out / "last.pt", "fp", world) is not None
        (out / f"rank{rank}.json").write_text(json.dumps(result))
        if name == "hung_peer":
            os._exit(0)  # the group is broken: do not wait in its teardown
    return result


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("--scenario", required=True)
    parser.add_argument("--rank", type=int, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    _scenario(args.scenario, args.rank, args.out)

