"""Where patches lie and how they are read: the level to read, the grid, the resampling.

A patch is `patch_size` pixels at `mpp` micrometres per pixel, so it covers
`patch_size * mpp / slide_mpp` level-0 pixels. It is read from the coarsest pyramid level that is
not coarser than `mpp` (within `tolerance`: a 0.502 level serves a 0.5 target as is), then resampled
to `patch_size` with a Lanczos filter when the level's resolution is not the target's. A target finer
than level 0 is refused: upsampling would invent detail. The grid tiles level 0 without overlap,
from the top-left corner, and never leaves the image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

from pathtrail.wsi.reader import Slide, SlideError


@dataclass(frozen=True)
class ReadPlan:
    """How one slide's patches are read."""

    level: int           # pyramid level read
    level_mpp: float     # its resolution, micrometres per pixel
    footprint: float     # level-0 pixels per patch side
    read_size: int       # pixels per patch side read at `level` (resampled to patch_size if other)
    patch_size: int


def choose_level(downsamples: list[float], slide_mpp: float, mpp: float, tolerance: float) -> int:
    """The coarsest level whose resolution is at most `mpp * (1 + tolerance)`.

    Refuses (ValueError) a target finer than level 0 by more than the tolerance."""
    if mpp < slide_mpp * (1 - tolerance):
        raise ValueError(f"tile.mpp {mpp:g} is finer than the slide's level 0 ({slide_mpp:g} µm/px)")
    best = 0
    for level, down in enumerate(downsamples):
        if slide_mpp * down <= mpp * (1 + tolerance):
            best = level if down >= downsamples[best] else best
    return best


def read_plan(slide: Slide, mpp: float, patch_size: int, tolerance: float) -> ReadPlan:
    try:
        level = choose_level(slide.downsamples, slide.mpp, mpp, tolerance)
    except ValueError as exc:
        raise SlideError(f"slide '{slide.path}': {exc}; fix: set tile.mpp to {slide.mpp:g} or "
                         "coarser, or rescan the slide at a higher magnification") from None
    footprint = patch_size * mpp / slide.mpp
    level_mpp = slide.mpp * slide.downsamples[level]
    within = abs(level_mpp - mpp) <= mpp * tolerance
    read_size = patch_size if within else max(1, round(footprint / slide.downsamples[level]))
    return ReadPlan(level, level_mpp, footprint, read_size, patch_size)


def grid_origins(width: int, height: int, footprint: float) -> tuple[np.ndarray, np.ndarray]:
    """Top-left corners (x, y), level-0 pixels, of the patches that fit in width x height, row by
    row (y, then x): corner i along an axis is round(i * footprint)."""
    nx = math.floor(width / footprint + 1e-9)
    ny = math.floor(height / footprint + 1e-9)
    xs = np.round(np.arange(nx) * footprint).astype(np.int64)
    ys = np.round(np.arange(ny) * footprint).astype(np.int64)
    # a corner whose read would cross the edge by rounding is dropped
    xs = xs[xs + math.ceil(footprint) <= width] if nx else xs
    ys = ys[ys + math.ceil(footprint) <= height] if ny else ys
    gy, gx = np.meshgrid(ys, xs, indexing="ij")
    return gx.ravel(), gy.ravel()


def resample(region: np.ndarray, patch_size: int) -> np.ndarray:
    """`region` (uint8 RGB) at patch_size x patch_size: as is, or Lanczos-resampled."""
    if region.shape[0] == patch_size and region.shape[1] == patch_size:
        return region
    image = Image.fromarray(region).resize((patch_size, patch_size), Image.Resampling.LANCZOS)
    return np.asarray(image, dtype=np.uint8)


def mask_level(slide: Slide, max_size: int) -> tuple[int, int]:
    """(level, integer reduction) giving a whole-slide image of at most `max_size` per side:
    the finest level small enough, else the coarsest reduced by an integer factor."""
    for level, (w, h) in enumerate(slide.dimensions):
        if max(w, h) <= max_size:
            return level, 1
    level = len(slide.dimensions) - 1
    w, h = slide.dimensions[level]
    return level, math.ceil(max(w, h) / max_size)


def read_overview(slide: Slide, max_size: int, block: int = 2048) -> tuple[np.ndarray, tuple[float, float]]:
    """The whole slide at low resolution (RGB) and its level-0 pixels per overview pixel (x, y).

    Read in blocks of about `block` x `block` pixels of the level read, each reduced by box
    averaging, so memory stays at one block whatever the slide's size (a slide with no small level
    is reduced from a large one without holding it)."""
    level, factor = mask_level(slide, max_size)
    w, h = slide.dimensions[level]
    down = slide.downsamples[level]
    step = factor * max(1, block // factor)  # level pixels per block side: whole reduction cells
    rows = []
    for y in range(0, h, step):
        cells = []
        for x in range(0, w, step):
            part = slide.read(round(x * down), round(y * down), level, min(step, w - x), min(step, h - y))
            if factor > 1:
                part = np.asarray(Image.fromarray(part).reduce(factor), dtype=np.uint8)
            cells.append(part)
        rows.append(np.concatenate(cells, axis=1))
    overview = np.concatenate(rows, axis=0)
    width, height = slide.dimensions[0]
    return overview, (width / overview.shape[1], height / overview.shape[0])
