"""The resumable training checkpoint (`checkpoints/train/last.pt`): save, read, restore.

It holds the model, optimizer, scheduler and scaler states, every rank's RNG state and the loop's
bookkeeping, so a resumed run continues bitwise-exactly. A checkpoint made with other params or
data (another fingerprint) or another number of processes is ignored, with a warning.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import structlog
import torch

from pathtrail.core.files import write_bytes
from pathtrail.train import distributed as D
from pathtrail.train.distributed import World

if TYPE_CHECKING:
    from pathtrail.train.steps import TrainingRun

log = structlog.get_logger(__name__)


def read_checkpoint(checkpoint: Path | None, fingerprint: str, world: World) -> dict[str, Any] | None:
    """Rank 0 reads the checkpoint and hands it to every rank (no shared filesystem needed).

    Loaded with `weights_only=True` (tensors and plain values only: a crafted file cannot run
    code), then checked; an unreadable file, or one made for other params, data or another number
    of processes, is ignored with a warning naming it, and training starts afresh.
    """
    ck = None
    if world.is_main and checkpoint is not None and checkpoint.is_file():
        ck = _load(checkpoint)
        reason = None
        if ck is None:
            reason = "not a checkpoint this pipeline wrote (unreadable, or not tensors and plain values)"
        elif ck.get("fingerprint") != fingerprint:
            reason = "made with other params or data"
        elif ck.get("world_size", 1) != world.size:
            reason = f"made with {ck.get('world_size', 1)} processes, this run has {world.size}"
        if reason is not None:
            log.warning("train.checkpoint_ignored", reason=reason, checkpoint=str(checkpoint))
            ck = None
    return D.broadcast_object(ck, world)


def _load(checkpoint: Path) -> dict[str, Any] | None:
    try:
        ck = torch.load(checkpoint, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001  torch raises many kinds (UnpicklingError, RuntimeError, EOFError...)
        return None
    return ck if isinstance(ck, dict) and isinstance(ck.get("state"), dict) else None


def restore(run: TrainingRun, ck: dict[str, Any]) -> None:
    """Put a run back where the checkpoint left it (weights, optimizer, RNG, bookkeeping)."""
    run.net.load_state_dict(ck["model"])
    run.opt.load_state_dict(ck["optimizer"])
    if run.sched is not None:
        run.sched.load_state_dict(ck["scheduler"])
    run.scaler.load_state_dict(ck["scaler"])
    torch.set_rng_state(ck.get("rng_cpu_ranks", [ck["rng_cpu"]])[run.world.rank])
    rng_cuda = ck.get("rng_cuda_ranks", [ck.get("rng_cuda")])[run.world.rank]
    if run.device.type == "cuda" and rng_cuda is not None:
        torch.cuda.set_rng_state(rng_cuda, run.device)
    state = dict(ck["state"])
    if isinstance(state.get("best_val_probs"), torch.Tensor):  # stored as a tensor (weights_only)
        state["best_val_probs"] = state["best_val_probs"].numpy()
    run.state = state


def save_checkpoint(run: TrainingRun, checkpoint: Path | None, fingerprint: str) -> None:
    """Collective: every rank contributes its RNG state, rank 0 writes, all wait for the file."""
    if checkpoint is None:
        return
    world, device = run.world, run.device
    rng_cpu = D.all_gather_object(torch.get_rng_state(), world)
    rng_cuda = D.all_gather_object(torch.cuda.get_rng_state(device) if device.type == "cuda" else None, world)
    if world.is_main:
        buf = io.BytesIO()
        torch.save({
            "fingerprint": fingerprint, "world_size": world.size, "model": run.net.state_dict(),
            "optimizer": run.opt.state_dict(),
            "scheduler": run.sched.state_dict() if run.sched is not None else None,
            "scaler": run.scaler.state_dict(),
            "rng_cpu": rng_cpu[0], "rng_cuda": rng_cuda[0],
            "rng_cpu_ranks": rng_cpu, "rng_cuda_ranks": rng_cuda,
            "state": _plain_state(run.state),
        }, buf)
        write_bytes(buf.getvalue(), checkpoint)
    D.barrier(world)


def _plain_state(state: dict[str, Any]) -> dict[str, Any]:
    """The loop's bookkeeping with its one NumPy array as a tensor, loadable with weights_only."""
    probs = state.get("best_val_probs")
    return {**state, "best_val_probs": torch.from_numpy(probs) if isinstance(probs, np.ndarray) else probs}
