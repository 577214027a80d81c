"""The reproducible execution contract: fixed threads and pinned CPU kernel levels for hashed work.

Thread count and CPU instruction set change floating-point summation order (ATen's vectorised kernels,
oneDNN convolutions, MKL and OpenBLAS GEMMs, numpy's dispatched loops), so weights trained on a
16-core AVX-512 workstation differ from those of a 2-core laptop. The contract (params section
`execution`) removes both: every library runs `threads` intra-op threads (default 1, which any
machine can honour) and, with `cpu_isa: avx2`, the AVX2 code paths on any x86-64 CPU that has AVX2.
`cpu_isa: native` and `threads: 0` lift the contract (the benchmark profile does); results then
depend on the machine, and the card says so.

The libraries read these settings once, when they load, so `environment_for` must reach
`os.environ` before numpy or torch is imported: `stages/__init__.py` applies it first thing. This
module imports nothing but the standard library and PyYAML for that reason.
"""

from __future__ import annotations

import os
import platform
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

ISA_LEVELS = ("avx2", "default", "native")

# Per pinned level: the variable each library reads at load time.
_ISA_ENV: dict[str, dict[str, str]] = {
    "avx2": {
        "ATEN_CPU_CAPABILITY": "avx2",
        "ONEDNN_MAX_CPU_ISA": "AVX2",
        "MKL_CBWR": "AVX2",
        "OPENBLAS_CORETYPE": "Haswell",
        "NPY_DISABLE_CPU_FEATURES": "X86_V4 AVX512_ICL AVX512_SPR",
    },
    "default": {
        "ATEN_CPU_CAPABILITY": "default",
        "ONEDNN_MAX_CPU_ISA": "SSE41",
        "MKL_CBWR": "COMPATIBLE",
        "OPENBLAS_CORETYPE": "Prescott",
        "NPY_DISABLE_CPU_FEATURES": "X86_V3 X86_V4 AVX512_ICL AVX512_SPR",
    },
}
_THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
# Everything the contract may set, for the record of what a run actually had.
CONTRACT_VARIABLES = tuple(sorted({*_THREAD_ENV, *(k for env in _ISA_ENV.values() for k in env)}))


def environment_for(section: Mapping[str, Any] | None) -> dict[str, str]:
    """The variables the contract sets for params section `execution` (empty when it is lifted)."""
    threads, isa = _values(section)
    env: dict[str, str] = {}
    if threads > 0:
        env.update({k: str(threads) for k in _THREAD_ENV})
    if isa != "native" and is_x86():
        env.update(_ISA_ENV[isa])
    return env


def is_x86() -> bool:
    return platform.machine().lower() in ("x86_64", "amd64", "i686", "x86")


def _values(section: Mapping[str, Any] | None) -> tuple[int, str]:
    section = section or {}
    threads = section.get("threads", 1)
    isa = section.get("cpu_isa", "avx2")
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 0:
        threads = 1  # the typed check in `pathtrail.config.sections` reports the mistake
    if isa not in ISA_LEVELS:
        isa = "avx2"
    return threads, isa


def apply_before_libraries(argv: Sequence[str]) -> dict[str, str]:
    """Set the contract of the params file in `argv` (`--params`, default params.yaml) in os.environ.

    Called by `stages/__init__.py` before anything imports numpy or torch. A missing or unreadable
    params file sets the defaults; the stage itself reports the file's problem.
    """
    env = environment_for(_execution_section(_params_path(argv)))
    if "NPY_DISABLE_CPU_FEATURES" in env:
        os.environ.pop("NPY_ENABLE_CPU_FEATURES", None)  # numpy refuses both at once; the pin wins
    os.environ.update(env)
    os.environ["PATHTRAIL_EXECUTION_APPLIED"] = "1"
    return env


def _params_path(argv: Sequence[str]) -> Path:
    args = list(argv)
    for i, arg in enumerate(args):
        if arg == "--params" and i + 1 < len(args):
            return Path(args[i + 1])
        if arg.startswith("--params="):
            return Path(arg.split("=", 1)[1])
    return Path("params.yaml")


def _execution_section(path: Path) -> Mapping[str, Any] | None:
    if not path.is_file() or path.stat().st_size > 64 << 20:  # never block on a FIFO or read a huge file
        return None
    try:
        import yaml

        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except Exception:  # noqa: BLE001 - the stage reports an unreadable params file itself
        return None
    section = data.get("execution") if isinstance(data, dict) else None
    return section if isinstance(section, Mapping) else None


def enforce(section: Mapping[str, Any] | None) -> dict[str, Any]:
    """Apply the contract's thread count to torch (imported now) and say what this process runs.

    The record (the trail and the card keep it) has the params, the effective intra-op threads and
    ATen CPU capability, the contract's variables as this process saw them, and `honoured`: false
    when torch was loaded before the pins were set or this CPU cannot run the pinned level.
    """
    import torch

    threads, isa = _values(section)
    if threads > 0:
        torch.set_num_threads(threads)
    capability = torch.backends.cpu.get_cpu_capability()
    problems = []
    if threads > 0 and torch.get_num_threads() != threads:
        problems.append(f"torch runs {torch.get_num_threads()} threads, the contract says {threads}")
    wanted = environment_for(section)
    seen = {k: os.environ.get(k) for k in CONTRACT_VARIABLES}
    if any(seen.get(k) != v for k, v in wanted.items()):
        problems.append("the pinned variables were not all set (the stage did not start through stages/)")
    if isa == "avx2" and is_x86() and capability.upper() != "AVX2":
        problems.append(f"ATen runs {capability} kernels, the contract pins AVX2 (does this CPU have AVX2?)")
    return {
        "params": {"threads": threads, "cpu_isa": isa},
        "lifted": threads == 0 or isa == "native",
        "threads": torch.get_num_threads(),
        "aten_cpu_capability": capability,
        "machine": platform.machine(),
        "environment": {k: v for k, v in seen.items() if v is not None},
        "honoured": not problems,
        "problems": problems,
    }
