"""Activation recomputation (gradient checkpointing) that changes no result: RNG state replayed,
BatchNorm running statistics updated once, state_dict keys unchanged."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch
from torch import nn
from torch.nn.modules.batchnorm import _NormBase
from torch.utils.checkpoint import checkpoint


def recompute_in_backward(module: nn.Module) -> bool:
    """Checkpoint only when a backward will follow: eval and `no_grad` run the plain forward."""
    return module.training and torch.is_grad_enabled()


def _running_stat_norms(module: nn.Module) -> list[_NormBase]:
    """The norm layers that update running statistics in this forward (BatchNorm in training)."""
    return [m for m in module.modules()
            if isinstance(m, _NormBase) and m.training and m.running_mean is not None]


class _KeepRunningStats:
    """Around a recomputation: put the running statistics back as the original forward left them.

    Recomputing a BatchNorm in training mode would update running_mean / running_var /
    num_batches_tracked a second time, so the eval-mode model would differ from a run without
    checkpointing. (torch.compile needs no such guard: its graph applies buffer updates once.)
    """

    def __init__(self, norms: list[_NormBase]) -> None:
        self.norms = norms
        self.saved: list[list[torch.Tensor]] = []

    def _buffers(self, m: _NormBase) -> list[torch.Tensor]:
        return [b for b in (m.running_mean, m.running_var, m.num_batches_tracked) if b is not None]

    def __enter__(self) -> None:
        self.saved = [[b.clone() for b in self._buffers(m)] for m in self.norms]

    def __exit__(self, *exc: object) -> None:
        with torch.no_grad():
            for m, saved in zip(self.norms, self.saved, strict=True):
                for buf, value in zip(self._buffers(m), saved, strict=True):
                    buf.copy_(value)


def checkpointed(fn: Callable[..., torch.Tensor], x: torch.Tensor, *args: object,
                norms: list[_NormBase] | None = None) -> torch.Tensor:
    """Activation recomputation, non-reentrant, RNG state preserved (dropout masks replay exactly).

    `norms`: the running-statistics layers inside `fn`, restored after their recomputation.
    Under torch.compile dynamo traces the checkpoint without a graph break; a dropout *inside* a
    recomputed segment then draws other masks than eager even with inductor's fallback_random
    (none of the built-in segments has one: SmallCNN's dropout is in its head).
    """
    if norms and not torch.compiler.is_compiling():
        def contexts() -> tuple[contextlib.AbstractContextManager, _KeepRunningStats]:
            return contextlib.nullcontext(), _KeepRunningStats(norms)
        return checkpoint(fn, x, *args, use_reentrant=False, preserve_rng_state=True, context_fn=contexts)
    return checkpoint(fn, x, *args, use_reentrant=False, preserve_rng_state=True)


class CheckpointedSequential(nn.Sequential):
    """An `nn.Sequential` whose children with parameters are each recomputed in backward while training.

    Children without parameters (activations, pooling) run as usual: they are cheap to keep and
    may work in place on their input, which recomputation could not replay. Same children under
    the same names, so the state_dict keys are those of the plain Sequential it replaces (local
    weights and saved models load either way).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not recompute_in_backward(self):
            return super().forward(x)
        for module in self:
            if next(module.parameters(), None) is None:
                x = module(x)
            else:
                x = checkpointed(module, x, norms=_running_stat_norms(module))
        return x
