"""Model registry: a built-in small CNN for the demo, torchvision architectures by name."""

from __future__ import annotations

import contextlib
import itertools
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn
from torch.nn.modules.batchnorm import _NormBase
from torch.utils.checkpoint import checkpoint

from pathtrail.config.sections import ARCHITECTURES, TORCHVISION_ARCHS
from pathtrail.core.errors import PathTrailError
from pathtrail.core.hashing import sha256_file


def _recompute_in_backward(module: nn.Module) -> bool:
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


def _checkpoint(fn: Callable[..., torch.Tensor], x: torch.Tensor, *args: object,
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
        if not _recompute_in_backward(self):
            return super().forward(x)
        for module in self:
            if next(module.parameters(), None) is None:
                x = module(x)
            else:
                x = _checkpoint(module, x, norms=_running_stat_norms(module))
        return x


class SmallCNN(nn.Module):
    """Four conv blocks with GroupNorm (not BatchNorm: DDP and single-process runs agree).

    Smooth by design: SiLU and average pooling rather than ReLU and max pooling. Eager and compiled
    kernels round differently; with max-pool argmax flips and ReLU kinks those 1e-7 differences
    grew to 0.19 in per-step loss over the demo's 152 steps (a failed compile check), with SiLU and
    average pooling the curves stayed within 0.02 and the validation AUROC matched.

    With `gradient_checkpointing` each conv block (conv, norm, SiLU, pool) is recomputed in backward
    instead of keeping its activations: same results, less memory, about one more forward of compute.
    The layers stay in one flat `features` Sequential, so the state_dict is the same either way.
    """

    BLOCK = 4  # modules per conv block in `features`

    def __init__(self, num_classes: int, width: int = 32, dropout: float = 0.2,
                 gradient_checkpointing: bool = False) -> None:
        super().__init__()
        self.gradient_checkpointing = gradient_checkpointing
        chans = [3, width, width * 2, width * 4, width * 4]
        blocks: list[nn.Module] = []
        for cin, cout in itertools.pairwise(chans):
            blocks += [
                nn.Conv2d(cin, cout, 3, padding=1, bias=False),
                nn.GroupNorm(min(8, cout // 4), cout),
                nn.SiLU(inplace=True),
                nn.AvgPool2d(2),
            ]
        self.features = nn.Sequential(*blocks)
        self.head = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout), nn.Linear(chans[-1], num_classes)
        )

    def _block(self, x: torch.Tensor, start: int) -> torch.Tensor:
        for i in range(start, start + self.BLOCK):
            x = self.features[i](x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gradient_checkpointing and _recompute_in_backward(self):
            for start in range(0, len(self.features), self.BLOCK):
                x = _checkpoint(self._block, x, start)
            return self.head(x)
        return self.head(self.features(x))


def known_architectures() -> list[str]:
    return list(ARCHITECTURES)


# Where each torchvision architecture's main stages live: each named nn.Sequential becomes a
# CheckpointedSequential (one recomputed segment per residual / encoder / dense block).
# torchvision's own densenet `memory_efficient=True` is not used: it recomputes BatchNorm layers
# without restoring their running statistics, which would change the trained model.
# An architecture missing here cannot be checkpointed and fails before training.
CHECKPOINT_STAGES: dict[str, tuple[str, ...]] = {
    "resnet18": ("layer1", "layer2", "layer3", "layer4"),
    "resnet34": ("layer1", "layer2", "layer3", "layer4"),
    "resnet50": ("layer1", "layer2", "layer3", "layer4"),
    "densenet121": ("features",),
    "vit_b_16": ("encoder.layers",),
}


def build_model(arch: str, num_classes: int, width: int = 32, dropout: float = 0.2, *,
                gradient_checkpointing: bool = False) -> nn.Module:
    """Instantiate by name; never downloads weights.

    `gradient_checkpointing` (model.gradient_checkpointing) recomputes the main stages' activations
    in backward: same results, less memory, more compute. It changes no state_dict key.
    """
    if arch == "small_cnn":
        return SmallCNN(num_classes, width, dropout, gradient_checkpointing)
    if arch in TORCHVISION_ARCHS:
        try:
            import torchvision.models as tvm
        except ImportError:
            raise PathTrailError(
                f"model.arch={arch!r} needs torchvision, which is not installed. "
                "Install a torchvision matching your torch, or use model.arch=small_cnn."
            ) from None
        if not gradient_checkpointing:
            return getattr(tvm, arch)(weights=None, num_classes=num_classes)
        if arch not in CHECKPOINT_STAGES:
            raise _cannot_checkpoint(arch, "pathtrail knows no stages to checkpoint in it")
        model = getattr(tvm, arch)(weights=None, num_classes=num_classes)
        for path in CHECKPOINT_STAGES[arch]:
            _checkpoint_stage(model, arch, path)
        return model
    raise PathTrailError(
        f"unknown model.arch {arch!r}; choose one of: {', '.join(known_architectures())}"
    )


def _cannot_checkpoint(arch: str, why: str) -> PathTrailError:
    return PathTrailError(
        f"model.gradient_checkpointing=true is not supported for model.arch={arch!r}: {why}. "
        "Set model.gradient_checkpointing=false, or choose another model.arch."
    )


def _checkpoint_stage(model: nn.Module, arch: str, path: str) -> None:
    """Swap the nn.Sequential at dotted `path` for a CheckpointedSequential with the same children."""
    *parents, leaf = path.split(".")
    owner = model
    for name in parents:
        owner = getattr(owner, name, None)
    stage = getattr(owner, leaf, None)
    if type(stage) is not nn.Sequential:  # a subclass may have its own forward: do not guess
        raise _cannot_checkpoint(arch, f"expected an nn.Sequential at {path!r}, found {type(stage).__name__} "
                                       "(another torchvision version?)")
    setattr(owner, leaf, CheckpointedSequential(OrderedDict(stage.named_children())))


def load_local_weights(model: nn.Module, path: str | Path) -> str:
    """Load a local state_dict (weights_only) into `model`; return the file's sha256."""
    p = Path(path)
    if not p.is_file():
        raise PathTrailError(f"model.weights_path: {p} does not exist (weights are never downloaded)")
    state = torch.load(p, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    _missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected:
        raise PathTrailError(f"model.weights_path: {p} has keys the model lacks: {unexpected[:5]}")
    return sha256_file(p)
