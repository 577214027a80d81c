"""MONAI's networks by name: 2-D, RGB in, class logits out, built with random weights (nothing is
ever downloaded: pretrained weights come only from `model.weights_path`, `pathtrail.train.weights`).

`model.width` sets each network's size, so the standard network and a tiny one for a CPU smoke run
have the same code:
- `monai_densenet121`: DenseNet-121's blocks (6, 12, 24, 16) with `init_features = width` and
  `growth_rate = width / 2` (64 is the standard DenseNet-121); `model.dropout` after each dense layer.
- `monai_resnet18/34/50`: ResNet stages of width, 2, 4 and 8 times width channels (64 is the standard
  ResNet), a 7x7 stride-2 stem as in the 2-D ResNets; no dropout (`model.dropout` must be 0).
- `monai_vit`: ViT with hidden size `width`, `model.vit` for the rest; its image size must be the
  data's patch size (checked in `pathtrail.train.inputs`), a linear head on the class token (MONAI's
  default Tanh after the head is left out: the loss needs plain logits).

monai is imported when one of these is built, not before: `small_cnn` runs never load it.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
from torch import nn

from pathtrail.config.subsections import VitParams
from pathtrail.core.errors import PathTrailError
from pathtrail.train.recompute import checkpointed, recompute_in_backward

RESNETS: dict[str, tuple[str, list[int]]] = {
    "monai_resnet18": ("basic", [2, 2, 2, 2]),
    "monai_resnet34": ("basic", [3, 4, 6, 3]),
    "monai_resnet50": ("bottleneck", [3, 4, 6, 3]),
}

# The nn.Sequential stages gradient checkpointing recomputes (monai_vit recomputes its blocks itself).
CHECKPOINT_STAGES: dict[str, tuple[str, ...]] = {
    "monai_densenet121": ("features",),
    **{name: ("layer1", "layer2", "layer3", "layer4") for name in RESNETS},
}

# The classifier's parameters (prefix of their state_dict keys): what a pretrained file from another
# task may lack or have in another shape (`pathtrail.train.weights`).
HEADS: dict[str, str] = {
    "monai_densenet121": "class_layers.out.",
    **{name: "fc." for name in RESNETS},
    "monai_vit": "classification_head.",
}


def build_monai(arch: str, num_classes: int, width: int, dropout: float, vit: VitParams | None) -> nn.Module:
    """The MONAI network `arch` (one of pathtrail.config.sections.MONAI_ARCHS), randomly initialised."""
    if arch == "monai_densenet121":
        from monai.networks.nets import DenseNet121

        return DenseNet121(spatial_dims=2, in_channels=3, out_channels=num_classes, init_features=width,
                           growth_rate=width // 2, dropout_prob=dropout, pretrained=False)
    if arch in RESNETS:
        from monai.networks.nets.resnet import ResNet

        block, layers = RESNETS[arch]
        return ResNet(block, layers, [width, 2 * width, 4 * width, 8 * width], spatial_dims=2,
                      n_input_channels=3, conv1_t_size=7, conv1_t_stride=2, num_classes=num_classes)
    if arch == "monai_vit":
        if vit is None:
            raise PathTrailError("model.arch=monai_vit needs the model.vit section; use `-S model=monai_vit`")
        return _vit_class()(
            in_channels=3, img_size=vit.image_size, patch_size=vit.patch_size, hidden_size=width,
            mlp_dim=vit.mlp_ratio * width, num_layers=vit.num_layers, num_heads=vit.num_heads,
            classification=True, num_classes=num_classes, dropout_rate=dropout, spatial_dims=2,
            post_activation=None,
        )
    raise PathTrailError(f"unknown MONAI architecture {arch!r}; choose one of: {', '.join(HEADS)}")


@functools.cache
def _vit_class() -> type[nn.Module]:
    """MONAI's ViT returning logits only (its forward returns them with every block's output), its
    blocks recomputed in backward when `gradient_checkpointing` is set. Same parameters and
    state_dict keys as MONAI's ViT, so MONAI-format ViT weights load as they are."""
    from monai.networks.nets import ViT

    class ViTClassifier(ViT):
        gradient_checkpointing = False

        def forward(self, x: torch.Tensor) -> torch.Tensor:  # MONAI's forward, less the hidden states
            if x.shape[-2:] != self.img_size:
                raise PathTrailError(f"monai_vit was built for {self.img_size[0]}-px patches (model.vit.image_size) "
                                     f"but got {tuple(x.shape[-2:])}; set model.vit.image_size to data.patch_size")
            x = self.patch_embedding(x)
            x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x), dim=1)
            recompute = self.gradient_checkpointing and recompute_in_backward(self)
            for blk in self.blocks:
                x = checkpointed(blk, x) if recompute else blk(x)
            return self.classification_head(self.norm(x)[:, 0])

        def __init__(self, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.img_size = (kwargs["img_size"],) * 2

    ViTClassifier.__qualname__ = "ViTClassifier"
    return ViTClassifier


def enable_vit_checkpointing(model: nn.Module) -> None:
    model.gradient_checkpointing = True
