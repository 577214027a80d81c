"""A few training steps under `torch.profiler`: a trace and a summary of where the time and memory go.

`profile_steps` runs `profiler.wait + warmup + active` optimizer steps of a freshly built training
run (`loop.build_run`: the configured model, AMP, channels-last, compile, optimizer and loaders) with
the CPU activity, and CUDA's when the run is on CUDA. The weights it leaves are thrown away; nothing
here is a result. The summary ranks ops by self time over the active steps and reports the peak
memory (CUDA: `max_memory_allocated`; CPU: the process's peak resident set and the largest
allocation total of any op). `pathtrail profile` (pathtrail.cli.profile) writes both files.
"""

from __future__ import annotations

import resource
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile, record_function, schedule

from pathtrail.config.label_section import output_names
from pathtrail.config.profiler_section import ProfilerParams
from pathtrail.core.errors import PathTrailError
from pathtrail.train import distributed as D
from pathtrail.train.inputs import load_training_inputs
from pathtrail.train.loop import build_run
from pathtrail.train.steps import TrainingRun, compiled_step, optimizer_step

MB = 2**20


def _batches(run: TrainingRun) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    if len(run.train_sampler) == 0:
        raise PathTrailError("the train split has no patches, so there is no training step to profile")
    epoch = 0
    while True:
        run.train_sampler.set_epoch(epoch)
        for x, y, _ in run.train_loader:
            yield x, y
        epoch += 1


def profile_training(params: Mapping[str, Any], section: ProfilerParams, store: str, split: str,
                     trace: Path) -> dict[str, Any]:
    """Build the training run `params` describe on `store` / `split` (CUDA when present) and profile
    it (`profile_steps`); the summary also names the model, torch and the speed options."""
    inp = load_training_inputs(params, store, split)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    fallback = bool((params.get("compile_check") or {}).get("fallback_random", True))
    run, _ = build_run(inp.store, inp.splits["train"], inp.splits["val"], inp.train, inp.model, inp.runtime,
                       num_classes=len(output_names(inp.data)), use_compile=inp.train.use_compile,
                       fallback_random=fallback, device=device, world=D.SINGLE)
    summary = profile_steps(run, section, trace)
    return summary | {"torch_version": torch.__version__, "model": inp.model.arch,
                      "options": {k: getattr(inp.train, k) for k in
                                  ("amp", "channels_last", "use_compile", "compile_mode", "optimizer_impl")}}


def profile_steps(run: TrainingRun, p: ProfilerParams, trace: Path) -> dict[str, Any]:
    """Profile `p.active` steps (after `p.wait` unprofiled and `p.warmup` discarded ones); the chrome
    trace goes to `trace`; returns the summary (`summary_rows` ranks the ops)."""
    cuda = run.device.type == "cuda"
    activities = [ProfilerActivity.CPU, *([ProfilerActivity.CUDA] if cuda else [])]
    steps = p.wait + p.warmup + p.active
    if cuda:
        torch.cuda.reset_peak_memory_stats(run.device)
    run.model.train()
    batches = _batches(run)
    started: list[float] = []

    def ready(prof: profile) -> None:
        prof.export_chrome_trace(str(trace))

    seen = 0
    with profile(activities=activities, schedule=schedule(wait=p.wait, warmup=p.warmup, active=p.active),
                 on_trace_ready=ready, profile_memory=p.memory, record_shapes=p.record_shapes,
                 with_stack=p.with_stack) as prof:
        for step in range(steps):
            if step == p.wait + p.warmup:
                if cuda:
                    torch.cuda.synchronize(run.device)
                started.append(time.perf_counter())
            x, y = next(batches)
            x, y = x.to(run.device, non_blocking=True), y.to(run.device, non_blocking=True)
            if run.params.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with record_function("pathtrail.train_step"):
                if run.use_compile and run.core is not run.net:
                    compiled_step(run, x, y, True, 0.0)
                else:
                    optimizer_step(run, x, y, True, 0.0)
            if step >= p.wait + p.warmup:
                seen += len(y)
            prof.step()
        if cuda:
            torch.cuda.synchronize(run.device)
        active_s = time.perf_counter() - started[0]
    events = prof.key_averages()
    return {
        "device": run.device.type,
        "steps": {"wait": p.wait, "warmup": p.warmup, "active": p.active},
        "batch_size": run.params.batch_size,
        "samples_per_s": round(seen / max(active_s, 1e-9), 2),
        "active_s": round(active_s, 4),
        "compile": dict(run.compile_info),
        "peak_memory": peak_memory(run.device, events),
        "summary_rows": op_rows(events, p.row_limit, cuda),
    }


def peak_memory(device: torch.device, events: Any) -> dict[str, float]:
    """Peak memory of the profiled process: CUDA allocator peak, or the CPU resident-set peak."""
    biggest = max((e.cpu_memory_usage for e in events), default=0)
    out = {"cpu_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
           "cpu_largest_op_total_mb": round(biggest / MB, 2)}
    if device.type == "cuda":
        out["cuda_max_allocated_mb"] = round(torch.cuda.max_memory_allocated(device) / MB, 1)
        out["cuda_max_reserved_mb"] = round(torch.cuda.max_memory_reserved(device) / MB, 1)
    return out


def op_rows(events: Any, limit: int, cuda: bool) -> list[dict[str, Any]]:
    """The `limit` ops with the most self time (CUDA's on CUDA, else the CPU's), largest first."""
    def self_time(e: Any) -> float:
        return e.self_device_time_total if cuda else e.self_cpu_time_total

    rows = []
    for e in sorted(events, key=lambda e: (-self_time(e), e.key))[:limit]:
        row = {"op": e.key, "calls": e.count, "self_cpu_ms": round(e.self_cpu_time_total / 1e3, 3),
               "cpu_total_ms": round(e.cpu_time_total / 1e3, 3),
               "self_cpu_memory_mb": round(e.self_cpu_memory_usage / MB, 3)}
        if cuda:
            row |= {"self_cuda_ms": round(e.self_device_time_total / 1e3, 3),
                    "self_cuda_memory_mb": round(e.self_device_memory_usage / MB, 3)}
        rows.append(row)
    return rows
