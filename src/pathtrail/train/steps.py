"""The pieces of a training run that `loop.fit` strings together: one batch, one epoch, validation.

A `TrainingRun` holds what one run needs (model, optimizer, loaders, the loop's bookkeeping in
`state`); each function here advances it by one piece, so tests can run a single step or epoch.
"""

from __future__ import annotations

import contextlib
import copy
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import structlog
import torch
import torch.nn.functional as F
from torch import nn

from pathtrail.config.sections import TrainParams
from pathtrail.core.errors import PathTrailError
from pathtrail.core.progress import bar, status
from pathtrail.data.loaders import KeyedBatchSampler
from pathtrail.train import distributed as D
from pathtrail.train.distributed import World
from pathtrail.train.multilabel import MultiLabelLoss
from pathtrail.train.scoring import auroc, predict

log = structlog.get_logger(__name__)


class Interrupted(PathTrailError):
    """Training stopped by a signal after saving a checkpoint; rerun `dvc repro` to resume."""


@dataclass
class TrainingRun:
    params: TrainParams
    world: World
    device: torch.device
    net: nn.Module  # the plain module: its state_dict is the model; the optimizer owns its parameters
    core: nn.Module  # what validation runs: compiled or eager, never the DDP wrapper
    model: nn.Module  # what training runs: `core`, wrapped in DDP with several processes
    criterion: nn.Module  # CrossEntropyLoss, or multilabel.MultiLabelLoss
    opt: torch.optim.Optimizer
    sched: Any
    scaler: torch.amp.GradScaler
    amp_dtype: torch.dtype | None
    train_sampler: KeyedBatchSampler
    train_loader: Any
    val_loader: Any
    val_labels: np.ndarray
    use_compile: bool
    compile_info: dict[str, Any]
    state: dict[str, Any]
    compiled_here: bool = False  # this process has run a compiled step (compiling is behind it)
    compiled_eval_here: bool = False  # ... and a compiled validation pass

    def info(self, event: str, **fields: Any) -> None:
        """Log from rank 0 only (one process speaks for the run)."""
        if self.world.is_main:
            log.info(event, **fields)


def new_state() -> dict[str, Any]:
    """The loop's bookkeeping at the start of a run (what the resumable checkpoint carries)."""
    return {
        "epoch": 0, "batch": 0, "global_step": 0, "history": [], "steps": [],
        "best_score": -float("inf"), "best_epoch": -1, "bad_epochs": 0, "best_state": None,
        "best_val_loss": float("nan"), "best_val_probs": None, "early_stopped": False,
        "samples": 0, "compute_s": 0.0, "wait_s": 0.0, "epoch_samples": 0,
    }


def wrap_ddp(module: nn.Module, device: torch.device, world: World) -> nn.Module:
    if not world.distributed:
        return module
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None)


def batch_loss(run: TrainingRun, logits: torch.Tensor, y: torch.Tensor,
               stop_flag: float) -> tuple[torch.Tensor, float, bool]:
    """The loss to back-propagate, its global-batch value, and whether any rank asked to stop."""
    if not run.world.distributed:
        loss = run.criterion(logits, y)
        return loss, float(loss.detach()), stop_flag > 0
    # sum(w_y * l) / sum(w_y) over the *global* batch (what CrossEntropyLoss(weight) means); the
    # factor world cancels DDP's gradient averaging. One small all-reduce carries the sums and
    # the stop flag, so every rank stops after the same batch.
    if isinstance(run.criterion, MultiLabelLoss):  # mean over the global batch's samples and labels
        per = run.criterion.per_sample(logits, y)
        sums = torch.stack([per.detach().sum().double(), torch.tensor(float(y.numel()), dtype=torch.float64,
                            device=per.device), torch.tensor(stop_flag, dtype=torch.float64, device=per.device)])
        D.all_reduce_sum(sums, run.world)
        return per.sum() * (run.world.size / sums[1].to(per.dtype)), float(sums[0] / sums[1]), bool(sums[2] > 0)
    class_w = run.criterion.weight
    per = F.cross_entropy(logits, y, weight=class_w, label_smoothing=run.params.label_smoothing,
                          reduction="none")
    sums = torch.stack([per.detach().sum().double(), class_w[y].sum().double(),
                        torch.tensor(stop_flag, dtype=torch.float64, device=per.device)])
    D.all_reduce_sum(sums, run.world)
    loss = per.sum() * (run.world.size / sums[1].to(per.dtype))
    return loss, float(sums[0] / sums[1]), bool(sums[2] > 0)


def optimizer_step(run: TrainingRun, x: torch.Tensor, y: torch.Tensor, do_step: bool,
                   stop_flag: float) -> tuple[float, bool]:
    """Forward and backward of one micro-batch; with `do_step`, also clip, step and schedule."""
    p = run.params
    sync = contextlib.nullcontext() if do_step or not run.world.distributed else run.model.no_sync()
    with sync:
        with torch.autocast(run.device.type, dtype=run.amp_dtype or torch.float32,
                            enabled=run.amp_dtype is not None):
            loss, value, stop_now = batch_loss(run, run.model(x), y, stop_flag)
        run.scaler.scale(loss / p.accumulation_steps).backward()
    if do_step:
        if p.grad_clip_norm > 0:
            run.scaler.unscale_(run.opt)
            nn.utils.clip_grad_norm_(run.net.parameters(), p.grad_clip_norm)
        run.scaler.step(run.opt)
        run.scaler.update()
        run.opt.zero_grad(set_to_none=True)
        if run.sched is not None and p.scheduler != "plateau":
            run.sched.step()
    return value, stop_now


def compiled_step(run: TrainingRun, x: torch.Tensor, y: torch.Tensor, do_step: bool,
                  stop_flag: float) -> tuple[float, bool]:
    """One step of the compiled model; if compiling fails (at any step), fall back to eager.

    The first step falls back on any error (an inductor or toolchain problem must never break an
    eager run); a later one on a compile error only (a recompile, e.g. for a smaller last batch),
    so a real error in the step still raises. The step is redone eagerly from the same RNG, grads
    and buffers, so the result is the eager result of that step; `compile_info` records the error
    and the step (`eager_from_step`). Under DDP a later compile failure stops the run with a clear
    message instead: ranks cannot swap their DDP wrapper mid-window in step with each other.
    Tested by test_compile_fallback.py.
    """
    info = run.compile_info
    first = not info["used"]
    saved = _step_state(run)
    try:
        value = optimizer_step(run, x, y, do_step, stop_flag)
        info["used"] = True
        return value
    except Exception as exc:
        if not first and not _is_compile_error(exc):
            raise
        error = f"{type(exc).__name__}: {str(exc)[:500]}"
        if not first and run.world.distributed:
            raise PathTrailError(
                f"torch.compile failed at step {run.state['global_step']} (after compiled steps) on rank "
                f"{run.world.rank}: {error}\nA distributed run cannot switch to eager mid-run; set "
                "train.use_compile=false, or fix the compile problem. The last checkpoint is kept."
            ) from None
    info["error"] = error
    info["eager_from_step"] = run.state["global_step"]
    log.warning("train.compile_unavailable", error=error, step=run.state["global_step"])
    _restore_step_state(run, saved)
    use_eager(run)
    return optimizer_step(run, x, y, do_step, stop_flag)


def use_eager(run: TrainingRun) -> None:
    """Run the plain module from now on (after a compile failure, or resuming after one)."""
    run.core = run.net
    run.model = wrap_ddp(run.net, run.device, run.world)


def _is_compile_error(exc: BaseException) -> bool:
    from torch._dynamo.exc import TorchDynamoException

    return isinstance(exc, TorchDynamoException)


def _step_state(run: TrainingRun) -> dict[str, Any]:
    """What a failed compiled step may have touched: RNG, accumulated grads, buffers (BN statistics)."""
    return {
        "rng": torch.get_rng_state(),
        "rng_cuda": torch.cuda.get_rng_state(run.device) if run.device.type == "cuda" else None,
        "grads": [None if q.grad is None else q.grad.detach().clone() for q in run.net.parameters()],
        "buffers": [b.detach().clone() for b in run.net.buffers()],
    }


def _restore_step_state(run: TrainingRun, saved: dict[str, Any]) -> None:
    torch.set_rng_state(saved["rng"])
    if saved["rng_cuda"] is not None:
        torch.cuda.set_rng_state(saved["rng_cuda"], run.device)
    with torch.no_grad():
        for q, g in zip(run.net.parameters(), saved["grads"], strict=True):
            q.grad = g
        for b, v in zip(run.net.buffers(), saved["buffers"], strict=True):
            b.copy_(v)


@dataclass
class EpochTiming:
    seen: int
    wait_s: float
    compute_s: float
    elapsed_s: float


def train_epoch(run: TrainingRun, stop_signal: Callable[[], int | None],
                save: Callable[[], None]) -> EpochTiming:
    """The rest of the current epoch (from `state["batch"]`).

    A stop request (SIGTERM / SIGINT, see `stop_signal`) is honoured at the next optimizer-step
    boundary, never inside an accumulation window (the partial gradient is not in the checkpoint):
    the window is finished, `save()` is called and `Interrupted` raised. Under DDP the request
    travels in every micro-batch's loss all-reduce, so every rank stops after the same step.
    Resume is then bitwise: test_training.py::test_stop_mid_window_finishes_the_window_and_resumes_bitwise.
    """
    state, p = run.state, run.params
    epoch = state["epoch"]
    run.model.train()
    run.train_sampler.set_epoch(epoch, skip_batches=state["batch"])
    n_batches = len(run.train_sampler)
    t_epoch = time.perf_counter()
    wait = compute = 0.0
    seen = 0
    stop_pending = False  # agreed across ranks: it changes only with an all-reduced flag
    shown = _EpochBar(run, epoch, n_batches)
    t0 = time.perf_counter()
    for x, y, _ in run.train_loader:
        b = state["batch"]
        t1 = time.perf_counter()
        wait += t1 - t0
        x = x.to(run.device, non_blocking=True)
        if p.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        y = y.to(run.device, non_blocking=True)
        do_step = (b + 1) % p.accumulation_steps == 0 or b + 1 == n_batches
        stop_flag = 0.0 if stop_signal() is None else 1.0
        if run.use_compile and run.core is not run.net:
            with shown.compiling():
                loss_value, stop_now = compiled_step(run, x, y, do_step, stop_flag)
        else:
            loss_value, stop_now = optimizer_step(run, x, y, do_step, stop_flag)
        if not run.world.distributed:  # one process: also honour a signal that came during the step
            stop_now = stop_signal() is not None
        stop_pending = stop_pending or stop_now
        state["steps"].append({"step": state["global_step"], "epoch": epoch, "loss": loss_value,
                               "lr": run.opt.param_groups[0]["lr"]})
        state["global_step"] += 1
        state["batch"] = b + 1
        seen += len(y) * run.world.size
        t0 = time.perf_counter()
        compute += t0 - t1
        shown.update(loss_value, seen / max(t0 - t_epoch, 1e-9))
        if stop_pending and do_step:
            shown.close()
            save()
            raise Interrupted(
                f"training interrupted by signal {stop_signal() or 'on another rank'} at epoch {epoch}, "
                f"batch {b + 1} (an optimizer-step boundary); checkpoint saved. Rerun `dvc repro` to resume."
            )
    shown.close()
    return EpochTiming(seen, wait, compute, time.perf_counter() - t_epoch)


class _EpochBar:
    """Rank 0's per-batch progress bar (loss, samples/s) and, before the first compiled step of
    this process, a status line while torch.compile compiles. Stderr only (core.progress)."""

    def __init__(self, run: TrainingRun, epoch: int, n_batches: int) -> None:
        self.run, self.bar = run, None
        self.desc, self.total, self.start = f"train epoch {epoch + 1}/{run.params.epochs}", n_batches, \
            run.state["batch"]

    def compiling(self) -> contextlib.AbstractContextManager[None]:
        if self.run.compiled_here or not self.run.world.is_main:
            return contextlib.nullcontext()
        self.run.compiled_here = True
        return status("torch.compile: compiling the model (minutes on a busy CPU)")

    def update(self, loss: float, samples_per_s: float) -> None:
        if not self.run.world.is_main:
            return
        if self.bar is None:
            self.bar = bar(self.total, self.desc, unit="batch")
            self.bar.update(self.start)
        self.bar.set_postfix(loss=f"{loss:.4f}", samples_s=f"{samples_per_s:.0f}", refresh=False)
        self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def validate(run: TrainingRun) -> tuple[np.ndarray, float, float]:
    """Validation probabilities, class-weighted loss and AUROC of the current weights."""
    shown = contextlib.nullcontext()
    if run.core is not run.net and not run.compiled_eval_here and run.world.is_main:
        run.compiled_eval_here = True
        shown = status("torch.compile: compiling the validation pass")
    with shown:
        probs, loss = predict(run.core, run.val_loader, run.criterion, run.device, run.amp_dtype,
                              world=run.world)
    return probs, loss, auroc(run.val_labels, probs)


def end_epoch(run: TrainingRun, timing: EpochTiming, val_probs: np.ndarray, val_loss: float,
              val_auc: float) -> None:
    """Keep the best weights, record the epoch's curves and timings, decide on early stopping."""
    state, p = run.state, run.params
    epoch = state["epoch"]
    if run.sched is not None and p.scheduler == "plateau":
        run.sched.step(val_loss)
    score = val_auc if np.isfinite(val_auc) else -val_loss
    improved = score > state["best_score"] + p.early_stopping.min_delta
    if improved or state["best_state"] is None:
        state.update(best_score=score, best_epoch=epoch, bad_epochs=0, best_val_loss=val_loss,
                     best_state=copy.deepcopy(run.net.state_dict()), best_val_probs=val_probs)
    else:
        state["bad_epochs"] += 1
    train_loss = float(np.mean([s["loss"] for s in state["steps"] if s["epoch"] == epoch]))
    wait, compute = timing.wait_s, timing.compute_s
    state["history"].append({
        "epoch": epoch, "train_loss": train_loss, "val_loss": val_loss, "val_auroc": val_auc,
        "lr": run.opt.param_groups[0]["lr"], "samples_per_s": timing.seen / max(timing.elapsed_s, 1e-9),
        "data_wait_fraction": wait / max(wait + compute, 1e-9),
        "peak_memory_mb": peak_memory_mb(run.device),
    })
    state["samples"] += timing.seen
    state["compute_s"] += compute
    state["wait_s"] += wait
    run.info("train.epoch", **state["history"][-1])
    state["epoch"] += 1
    state["batch"] = 0
    if state["bad_epochs"] >= p.early_stopping.patience:
        state["early_stopped"] = True
        run.info("train.early_stop", epoch=epoch, best_epoch=state["best_epoch"])


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
