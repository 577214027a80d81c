"""The resumable training checkpoint (`checkpoints/train/last.pt`): save, read, restore.

It holds the model, optimizer, scheduler and scaler states, every rank's RNG state, the compile
state and the loop's bookkeeping, so a resumed run continues bitwise-exactly (checkpoints are only
written at optimizer-step boundaries). The file format and its checks are in
`pathtrail.train.checkpoint_file`: a checkpoint made by another run (see `run_fingerprint`), with
another number of processes, or not one at all, is set aside with a warning, never executed.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import structlog
import torch

from pathtrail.core.hashing import digest
from pathtrail.train import distributed as D
from pathtrail.train.checkpoint_file import (
    Rejected,
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


def read_checkpoint(checkpoint: Path | None, fingerprint: str, world: World) -> dict[str, Any] | None:
    """Rank 0 reads the checkpoint and hands it to every rank (no shared filesystem needed).

    A file this run cannot resume from is set aside (renamed, warning) and None returned: training
    starts afresh. An unexpected error on rank 0 ends every rank (`distributed.main_only`).
    """
    def read() -> dict[str, Any] | None:
        if checkpoint is None or not (checkpoint.exists() or checkpoint.is_symlink()):
            return None
        try:
            return load_checkpoint_file(checkpoint, fingerprint, world.size)
        except (Rejected, OSError) as exc:
            set_aside(checkpoint, str(exc) if isinstance(exc, Rejected) else f"unreadable: {exc}")
            return None

    return D.main_only(read, world, "reading the checkpoint")


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


def save_checkpoint(run: TrainingRun, checkpoint: Path | None, fingerprint: str) -> None:
    """Collective: every rank contributes its RNG state, rank 0 writes, all wait for the file
    (an error writing it ends every rank)."""
    if checkpoint is None:
        return
    world, device = run.world, run.device
    rng_cpu = D.all_gather_object(torch.get_rng_state(), world)
    rng_cuda = D.all_gather_object(torch.cuda.get_rng_state(device) if device.type == "cuda" else None, world)

    def write() -> None:
        write_checkpoint_file({
            "model": run.net.state_dict(), "optimizer": run.opt.state_dict(),
            "scheduler": run.sched.state_dict() if run.sched is not None else None,
            "scaler": run.scaler.state_dict(),
            "rng_cpu_ranks": rng_cpu, "rng_cuda_ranks": rng_cuda,
            "compile": dict(run.compile_info), "state": _plain_state(run.state),
        }, checkpoint, fingerprint, world.size)

    D.main_only(write, world, "writing the checkpoint")


def _plain_state(state: dict[str, Any]) -> dict[str, Any]:
    """The loop's bookkeeping with its one NumPy array as a tensor, loadable with weights_only."""
    probs = state.get("best_val_probs")
    return {**state, "best_val_probs": torch.from_numpy(probs) if isinstance(probs, np.ndarray) else probs}
