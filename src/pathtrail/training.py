"""The training loop: deterministic, resumable, with the usual speed and safety options.

`fit` takes values (store, row numbers, labels, typed params) and returns a `FitResult`; the only
file it touches is the resumable checkpoint the caller names (the caller removes it once its
outputs are written).

With a distributed `World` (see `pathtrail.distributed`), `fit` runs under DDP: `train.batch_size`
is the global batch, split evenly across ranks; the loss of each step is normalized by the global
batch's class-weight sum, so the gradient equals the single-process gradient of the same global
batch (up to float summation order); validation predictions are gathered from every rank and the
sampler's padding repeats are dropped, so every validation sample counts once, in its original
order; only rank 0 reads and writes the checkpoint.
"""

from __future__ import annotations

import contextlib
import copy
import os
import resource
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import numpy as np
import structlog
import torch
import torch.nn.functional as F
from torch import nn

from pathtrail import distributed as D
from pathtrail.distributed import World
from pathtrail.errors import PathTrailError
from pathtrail.io import write_bytes
from pathtrail.loaders import KeyedBatchSampler, PatchDataset, make_loader
from pathtrail.models import build_model, load_local_weights
from pathtrail.settings import DataParams, ModelParams, TrainParams
from pathtrail.store import PatchStore

log = structlog.get_logger(__name__)


@dataclass
class Split:
    rows: np.ndarray   # store rows
    labels: np.ndarray


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


def auroc(labels: np.ndarray, probs: np.ndarray) -> float:
    """Binary or macro one-vs-rest AUROC (torchmetrics); NaN when a class is missing."""
    from torchmetrics.functional.classification import binary_auroc, multiclass_auroc

    y = torch.as_tensor(np.asarray(labels, dtype=np.int64).copy())
    if len(np.unique(labels)) < 2:
        return float("nan")
    p = torch.as_tensor(probs, dtype=torch.float64)
    if p.shape[1] == 2:
        return float(binary_auroc(p[:, 1], y))
    return float(multiclass_auroc(p, y, num_classes=p.shape[1], average="macro"))


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


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class _StopRequest:
    """SIGTERM / SIGINT ask the loop to checkpoint at the next batch boundary and exit."""

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


class Interrupted(PathTrailError):
    """Training stopped by a signal after saving a checkpoint; rerun `dvc repro` to resume."""


def fit(
    store: PatchStore,
    train: Split,
    val: Split,
    params: TrainParams,
    model_params: ModelParams,
    data_params: DataParams,
    *,
    num_classes: int,
    fingerprint: str,
    checkpoint: Path | None = None,
    use_compile: bool | None = None,
    fallback_random: bool = True,
    device: torch.device | None = None,
    world: World | None = None,
) -> FitResult:
    """Train from scratch or resume from `checkpoint` when its fingerprint matches.

    With `world.size > 1` every rank calls `fit` inside `distributed.process_group`; all ranks
    return the same result, and only rank 0 touches `checkpoint`.
    """
    world = world or D.SINGLE
    if world.distributed and not torch.distributed.is_initialized():
        raise PathTrailError("fit(world=...) with several processes needs an initialized process group; "
                             "run it inside pathtrail.distributed.process_group")
    device = device or (D.device_for(world) if world.distributed else
                        torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    rank_batch = D.per_rank_batch(params.batch_size, world.size)
    use_compile = params.use_compile if use_compile is None else use_compile
    if params.amp == "fp16" and device.type != "cuda":
        raise PathTrailError("train.amp=fp16 needs a CUDA device; use train.amp=bf16 or none on CPU")
    info = log.info if world.is_main else _quiet
    configure_determinism(params)
    torch.manual_seed(params.seed)
    net = build_model(model_params.arch, num_classes, model_params.width, model_params.dropout,
                      gradient_checkpointing=model_params.gradient_checkpointing)
    weights_sha = load_local_weights(net, model_params.weights_path) if model_params.weights_path else None
    net.to(device)
    if params.channels_last:
        net = net.to(memory_format=torch.channels_last)
    if world.distributed:  # same initial weights everywhere, but each rank its own dropout stream
        torch.manual_seed(D.rank_seed(params.seed, world.rank))
    compile_info: dict[str, Any] = {"requested": use_compile, "used": False, "mode": params.compile_mode}
    core: nn.Module = net  # what validation runs (compiled or eager, never the DDP wrapper)
    if use_compile:
        import torch._inductor.config as inductor_config

        inductor_config.fallback_random = fallback_random
        compile_info["fallback_random"] = fallback_random
        core = torch.compile(net, mode=params.compile_mode)
    model = _wrap_ddp(core, device, world)  # compile first, then DDP
    criterion = nn.CrossEntropyLoss(
        weight=class_weights(train.labels, num_classes), label_smoothing=params.label_smoothing
    ).to(device)
    fused = device.type == "cuda"
    opt = torch.optim.AdamW(net.parameters(), lr=params.lr, weight_decay=params.weight_decay, fused=fused)
    loader_args = {
        "num_workers": data_params.num_workers,
        "prefetch_factor": data_params.prefetch_factor,
        "persistent_workers": data_params.persistent_workers,
        "pin_memory": data_params.pin_memory,
        "seed": params.seed,
    }
    train_sampler = KeyedBatchSampler(len(train.rows), rank_batch, params.seed, shuffle=True,
                                      rank=world.rank, world=world.size)
    train_loader = make_loader(
        PatchDataset(store, train.rows, train.labels, params.augment, params.seed), train_sampler, **loader_args
    )
    val_sampler = KeyedBatchSampler(len(val.rows), rank_batch * 2, params.seed, shuffle=False,
                                    rank=world.rank, world=world.size)
    val_loader = make_loader(PatchDataset(store, val.rows, val.labels, False, params.seed), val_sampler, **loader_args)
    steps_per_epoch = -(-len(train_sampler) // params.accumulation_steps)
    sched = _make_scheduler(opt, params, steps_per_epoch * params.epochs)
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(params.amp)
    scaler = torch.amp.GradScaler(device.type, enabled=params.amp == "fp16")

    state: dict[str, Any] = {
        "epoch": 0, "batch": 0, "global_step": 0, "history": [], "steps": [],
        "best_score": -float("inf"), "best_epoch": -1, "bad_epochs": 0, "best_state": None,
        "best_val_loss": float("nan"), "best_val_probs": None, "early_stopped": False,
        "samples": 0, "compute_s": 0.0, "wait_s": 0.0, "epoch_samples": 0,
    }
    resumed_from = None
    ck = _read_checkpoint(checkpoint, fingerprint, world)
    if ck is not None:
        net.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        if sched is not None:
            sched.load_state_dict(ck["scheduler"])
        scaler.load_state_dict(ck["scaler"])
        torch.set_rng_state(ck.get("rng_cpu_ranks", [ck["rng_cpu"]])[world.rank])
        rng_cuda = ck.get("rng_cuda_ranks", [ck.get("rng_cuda")])[world.rank]
        if device.type == "cuda" and rng_cuda is not None:
            torch.cuda.set_rng_state(rng_cuda, device)
        state = ck["state"]
        resumed_from = state["epoch"]
        info("train.resume", epoch=state["epoch"], batch=state["batch"], checkpoint=str(checkpoint))
    del ck

    def save_checkpoint() -> None:
        if checkpoint is None:
            return
        # Collective: every rank contributes its RNG state, rank 0 writes, all wait for the file.
        rng_cpu = D.all_gather_object(torch.get_rng_state(), world)
        rng_cuda = D.all_gather_object(torch.cuda.get_rng_state(device) if device.type == "cuda" else None, world)
        if world.is_main:
            import io

            buf = io.BytesIO()
            torch.save({
                "fingerprint": fingerprint, "world_size": world.size, "model": net.state_dict(),
                "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict() if sched is not None else None, "scaler": scaler.state_dict(),
                "rng_cpu": rng_cpu[0], "rng_cuda": rng_cuda[0],
                "rng_cpu_ranks": rng_cpu, "rng_cuda_ranks": rng_cuda,
                "state": state,
            }, buf)
            write_bytes(buf.getvalue(), checkpoint)
        D.barrier(world)

    class_w = criterion.weight

    def batch_loss(logits: torch.Tensor, y: torch.Tensor, stop_flag: float) -> tuple[torch.Tensor, float, bool]:
        """The loss to back-propagate, its global-batch value, and whether any rank asked to stop."""
        if not world.distributed:
            loss = criterion(logits, y)
            return loss, float(loss.detach()), stop_flag > 0
        # sum(w_y * l) / sum(w_y) over the *global* batch (what CrossEntropyLoss(weight) means); the
        # factor world cancels DDP's gradient averaging. One small all-reduce carries the sums and
        # the stop flag, so every rank stops after the same batch.
        per = F.cross_entropy(logits, y, weight=class_w, label_smoothing=params.label_smoothing, reduction="none")
        sums = torch.stack([per.detach().sum().double(), class_w[y].sum().double(),
                            torch.tensor(stop_flag, dtype=torch.float64, device=per.device)])
        D.all_reduce_sum(sums, world)
        loss = per.sum() * (world.size / sums[1].to(per.dtype))
        return loss, float(sums[0] / sums[1]), bool(sums[2] > 0)

    def step_once(x: torch.Tensor, y: torch.Tensor, do_step: bool, stop_flag: float) -> tuple[float, bool]:
        sync = contextlib.nullcontext() if do_step or not world.distributed else model.no_sync()
        with sync:
            with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                loss, value, stop_now = batch_loss(model(x), y, stop_flag)
            scaler.scale(loss / params.accumulation_steps).backward()
        if do_step:
            if params.grad_clip_norm > 0:
                scaler.unscale_(opt)
                nn.utils.clip_grad_norm_(net.parameters(), params.grad_clip_norm)
            scaler.step(opt)
            scaler.update()
            opt.zero_grad(set_to_none=True)
            if sched is not None and params.scheduler != "plateau":
                sched.step()
        return value, stop_now

    with _StopRequest() as stop:
        while state["epoch"] < params.epochs and not state["early_stopped"]:
            epoch = state["epoch"]
            model.train()
            train_sampler.set_epoch(epoch, skip_batches=state["batch"])
            n_batches = len(train_sampler)
            t_epoch = time.perf_counter()
            wait = compute = 0.0
            seen = 0
            t0 = time.perf_counter()
            for x, y, _ in train_loader:
                b = state["batch"]
                t1 = time.perf_counter()
                wait += t1 - t0
                x = x.to(device, non_blocking=True)
                if params.channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                y = y.to(device, non_blocking=True)
                do_step = (b + 1) % params.accumulation_steps == 0 or b + 1 == n_batches
                stop_flag = 0.0 if stop.signum is None else 1.0
                if use_compile and not compile_info["used"] and "error" not in compile_info:
                    try:
                        loss_value, stop_now = _first_compiled_step(step_once, x, y, do_step, stop_flag,
                                                                    compile_info, opt)
                    except _RetryEager:
                        core = net
                        model = _wrap_ddp(net, device, world)
                        loss_value, stop_now = step_once(x, y, do_step, stop_flag)
                else:
                    loss_value, stop_now = step_once(x, y, do_step, stop_flag)
                if not world.distributed:  # one process: also honour a signal that came during the step
                    stop_now = stop.signum is not None
                state["steps"].append({"step": state["global_step"], "epoch": epoch, "loss": loss_value,
                                       "lr": opt.param_groups[0]["lr"]})
                state["global_step"] += 1
                state["batch"] = b + 1
                seen += len(y) * world.size
                t0 = time.perf_counter()
                compute += t0 - t1
                if stop_now:
                    save_checkpoint()
                    raise Interrupted(
                        f"training interrupted by signal {stop.signum or 'on another rank'} at epoch {epoch}, "
                        f"batch {b + 1}; checkpoint saved. Rerun `dvc repro` to resume."
                    )
            elapsed = time.perf_counter() - t_epoch
            val_probs, val_loss = predict(core, val_loader, criterion, device, amp_dtype, world=world)
            val_auc = auroc(val.labels, val_probs)
            if sched is not None and params.scheduler == "plateau":
                sched.step(val_loss)
            score = val_auc if np.isfinite(val_auc) else -val_loss
            improved = score > state["best_score"] + params.early_stopping.min_delta
            if improved or state["best_state"] is None:
                state.update(best_score=score, best_epoch=epoch, bad_epochs=0, best_val_loss=val_loss,
                             best_state=copy.deepcopy(net.state_dict()), best_val_probs=val_probs)
            else:
                state["bad_epochs"] += 1
            train_loss = float(np.mean([s["loss"] for s in state["steps"] if s["epoch"] == epoch]))
            state["history"].append({
                "epoch": epoch, "train_loss": train_loss, "val_loss": val_loss, "val_auroc": val_auc,
                "lr": opt.param_groups[0]["lr"], "samples_per_s": seen / max(elapsed, 1e-9),
                "data_wait_fraction": wait / max(wait + compute, 1e-9),
                "peak_memory_mb": _peak_memory_mb(device),
            })
            state["samples"] += seen
            state["compute_s"] += compute
            state["wait_s"] += wait
            info("train.epoch", **state["history"][-1])
            state["epoch"] += 1
            state["batch"] = 0
            if state["bad_epochs"] >= params.early_stopping.patience:
                state["early_stopped"] = True
                info("train.early_stop", epoch=epoch, best_epoch=state["best_epoch"])
            if state["epoch"] % params.checkpoint_every == 0 and state["epoch"] < params.epochs:
                save_checkpoint()

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
        compile=compile_info,
        weights_sha256=weights_sha,
        monitor={
            "samples_per_s": state["samples"] / max(total, 1e-9),
            "data_wait_fraction": state["wait_s"] / max(total, 1e-9),
            "peak_memory_mb": _peak_memory_mb(device),
        },
        world_size=world.size,
    )


def _quiet(*args: Any, **kwargs: Any) -> None:
    """Log sink for ranks other than 0 (one process speaks for the run)."""


def _wrap_ddp(module: nn.Module, device: torch.device, world: World) -> nn.Module:
    if not world.distributed:
        return module
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None)


def _read_checkpoint(checkpoint: Path | None, fingerprint: str, world: World) -> dict[str, Any] | None:
    """Rank 0 reads the checkpoint and hands it to every rank (no shared filesystem needed)."""
    ck = None
    if world.is_main and checkpoint is not None and checkpoint.is_file():
        ck = torch.load(checkpoint, map_location="cpu", weights_only=False)
        if ck.get("fingerprint") != fingerprint:
            log.warning("train.checkpoint_ignored", reason="made with other params or data", checkpoint=str(checkpoint))
            ck = None
        elif ck.get("world_size", 1) != world.size:
            log.warning("train.checkpoint_ignored", checkpoint=str(checkpoint),
                        reason=f"made with {ck.get('world_size', 1)} processes, this run has {world.size}")
            ck = None
    return D.broadcast_object(ck, world)


def _first_compiled_step(step_once, x, y, do_step, stop_flag, info: dict[str, Any], opt) -> tuple[float, bool]:
    """Run the first compiled step; if compilation fails, record why and redo it eagerly."""
    rng = torch.get_rng_state()
    try:
        value = step_once(x, y, do_step, stop_flag)
        info["used"] = True
        return value
    except Exception as exc:  # inductor/toolchain problems must never break an eager pipeline
        info["error"] = f"{type(exc).__name__}: {str(exc)[:500]}"
        log.warning("train.compile_unavailable", error=info["error"])
        torch.set_rng_state(rng)
        opt.zero_grad(set_to_none=True)
        raise _RetryEager from exc


class _RetryEager(Exception):
    pass


@torch.no_grad()
def predict(model: nn.Module, loader, criterion: nn.Module | None, device: torch.device,
            amp_dtype: torch.dtype | None = None, *, world: World | None = None) -> tuple[np.ndarray, float]:
    """Class probabilities (float64, one row per dataset item, in dataset order) and the mean loss.

    With several ranks, each scores its shard and the logits are gathered; the sampler's padding
    repeats are dropped, so every sample counts once. The loss is the class-weighted mean over the
    whole set (independent of batch size and number of ranks).
    """
    world = world or D.SINGLE
    model.eval()
    logits: list[torch.Tensor] = []
    labels: list[torch.Tensor] = []
    order: list[torch.Tensor] = []
    for x, y, idx in loader:
        x = x.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            out = model(x)
        logits.append(out.float())
        labels.append(y)
        order.append(idx)
    lg = torch.cat(logits)
    y_all = torch.cat(labels).to(lg.device)
    idx_all = torch.cat(order).to(lg.device)
    if world.distributed:
        # float32 logits and integer ids are exact in float64: one gather carries all three
        packed = torch.cat([lg.double(), y_all.double()[:, None], idx_all.double()[:, None]], dim=1)
        gathered = D.all_gather_rows(packed, world)  # (world, per_rank, C + 2)
        packed = gathered.transpose(0, 1).reshape(-1, packed.shape[1])  # the sampler's padded order
        lg, y_all, idx_all = packed[:, :-2].float(), packed[:, -2].long(), packed[:, -1].long()
    uniq, first = np.unique(idx_all.cpu().numpy(), return_index=True)  # drop padding repeats
    keep = torch.as_tensor(first, device=lg.device)
    lg, y_all = lg[keep], y_all[keep]
    probs = torch.softmax(lg.double(), dim=1).cpu().numpy()
    out_probs = np.full((int(uniq.max()) + 1, probs.shape[1]), np.nan)
    out_probs[uniq] = probs
    loss = float(criterion(lg, y_all)) if criterion is not None and len(y_all) else float("nan")
    return out_probs, loss
