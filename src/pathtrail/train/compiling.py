"""`torch.compile` as the pipeline uses it: inductor's graph-level caches off.

Inductor caches at two levels: generated C++/Triton kernels keyed by their source text (a hit
is the same code), and whole compiled graphs (the FX graph cache and the AOT-autograd cache)
keyed by a description of the graph, its inputs and the compile settings. On this project's
machine a graph entry written by one process crashed another that loaded it (glibc "double free
or corruption" in the compiled training run; the same run with a fresh cache folder, or with the
graph caches off, trained normally). A compiled run that can crash or, worse, run another
graph than its own is not one a compile gate can vouch for, so the graph caches are off for every
compile here; the kernel cache stays (the kernels are recompiled only when their source differs).
Turning them off costs the lowering time of each compile (tens of seconds on CPU), not a result.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


def compile_module(net: nn.Module, mode: str, *, fallback_random: bool | None = None) -> Any:
    """`torch.compile(net, mode=mode)` with inductor's graph-level caches off (and inductor's
    `fallback_random` set when given: eager's random numbers in compiled code)."""
    import torch._functorch.config as functorch_config
    import torch._inductor.config as inductor_config

    inductor_config.fx_graph_cache = False
    functorch_config.enable_autograd_cache = False
    if fallback_random is not None:
        inductor_config.fallback_random = fallback_random
    return torch.compile(net, mode=mode)


def scoring_module(net: nn.Module, mode: str, device: torch.device) -> tuple[Any, dict[str, Any]]:
    """The module evaluate and `pathtrail predict` score with, for `eval.compile_mode`, and what was
    done: `none` is the eager module; `reduce-overhead` (CUDA graphs) compiles on CUDA only, and on
    a CPU scores eagerly, bit for bit the eager scores, saying so (`fallback`); `default` and
    `max-autotune` compile on any device (their scores may differ from eager in the last bits)."""
    net = net.to(device)
    info: dict[str, Any] = {"compile_mode": mode, "compiled": False, "device": device.type}
    if mode == "none":
        return net, info
    if mode == "reduce-overhead" and device.type != "cuda":
        return net, info | {"fallback": "CUDA graphs need a CUDA device: scored eagerly on the CPU"}
    return CopiedOutputs(compile_module(net.eval(), mode)), info | {"compiled": True}


class CopiedOutputs(nn.Module):
    """A compiled scoring module whose every output is its own tensor: CUDA graphs
    (`reduce-overhead`) replay into the same output memory, so without the copy the logits kept
    from one batch would be overwritten by the next (the copy changes no value)."""

    def __init__(self, inner: Any) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        torch.compiler.cudagraph_mark_step_begin()
        return self.inner(x).clone()


def graph_caches_off() -> bool:
    """Whether this process compiles with inductor's graph-level caches off."""
    import torch._functorch.config as functorch_config
    import torch._inductor.config as inductor_config

    return not inductor_config.fx_graph_cache and not functorch_config.enable_autograd_cache
