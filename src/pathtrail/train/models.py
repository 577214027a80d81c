"""Model registry by name: the demo's small CNN, MONAI's networks, torchvision's (when installed)."""

from __future__ import annotations

import itertools
from collections import OrderedDict

import torch
from torch import nn

from pathtrail.config.sections import ARCHITECTURES, MONAI_ARCHS, TORCHVISION_ARCHS, ModelParams
from pathtrail.config.subsections import VitParams
from pathtrail.core.errors import PathTrailError
from pathtrail.train import monai_nets
from pathtrail.train.recompute import CheckpointedSequential, checkpointed, recompute_in_backward


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
        if self.gradient_checkpointing and recompute_in_backward(self):
            for start in range(0, len(self.features), self.BLOCK):
                x = checkpointed(self._block, x, start)
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


# The classifier layers (state_dict key prefix) of each architecture: what a pretrained file from
# another task may lack or have in another shape (pathtrail.train.weights).
HEADS: dict[str, str] = {
    "small_cnn": "head.",
    **monai_nets.HEADS,
    "resnet18": "fc.", "resnet34": "fc.", "resnet50": "fc.", "densenet121": "classifier.", "vit_b_16": "heads.",
}


def build_model(arch: str, num_classes: int, width: int = 32, dropout: float = 0.2, *,
                gradient_checkpointing: bool = False, vit: VitParams | dict | None = None) -> nn.Module:
    """Instantiate by name with random weights; never downloads any.

    `gradient_checkpointing` (model.gradient_checkpointing) recomputes the main stages' activations
    in backward: same results, less memory, more compute. It changes no state_dict key.
    `vit`: the `model.vit` section (or its dict, as models/model.pt records it), for monai_vit only.
    """
    if arch == "small_cnn":
        return SmallCNN(num_classes, width, dropout, gradient_checkpointing)
    if arch in MONAI_ARCHS:
        vit_params = VitParams(**vit) if isinstance(vit, dict) else vit
        model = monai_nets.build_monai(arch, num_classes, width, dropout, vit_params)
        if gradient_checkpointing and arch == "monai_vit":
            monai_nets.enable_vit_checkpointing(model)
        elif gradient_checkpointing:
            for path in monai_nets.CHECKPOINT_STAGES[arch]:
                _checkpoint_stage(model, arch, path)
        return model
    if arch in TORCHVISION_ARCHS:
        try:
            import torchvision.models as tvm
        except ImportError:
            raise PathTrailError(
                f"model.arch={arch!r} needs torchvision, which is not installed. Install the torchvision "
                f"built for torch {torch.__version__} (README, \"GPU users\"), or use a monai_* architecture."
            ) from None
        except RuntimeError as exc:  # e.g. "operator torchvision::nms does not exist": another torch build
            raise PathTrailError(
                f"model.arch={arch!r}: torchvision is installed but does not load with torch {torch.__version__} "
                f"({str(exc).splitlines()[0][:120]}); install the torchvision built for this torch, from the "
                "same index (README, \"GPU users\"), or use a monai_* architecture."
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
                                       "(another torchvision or monai version?)")
    setattr(owner, leaf, CheckpointedSequential(OrderedDict(stage.named_children())))


def build_from_params(model: ModelParams, num_classes: int) -> nn.Module:
    """`build_model` with the `model` params section's architecture, size and options."""
    return build_model(model.arch, num_classes, model.width, model.dropout,
                       gradient_checkpointing=model.gradient_checkpointing, vit=model.vit)
