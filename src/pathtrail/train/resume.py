"""The resumable training checkpoint (`checkpoints/train/last.pt`): save, read, restore.

It holds the model, optimizer, scheduler and scaler states, every rank's RNG state, the compile
state and the loop's bookkeeping, so a resumed run continues bitwise-exactly (checkpoints are only
written at optimizer-step boundaries). The file format and its checks are in
`pathtrail.train.checkpoint_file`: a checkpoint made by another run (see `run_fingerprint`), with
another number of processes, or not one at all, is set aside with a warning, never executed.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import structlog
import torch

from pathtrail.core.errors import PathTrailError
from pathtrail.core.hashing import digest
from pathtrail.core.text import printable
from pathtrail.train import distributed as D
from pathtrail.train.checkpoint_file import (
    Rejected,
    kind_of,
    load_checkpoint_file,
    set_aside,
    write_checkpoint_file,
)
from pathtrail.train.distributed import World

if TYPE_CHECKING:
    from pathtrail.train.steps import TrainingRun

log = structlog.get_logger(__name__)


def run_fingerprint(inputs_fingerprint: str, device: torch.device, world: World) -> str:
    """What a checkpoint must match to be resumed: the inputs' fingerprint (params, store content,
    splits, stain reference, library code; see `inputs.load_training_inputs`) plus the torch
    version, device type and number of processes this run has."""
    return digest({"inputs": inputs_fingerprint, "torch": str(torch.__version__), "device": device.type,
                   "world_size": world.size})


@dataclass
class Resumable:
    """A checkpoint that passed every check on rank 0: its payload and the file's sha256."""
    payload: dict[str, Any]
    sha256: str


def read_checkpoint(checkpoint: Path | None, fingerprint: str, world: World,
                    expected_sha256: str | None = None) -> Resumable | None:
    """Rank 0 reads the checkpoint and hands it to every rank (no shared filesystem needed).

    A file this run cannot resume from, for whatever reason (see `load_checkpoint_file`; with
    `expected_sha256`, any other content than that), is set aside (renamed, warning) and None
    returned: training starts afresh. A checkpoint path that stays blocked (it could not be set
    aside) or cannot be written fails here, before any training, with what to do. An unexpected
    error on rank 0 ends every rank (`distributed.main_only`).
    """
    def read() -> Resumable | None:
        if checkpoint is None:
            return None
        found = None
        if os.path.lexists(checkpoint):
            try:
                found = Resumable(*load_checkpoint_file(checkpoint, fingerprint, world.size, expected_sha256))
            except Rejected as exc:
                set_aside(checkpoint, str(exc))
            except Exception as exc:  # noqa: BLE001  any failure reading it (OSError, MemoryError...): not resumable
                set_aside(checkpoint, f"unreadable: {type(exc).__name__}: {exc}")
        check_writable(checkpoint, accepted=found is not None)
        return found

    return D.main_only(read, world, "reading the checkpoint")


def check_writable(checkpoint: Path, *, accepted: bool) -> None:
    """Fail now, not after an epoch of work, when checkpoints could not be written at `checkpoint`."""
    what = None
    if not accepted and os.path.lexists(checkpoint):
        what = f"it is taken by a {kind_of(os.lstat(checkpoint).st_mode)} that could not be set aside (see the warning above)"
    else:
        try:
            checkpoint.parent.mkdir(parents=True, exist_ok=True)
            fd, probe = tempfile.mkstemp(prefix=f".{checkpoint.name}.", suffix=".tmp", dir=checkpoint.parent)
            os.close(fd)
            os.unlink(probe)
        except OSError as exc:
            what = f"a file cannot be written there ({exc.strerror or exc})"
    if what:
        raise PathTrailError(f"cannot keep the resumable checkpoint at {printable(str(checkpoint))}: {what}. Move or "
                             "remove what is in the way, fix the folder's permissions, or name another checkpoint "
                             "path, then rerun.")


def try_restore(run: TrainingRun, ck: dict[str, Any]) -> str | None:
    """Restore `ck` into `run` on every rank; None when it worked everywhere, else the first rank's
    reason (every rank gets the same answer; the run is then half-restored and must be rebuilt)."""
    try:
        check_payload(ck, run.world, run.net.state_dict())
        restore(run, ck)
        problem = None
    except Exception as exc:  # noqa: BLE001  load_state_dict and friends raise many kinds
        problem = f"rank {run.world.rank}: {type(exc).__name__}: {exc}"[:500]
    return next((p for p in D.all_gather_object(problem, run.world) if p is not None), None)


def check_payload(ck: dict[str, Any], world: World, weights: dict[str, torch.Tensor]) -> None:
    """Raise ValueError when the payload lacks a part of a checkpoint or the loop's bookkeeping, or
    its best weights are not those of this model (`weights`: its state_dict)."""
    from pathtrail.train.steps import new_state

    missing = [k for k in ("model", "optimizer", "scheduler", "scaler", "rng_cpu_ranks", "rng_cuda_ranks", "state")
               if k not in ck]
    if missing:
        raise ValueError(f"the checkpoint lacks {', '.join(missing)}")
    for k in ("rng_cpu_ranks", "rng_cuda_ranks"):
        if not isinstance(ck[k], list) or len(ck[k]) != world.size:
            raise ValueError(f"{k} is not one entry per process")
    state, fresh = ck["state"], new_state()
    if missing := sorted(set(fresh) - set(state)):
        raise ValueError(f"the loop's state lacks {', '.join(missing)}")
    for k, v in fresh.items():
        kinds = (int, float) if isinstance(v, float) else (type(v),) if v is not None else (object,)
        if not isinstance(state[k], kinds) or (isinstance(v, int) and isinstance(state[k], bool) != isinstance(v, bool)):
            raise ValueError(f"the loop's state has {k} of type {type(state[k]).__name__}")
    if state["epoch"] < 0 or state["batch"] < 0 or len(state["history"]) != state["epoch"]:
        raise ValueError("the loop's state has a negative epoch or batch, or a history of another length")
    best = state["best_state"]
    if best is not None and not (isinstance(best, dict) and best.keys() == weights.keys() and all(
            isinstance(best[k], torch.Tensor) and best[k].shape == w.shape and best[k].dtype == w.dtype
            for k, w in weights.items())):
        raise ValueError("the best weights in the checkpoint are not this model's (names, shapes or dtypes differ)")


def restore(run: TrainingRun, ck: dict[str, Any]) -> None:
    """Put a run back where the checkpoint left it (weights, optimizer, RNG, bookkeeping)."""
    run.net.load_state_dict(ck["model"])
    run.opt.load_state_dict(ck["optimizer"])
    if run.sched is not None:
        run.sched.load_state_dict(ck["scheduler"])
    run.scaler.load_state_dict(ck["scaler"])
    torch.set_rng_state(ck["rng_cpu_ranks"][run.world.rank])
    rng_cuda = ck["rng_cuda_ranks"][run.world.rank]
    if run.device.type == "cuda" and rng_cuda is not None:
        torch.cuda.set_rng_state(rng_cuda, run.device)
    state = dict(ck["state"])
    if isinstance(state.get("best_val_probs"), torch.Tensor):  # stored as a tensor (weights_only)
        state["best_val_probs"] = state["best_val_probs"].numpy()
    run.state = state
    compile_info = ck.get("compile") or {}
    if "eager_from_step" in compile_info:  # it fell back to eager before the stop: so does the rest
        from pathtrail.train.steps import use_eager

        run.compile_info.update(compile_info)
        use_eager(run)


def save_checkpoint(run: TrainingRun, checkpoint: Path | None, fingerprint: str,
                    on_saved: Callable[..., Any] | None = None) -> None:
    """Collective: every rank contributes its RNG state, rank 0 writes, all wait for the file
    (an error writing it ends every rank). Rank 0 then calls `on_saved(sha256=..., fingerprint=...,
    epoch=..., batch=...)` (e.g. to record the file in an audit trail)."""
    if checkpoint is None:
        return
    world, device = run.world, run.device
    rng_cpu = D.all_gather_object(torch.get_rng_state(), world)
    rng_cuda = D.all_gather_object(torch.cuda.get_rng_state(device) if device.type == "cuda" else None, world)

    def write() -> None:
        sha = write_checkpoint_file({
            "model": run.net.state_dict(), "optimizer": run.opt.state_dict(),
            "scheduler": run.sched.state_dict() if run.sched is not None else None,
            "scaler": run.scaler.state_dict(),
            "rng_cpu_ranks": rng_cpu, "rng_cuda_ranks": rng_cuda,
            "compile": dict(run.compile_info), "state": _plain_state(run.state),
        }, checkpoint, fingerprint, world.size)
        if on_saved is not None:
            on_saved(sha256=sha, fingerprint=fingerprint, epoch=run.state["epoch"], batch=run.state["batch"])

    D.main_only(write, world, "writing the checkpoint")


def _plain_state(state: dict[str, Any]) -> dict[str, Any]:
    """The loop's bookkeeping with its one NumPy array as a tensor, loadable with weights_only."""
    probs = state.get("best_val_probs")
    return {**state, "best_val_probs": torch.from_numpy(probs) if isinstance(probs, np.ndarray) else probs}
