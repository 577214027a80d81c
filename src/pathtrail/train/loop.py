"""The training loop: deterministic, resumable, with the usual speed and safety options.

`fit` strings together the pieces in `pathtrail.train.steps` (one batch, one epoch, validation)
and `pathtrail.train.resume` (the checkpoint). It takes values (store, row numbers, labels, typed
params) and returns a `FitResult`; the only file it touches is the resumable checkpoint the caller names (the caller removes it once its
outputs are written).

With a distributed `World` (see `pathtrail.train.distributed`), `fit` runs under DDP: `train.batch_size`
is the global batch, split evenly across ranks; the loss of each step is normalized by the global
batch's class-weight sum, so the gradient equals the single-process gradient of the same global
batch (up to float summation order); validation predictions are gathered from every rank and the
sampler's padding repeats are dropped, so every validation sample counts once, in its original
order; only rank 0 reads and writes the checkpoint.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import numpy as np
import structlog
import torch
from torch import nn

from pathtrail.config.sections import ModelParams, RuntimeParams, TrainParams
from pathtrail.core.errors import PathTrailError
from pathtrail.data.loaders import KeyedBatchSampler, PatchDataset, make_loader
from pathtrail.data.store import PatchStore
from pathtrail.train import distributed as D
from pathtrail.train.checkpoint_file import set_aside
from pathtrail.train.compiling import compile_module
from pathtrail.train.distributed import World
from pathtrail.train.models import HEADS, build_from_params
from pathtrail.train.multilabel import MultiLabelLoss, pos_weights
from pathtrail.train.resume import read_checkpoint, run_fingerprint, save_checkpoint, try_restore
from pathtrail.train.steps import (
    TrainingRun,
    end_epoch,
    new_state,
    peak_memory_mb,
    train_epoch,
    validate,
    wrap_ddp,
)
from pathtrail.train.weights import load_local_weights

log = structlog.get_logger(__name__)


@dataclass
class Split:
    rows: np.ndarray   # store rows
    labels: np.ndarray  # class indices (N,), or 0/1 float32 (N, L) for multi-label


@dataclass
class FitResult:
    state_dict: dict[str, torch.Tensor]
    history: list[dict[str, Any]]
    steps: list[dict[str, Any]]
    val_probs: np.ndarray
    best_epoch: int
    best_val_auroc: float
    best_val_loss: float
    epochs_run: int
    early_stopped: bool
    resumed_from: int | None
    compile: dict[str, Any]
    weights_sha256: str | None = None
    monitor: dict[str, float] = field(default_factory=dict)
    world_size: int = 1
    resumed_sha256: str | None = None  # the sha256 of the checkpoint file resumed from


def configure_determinism(p: TrainParams) -> dict[str, Any]:
    """Apply and return the determinism / precision flags (recorded in the card)."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(p.deterministic, warn_only=False)
    torch.backends.cudnn.deterministic = p.deterministic
    torch.backends.cudnn.benchmark = p.cudnn_benchmark
    torch.backends.cuda.matmul.allow_tf32 = p.allow_tf32
    torch.backends.cudnn.allow_tf32 = p.allow_tf32
    return {
        "deterministic_algorithms": p.deterministic,
        "cudnn_benchmark": p.cudnn_benchmark,
        "allow_tf32": p.allow_tf32,
        "cublas_workspace_config": os.environ.get("CUBLAS_WORKSPACE_CONFIG"),
    }


def class_weights(labels: np.ndarray, num_classes: int) -> torch.Tensor:
    """Inverse-frequency weights; absent classes are floored at one sample, extremes capped at 100x."""
    counts = np.bincount(labels.astype(np.int64), minlength=num_classes).astype(np.float64)
    counts = np.maximum(counts, 1.0)
    w = counts.sum() / (num_classes * counts)
    w = np.clip(w, None, 100.0 * w.min())
    return torch.tensor(w / w.mean(), dtype=torch.float32)


def adamw_kernels(impl: str, device: torch.device) -> dict[str, bool]:
    """AdamW's `fused` / `foreach` arguments for `train.optimizer_impl` (auto: fused on CUDA, torch's
    per-tensor loop on the CPU, as before the option existed). `fused` changes the float order of
    the update, hence the weights; `foreach` gave the loop's bits in bench/optimizations.py, which
    torch does not promise: the option is a result param either way."""
    if impl == "fused":
        return {"fused": True}
    if impl == "foreach":
        return {"fused": False, "foreach": True}
    return {"fused": device.type == "cuda"}


def _make_scheduler(opt: torch.optim.Optimizer, p: TrainParams, total_steps: int):
    if p.scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, total_steps))
    if p.scheduler == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=p.lr, total_steps=max(2, total_steps), pct_start=max(p.warmup_fraction, 0.01)
        )
    if p.scheduler == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="min", factor=0.5, patience=1)
    return None


class _StopRequest:
    """SIGTERM / SIGINT ask the loop to checkpoint at the next optimizer-step boundary and exit."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> Self:
        for s in (signal.SIGTERM, signal.SIGINT):
            try:
                self._old[s] = signal.signal(s, self._handle)
            except ValueError:  # not the main thread
                pass
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.signum = signum

    def __exit__(self, *exc: object) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)


def fit(
    store: PatchStore,
    train: Split,
    val: Split,
    params: TrainParams,
    model_params: ModelParams,
    runtime: RuntimeParams,
    *,
    num_classes: int,
    fingerprint: str,
    checkpoint: Path | None = None,
    use_compile: bool | None = None,
    fallback_random: bool = True,
    device: torch.device | None = None,
    world: World | None = None,
    expected_sha256: str | None = None,
    on_saved: Callable[..., Any] | None = None,
) -> FitResult:
    """Train from scratch or resume from `checkpoint` when its fingerprint matches.

    `fingerprint` names the inputs (`inputs.load_training_inputs`); the checkpoint must also match
    this torch version, device type and number of processes (`resume.run_fingerprint`).

    With `expected_sha256` only a checkpoint file of that sha256 is resumed ("": none is); rank 0
    calls `on_saved(sha256=..., fingerprint=..., epoch=..., batch=...)` after writing each one (the
    caller's record of what it wrote). A checkpoint that passes the file checks but cannot be
    restored into this run is set aside too, and the run starts afresh (rebuilt: bitwise as if the
    file had not been there).

    With `world.size > 1` every rank calls `fit` inside `distributed.process_group`; all ranks
    return the same result, and only rank 0 touches `checkpoint`.
    """
    world = world or D.SINGLE
    if world.distributed and not torch.distributed.is_initialized():
        raise PathTrailError("fit(world=...) with several processes needs an initialized process group; "
                             "run it inside pathtrail.train.distributed.process_group")
    device = device or (D.device_for(world) if world.distributed else
                        torch.device("cuda" if torch.cuda.is_available() else "cpu"))

    def fresh_run() -> tuple[TrainingRun, str | None]:
        return build_run(store, train, val, params, model_params, runtime, num_classes=num_classes,
                         use_compile=params.use_compile if use_compile is None else use_compile,
                         fallback_random=fallback_random, device=device, world=world)

    run, weights_sha = fresh_run()
    resumed_from = resumed_sha = None
    fingerprint = run_fingerprint(fingerprint, device, world)
    ck = read_checkpoint(checkpoint, fingerprint, world, expected_sha256)
    if ck is not None and (problem := try_restore(run, ck.payload)) is not None:
        if world.is_main:
            set_aside(checkpoint, f"cannot be restored into this run: {problem}")
        run, weights_sha = fresh_run()
    elif ck is not None:
        resumed_from, resumed_sha = run.state["epoch"], ck.sha256
        run.info("train.resume", epoch=run.state["epoch"], batch=run.state["batch"], checkpoint=str(checkpoint),
                 sha256=ck.sha256)
    del ck

    def save() -> None:
        save_checkpoint(run, checkpoint, fingerprint, on_saved)

    with _StopRequest() as stop:
        while run.state["epoch"] < params.epochs and not run.state["early_stopped"]:
            timing = train_epoch(run, lambda: stop.signum, save)
            end_epoch(run, timing, *validate(run))
            if run.state["epoch"] % params.checkpoint_every == 0 and run.state["epoch"] < params.epochs:
                save()
    return fit_result(run, resumed_from, weights_sha, resumed_sha)


def build_run(store: PatchStore, train: Split, val: Split, params: TrainParams, model_params: ModelParams,
              runtime: RuntimeParams, *, num_classes: int, use_compile: bool, fallback_random: bool,
              device: torch.device, world: World) -> tuple[TrainingRun, str | None]:
    """Seed, build (and compile) the model, optimizer, scheduler and loaders of a fresh run.

    The order of the seeded steps is part of the result: changing it changes the weights.
    Returns the run and the sha256 of the local initial weights (None without them).
    """
    rank_batch = D.per_rank_batch(params.batch_size, world.size)
    if params.amp == "fp16" and device.type != "cuda":
        raise PathTrailError("train.amp=fp16 needs a CUDA device; use train.amp=bf16 or none on CPU")
    configure_determinism(params)
    torch.manual_seed(params.seed)
    net = build_from_params(model_params, num_classes)
    weights_sha = (load_local_weights(net, model_params.weights_path, arch=model_params.arch,
                                      head=HEADS.get(model_params.arch)).sha256
                   if model_params.weights_path else None)
    net.to(device)
    if params.channels_last:
        net = net.to(memory_format=torch.channels_last)
    if world.distributed:  # same initial weights everywhere, but each rank its own dropout stream
        torch.manual_seed(D.rank_seed(params.seed, world.rank))
    compile_info: dict[str, Any] = {"requested": use_compile, "used": False, "mode": params.compile_mode}
    core: nn.Module = net
    if use_compile:
        compile_info["fallback_random"] = fallback_random
        core = compile_module(net, params.compile_mode, fallback_random=fallback_random)
    model = wrap_ddp(core, device, world)  # compile first, then DDP
    criterion = (MultiLabelLoss(pos_weights(train.labels), params.label_smoothing) if train.labels.ndim == 2
                 else nn.CrossEntropyLoss(weight=class_weights(train.labels, num_classes),
                                          label_smoothing=params.label_smoothing)).to(device)
    opt = torch.optim.AdamW(net.parameters(), lr=params.lr, weight_decay=params.weight_decay,
                            **adamw_kernels(params.optimizer_impl, device))
    loader_args = {**runtime.loader, "seed": params.seed}  # runtime knobs: speed only, never the result
    train_sampler = KeyedBatchSampler(len(train.rows), rank_batch, params.seed, shuffle=True,
                                      rank=world.rank, world=world.size)
    train_loader = make_loader(
        PatchDataset(store, train.rows, train.labels, params.augment, params.seed, params.stain_augment),
        train_sampler, **loader_args
    )
    val_sampler = KeyedBatchSampler(len(val.rows), rank_batch * 2, params.seed, shuffle=False,
                                    rank=world.rank, world=world.size)
    val_loader = make_loader(PatchDataset(store, val.rows, val.labels, False, params.seed), val_sampler, **loader_args)
    steps_per_epoch = -(-len(train_sampler) // params.accumulation_steps)
    sched = _make_scheduler(opt, params, steps_per_epoch * params.epochs)
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(params.amp)
    scaler = torch.amp.GradScaler(device.type, enabled=params.amp == "fp16")
    run = TrainingRun(params, world, device, net, core, model, criterion, opt, sched, scaler, amp_dtype,
                      train_sampler, train_loader, val_loader, val.labels, use_compile, compile_info, new_state())
    return run, weights_sha


def fit_result(run: TrainingRun, resumed_from: int | None, weights_sha: str | None,
               resumed_sha256: str | None = None) -> FitResult:
    state = run.state
    total = state["compute_s"] + state["wait_s"]
    return FitResult(
        state_dict=state["best_state"],
        history=state["history"],
        steps=state["steps"],
        val_probs=state["best_val_probs"],
        best_epoch=state["best_epoch"],
        best_val_auroc=state["history"][state["best_epoch"]]["val_auroc"],
        best_val_loss=state["best_val_loss"],
        epochs_run=state["epoch"],
        early_stopped=state["early_stopped"],
        resumed_from=resumed_from,
        resumed_sha256=resumed_sha256,
        compile=run.compile_info,
        weights_sha256=weights_sha,
        monitor={
            "samples_per_s": state["samples"] / max(total, 1e-9),
            "data_wait_fraction": state["wait_s"] / max(total, 1e-9),
            "peak_memory_mb": peak_memory_mb(run.device),
        },
        world_size=run.world.size,
    )
