"""The `profiler` params section: what `pathtrail profile` records (a runtime knob, never a result).

No stage lists it as a DVC param and no artifact hashes it; `pathtrail profile` writes its trace and
summary under `out_dir`, outside every hashed artifact (README, "Profiling").
"""

from __future__ import annotations

from dataclasses import dataclass

from pathtrail.config.loading import require


@dataclass(frozen=True)
class ProfilerParams:
    wait: int               # optimizer steps run before the profiler starts
    warmup: int             # steps profiled but discarded (the profiler's own start-up)
    active: int             # steps recorded in the trace and the summary
    memory: bool            # allocations per op (CPU, and CUDA when present)
    record_shapes: bool     # input shapes per op
    with_stack: bool        # Python stacks per op (a much larger trace)
    row_limit: int          # ops in the summary table
    out_dir: str            # where trace.json, summary.json and summary.md go

    def check(self) -> None:
        require(0 <= self.wait <= 100, "profiler.wait", "must be in [0, 100] (steps before profiling)")
        require(0 <= self.warmup <= 100, "profiler.warmup", "must be in [0, 100] (steps discarded)")
        require(1 <= self.active <= 1000, "profiler.active", "must be in [1, 1000] (steps recorded)")
        require(1 <= self.row_limit <= 200, "profiler.row_limit", "must be in [1, 200]")
        require(bool(self.out_dir.strip()), "profiler.out_dir", "must name a folder")
