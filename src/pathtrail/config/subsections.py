"""Nested params sections: `model.vit` (the shape of monai_vit) and `train.stain_augment`."""

from __future__ import annotations

from dataclasses import dataclass

from pathtrail.config.loading import require


@dataclass(frozen=True)
class VitParams:
    """`model.vit`: the shape of `monai_vit` (only in pipelines/model/monai_vit.yaml); its hidden size
    is `model.width`, its MLP `mlp_ratio` times that."""

    image_size: int   # must equal data.patch_size (checked where both sections are read)
    patch_size: int   # image_size / patch_size tokens per side
    num_layers: int
    num_heads: int    # must divide model.width
    mlp_ratio: int

    def check(self) -> None:
        require(self.image_size >= 1, "model.vit.image_size", "must be >= 1 (data.patch_size)")
        require(self.patch_size >= 1 and self.image_size % self.patch_size == 0, "model.vit.patch_size",
                f"is {self.patch_size}, which must divide model.vit.image_size={self.image_size} "
                "(e.g. 8 or 16 for 64-px patches)")
        require(self.num_layers >= 1, "model.vit.num_layers", "must be >= 1")
        require(self.num_heads >= 1, "model.vit.num_heads", "must be >= 1")
        require(self.mlp_ratio >= 1, "model.vit.mlp_ratio", "must be >= 1")


@dataclass(frozen=True)
class StainAugmentParams:
    """`train.stain_augment`: HED colour jitter of the training patches (`pathtrail.data.stain_augment`).

    Each stain's concentration c (Ruifrok-Johnston H, E, D in skimage's rgb2hed units) becomes
    c * a + b with a ~ U(1 - sigma_scale, 1 + sigma_scale), b ~ U(-sigma_shift, sigma_shift), drawn
    per patch from a generator keyed on (seed, epoch, sample index).
    """

    enabled: bool
    sigma_scale: float
    sigma_shift: float

    def check(self) -> None:
        require(0 <= self.sigma_scale < 1, "train.stain_augment.sigma_scale", "must be in [0, 1) (e.g. 0.05)")
        require(0 <= self.sigma_shift <= 0.1, "train.stain_augment.sigma_shift",
                "must be in [0, 0.1] (e.g. 0.01; 0.1 shifts a stain by 1.4 optical-density units)")
