"""Multi-process training with PyTorch's own launcher (torchrun) and DistributedDataParallel.

Two ways in, one code path:

- **Single node, self-launched.** With `train.distributed.nproc_per_node = N > 1` the train stage
  relaunches itself as `python -m torch.distributed.run --standalone --nnodes 1
  --nproc-per-node N -m stages.train <same args>` and waits for it.
- **User-launched (multi-node).** `torchrun --nnodes 2 --node-rank K --rdzv-endpoint HOST:PORT
  ... -m stages.train` sets RANK / WORLD_SIZE / LOCAL_RANK in each worker; the stage sees them and
  does not relaunch. The world size then comes from torchrun, not from params.

`train.batch_size` is the *global* batch: each of the W processes takes `batch_size / W` samples of
every global batch (the keyed sampler hands rank r every W-th sample of the same shuffled order),
so 1 and W processes see the same samples in the same optimizer steps. Backend: NCCL on CUDA (one
GPU per process, `cuda:LOCAL_RANK`), gloo on CPU.
"""

from __future__ import annotations

import contextlib
import datetime
import importlib.util
import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from pathtrail.config.loading import ParamsError
from pathtrail.core.errors import PathTrailError
from pathtrail.core.system import usable_cpus

# Environment torchrun sets in every worker; LOCAL_RANK + WORLD_SIZE mark "already launched".
LAUNCHED_MARKERS = ("LOCAL_RANK", "WORLD_SIZE")
RANK_SEED_KEY = 0xD15C
# How long a collective may wait for a rank that is gone or stuck before every rank gives up with an
# error (instead of torch's 30 min on gloo). Generous: one rank may be writing a large checkpoint.
COLLECTIVE_TIMEOUT = datetime.timedelta(minutes=10)


class PeerFailed(PathTrailError):
    """This rank stops because another rank failed; that rank reports the error (once)."""


@dataclass(frozen=True)
class World:
    """This process's place among the training processes (1 process: rank 0 of 1)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    local_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


SINGLE = World()


def launched_world(environ: Mapping[str, str] | None = None) -> World | None:
    """The World torchrun describes in the environment, or None when not inside a launched worker."""
    env = os.environ if environ is None else environ
    if not all(k in env for k in LAUNCHED_MARKERS):
        return None
    try:
        local_rank = int(env["LOCAL_RANK"])
        size = int(env["WORLD_SIZE"])
        rank = int(env.get("RANK", local_rank))
        local_size = int(env.get("LOCAL_WORLD_SIZE", size))
    except ValueError as exc:
        raise ParamsError(f"torchrun environment is malformed ({exc}); "
                          "RANK, WORLD_SIZE and LOCAL_RANK must be integers") from None
    if not (0 <= rank < size and 0 <= local_rank < local_size):
        raise ParamsError(f"torchrun environment is inconsistent: RANK={rank}, WORLD_SIZE={size}, "
                          f"LOCAL_RANK={local_rank}, LOCAL_WORLD_SIZE={local_size}")
    return World(rank=rank, size=size, local_rank=local_rank, local_size=local_size)


def should_relaunch(nproc_per_node: int, environ: Mapping[str, str] | None = None) -> bool:
    """True when params ask for several processes and this is not already a launched worker."""
    return nproc_per_node > 1 and launched_world(environ) is None


def per_rank_batch(batch_size: int, world_size: int) -> int:
    """`train.batch_size` is global; each process takes an equal share, or it is an error."""
    if batch_size % world_size:
        raise ParamsError(
            f"'train.batch_size' is {batch_size}, which does not divide among the {world_size} "
            f"training processes; train.batch_size is the global batch, so set it to a multiple of "
            f"{world_size} (e.g. {max(world_size, batch_size - batch_size % world_size)})"
        )
    return batch_size // world_size


def rank_seed(seed: int, rank: int) -> int:
    """A per-rank seed for the global RNG (dropout), keyed; never `seed + rank` (32-bit collisions)."""
    return int(np.random.default_rng([seed, rank, RANK_SEED_KEY]).integers(2**31))


def device_for(world: World) -> torch.device:
    """cuda:LOCAL_RANK when CUDA is present (one GPU per process), else the CPU."""
    if not torch.cuda.is_available():
        return torch.device("cpu")
    n = torch.cuda.device_count()
    if world.local_rank >= n:
        raise ParamsError(f"'train.distributed.nproc_per_node': local rank {world.local_rank} has no "
                          f"GPU (this node has {n}); start at most {n} processes per node")
    return torch.device("cuda", world.local_rank)


def backend_for(device: torch.device) -> str:
    return "nccl" if device.type == "cuda" else "gloo"


@contextlib.contextmanager
def process_group(world: World, device: torch.device,
                  timeout: datetime.timedelta = COLLECTIVE_TIMEOUT) -> Iterator[World]:
    """Join the torchrun rendezvous (env://) for the duration of the block; no-op for 1 process.

    A collective that waits longer than `timeout` raises on every rank waiting in it (NCCL: with
    async error handling, set here unless the user chose otherwise), so a rank that died or hangs
    ends the others too; under torchrun the first rank to exit with an error also stops the rest.
    """
    if not world.distributed:
        yield world
        return
    if device.type == "cuda":
        torch.cuda.set_device(device)
        os.environ.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "1")
    dist.init_process_group(backend_for(device), rank=world.rank, world_size=world.size, timeout=timeout)
    try:
        yield world
    finally:
        dist.destroy_process_group()


def launch_command(module: str, argv: Sequence[str], nproc_per_node: int,
                   python: str | None = None) -> list[str]:
    """The torchrun command that runs `python -m module argv` in `nproc_per_node` processes."""
    return [python or sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes", "1",
            "--nproc-per-node", str(nproc_per_node), "-m", module, *argv]


def launch_env(module: str, nproc_per_node: int, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The parent's environment, plus: the module's root on PYTHONPATH (so `-m stages.train` works
    from any folder) and, unless the user set it, OMP_NUM_THREADS = CPUs / processes."""
    env = dict(os.environ if environ is None else environ)
    spec = importlib.util.find_spec(module.split(".")[0])
    if spec is not None and spec.submodule_search_locations:
        root = str(Path(next(iter(spec.submodule_search_locations))).resolve().parent)
        parts = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
        env["PYTHONPATH"] = os.pathsep.join([root, *(p for p in parts if p != root)])
    if "OMP_NUM_THREADS" not in env:
        env["OMP_NUM_THREADS"] = str(max(1, usable_cpus() // nproc_per_node))
    return env


def relaunch(module: str, argv: Sequence[str], nproc_per_node: int) -> int:
    """Run the module under torchrun and wait; SIGTERM/SIGINT are passed on so workers checkpoint.

    torchrun gets its own session, so a Ctrl-C on the terminal reaches it once (through this
    process) rather than twice (a second signal would cut its graceful shutdown short); on Linux it
    is also sent SIGTERM should this process die without passing anything on (e.g. SIGKILL).
    """
    cmd = launch_command(module, argv, nproc_per_node)
    if sys.platform == "linux":  # same torchrun, started through a two-line prologue (no preexec_fn)
        cmd = [cmd[0], "-c", _DIE_WITH_PARENT, *cmd[3:]]
    proc = subprocess.Popen(cmd, env=launch_env(module, nproc_per_node), start_new_session=True)

    def forward(signum: int, frame: Any) -> None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signum)

    old = {}
    for s in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(ValueError):  # not the main thread
            old[s] = signal.signal(s, forward)
    try:
        return proc.wait()
    finally:
        for s, h in old.items():
            signal.signal(s, h)


# Run torchrun after asking Linux for SIGTERM when the launching process dies (PR_SET_PDEATHSIG = 1);
# torchrun then stops its workers, which checkpoint, instead of training on as orphans.
_DIE_WITH_PARENT = (
    "import ctypes, runpy, signal\n"
    "try:\n    ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM))\n"
    "except (OSError, AttributeError):\n    pass\n"
    "runpy.run_module('torch.distributed.run', run_name='__main__', alter_sys=True)\n"
)


# --- collectives (every rank must call them at the same point) ----------------------------------

def all_reduce_sum(t: torch.Tensor, world: World) -> torch.Tensor:
    if world.distributed:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_gather_rows(t: torch.Tensor, world: World) -> torch.Tensor:
    """Stack each rank's equally shaped `t` into (world, *t.shape), rank order."""
    if not world.distributed:
        return t.unsqueeze(0)
    out = [torch.empty_like(t) for _ in range(world.size)]
    dist.all_gather(out, t.contiguous())
    return torch.stack(out)


def all_gather_object(obj: Any, world: World) -> list[Any]:
    if not world.distributed:
        return [obj]
    out: list[Any] = [None] * world.size
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, world: World) -> Any:
    """Rank 0's `obj` on every rank."""
    if not world.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def main_only(fn: Callable[[], Any], world: World, what: str) -> Any:
    """Run `fn` on rank 0 and hand its result to every rank; an error there ends every rank.

    Rank 0 raises its own error (reported once, there); the others raise `PeerFailed` saying
    that rank 0 failed while `what`, instead of waiting for a result that never comes.
    """
    if not world.distributed:
        return fn()
    result: Any = None
    error: BaseException | None = None
    if world.is_main:
        try:
            result = fn()
        except BaseException as exc:  # noqa: BLE001  re-raised below, after the peers are told
            error = exc
    status, value = broadcast_object(("failed", None) if error is not None else ("ok", result), world)
    if error is not None:
        raise error
    if status != "ok":
        raise PeerFailed(f"rank {world.rank} stopped: rank 0 failed while {what} (its error is reported "
                         "by rank 0)")
    return value


def is_collective_failure(exc: BaseException) -> bool:
    """Whether `exc` is a collective that failed because another rank died, hung or hung up
    (gloo raises a plain RuntimeError naming itself; NCCL and torch's own checks a DistError)."""
    text = str(exc)
    return isinstance(exc, dist.DistError) or (isinstance(exc, RuntimeError) and any(
        s in text for s in ("gloo", "Gloo", "NCCL", "Connection closed by peer", "Connection reset by peer")))


def peer_failure(exc: BaseException, world: World) -> PeerFailed:
    """The one-line error a rank ends with when a collective failed under it (the cause is reported
    by the rank that failed, or by torchrun)."""
    text = str(exc).strip()
    first = re.sub(r"^\[[^\]]*\]\s*", "", text.splitlines()[0]).split(". ")[0][:300] if text else type(exc).__name__
    return PeerFailed(f"rank {world.rank} stopped: a collective with the other training processes failed "
                      f"({first}); another rank failed, hung or was stopped, and its error is reported there. "
                      "A checkpoint, if one was saved, is resumed by the next run.")


@contextlib.contextmanager
def peer_failures_reported(world: World) -> Iterator[None]:
    """Inside the block, a collective that fails under this rank (another rank died or hung) ends
    it with `peer_failure`'s one line (a PathTrailError: no traceback) instead of gloo's or NCCL's."""
    try:
        yield
    except RuntimeError as exc:
        if not (world.distributed and is_collective_failure(exc)):
            raise
        raise peer_failure(exc, world) from None


def barrier(world: World) -> None:
    if world.distributed:
        dist.barrier()
