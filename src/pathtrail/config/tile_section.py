"""The `tile` params section (whole slides cut into patches; only with `data=slides`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pathtrail.config.loading import require


@dataclass(frozen=True)
class TileParams:
    """The `tile` params section (only with `data=slides`): whole slides cut into patches.

    Read by the tile stage and `pathtrail.wsi.tile_slide_table`; see the README, "Starting from
    whole slides".
    """

    slide_root: str                 # folder the slide tables' paths are relative to
    internal_slides: str            # slide table (CSV) of the internal cohort
    external_slides: str | None     # slide table of the external cohort
    mpp: float                      # target resolution of the patches, micrometres per pixel
    assume_mpp: float | None        # used for slides without MPP metadata (recorded per patch)
    mpp_tolerance: float            # a level within this relative distance of `mpp` is read as is
    backend: Literal["auto", "openslide", "tiffslide"]
    mask_max_size: int              # longest side of the low-resolution tissue mask, pixels
    min_tissue_fraction: float      # a patch needs at least this share of tissue in the mask
    max_pen_fraction: float         # ... and at most this share of pen marks
    min_sharpness: float            # variance of the Laplacian of its grey levels; below: blurred
    max_patches_per_slide: int      # 0: all; else an evenly spaced, deterministic subset
    batch_size: int                 # patches read at once: bounds the memory, not the slide size
    thumbnail_size: int             # longest side of the QC thumbnail, pixels

    def check(self) -> None:
        require(0 < self.mpp <= 100, "tile.mpp", f"must be in (0, 100] micrometres per pixel, got {self.mpp}")
        require(self.assume_mpp is None or 0 < self.assume_mpp <= 100, "tile.assume_mpp",
                "must be null or in (0, 100] micrometres per pixel (e.g. 0.25 for a 40x scan)")
        require(0 <= self.mpp_tolerance < 0.5, "tile.mpp_tolerance", "must be in [0, 0.5)")
        require(64 <= self.mask_max_size <= 8192, "tile.mask_max_size", "must be in [64, 8192]")
        require(0 <= self.min_tissue_fraction <= 1, "tile.min_tissue_fraction", "must be in [0, 1]")
        require(0 <= self.max_pen_fraction <= 1, "tile.max_pen_fraction", "must be in [0, 1]")
        require(self.min_sharpness >= 0, "tile.min_sharpness", "must be >= 0 (0 keeps blurred patches)")
        require(self.max_patches_per_slide >= 0, "tile.max_patches_per_slide", "must be >= 0 (0: all)")
        require(1 <= self.batch_size <= 4096, "tile.batch_size", "must be in [1, 4096]")
        require(64 <= self.thumbnail_size <= 8192, "tile.thumbnail_size", "must be in [64, 8192]")
