"""Tissue, pen marks and blur: pure functions of uint8 RGB arrays (NumPy oracles in the tests).

Tissue is found on a low-resolution image of the whole slide: Otsu's threshold on the HSV
saturation, locally averaged (stained tissue is coloured, glass and background are grey-white), pen marks and
near-black pixels taken out, then a closing, an opening, holes filled and specks removed.
A patch's tissue and pen fractions are read from those masks over its footprint (summed-area
tables: constant time per patch); blur is the variance of the Laplacian of its grey levels,
measured on the patch itself.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

MIN_SATURATION = 20          # of 255: below this nothing is tissue, whatever Otsu says (blank slide)
DARK_VALUE = 40              # of 255: darker pixels are ink or scanner debris, not stain
SPECK_FRACTION = 1e-4        # tissue components below this share of the mask are removed
SMOOTH_DIVISOR = 96          # saturation is averaged over (shorter side / this) pixels before Otsu
PEN_MIN_FRACTION = 5e-4      # ink components below this share are not pen (nuclei, debris)
_STRUCT = ndimage.generate_binary_structure(2, 1)


@dataclass(frozen=True)
class Masks:
    """Boolean masks at the low-resolution level: tissue (pen excluded) and pen marks."""

    tissue: np.ndarray
    pen: np.ndarray


def hsv(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Hue in degrees [0, 360), saturation and value in [0, 255], as float32 arrays."""
    c = rgb.astype(np.float32)
    r, g, b = c[..., 0], c[..., 1], c[..., 2]
    high, low = c.max(axis=-1), c.min(axis=-1)
    span = high - low
    safe = np.where(span > 0, span, 1.0)
    hue = np.where(high == r, (g - b) / safe % 6.0,
                   np.where(high == g, (b - r) / safe + 2.0, (r - g) / safe + 4.0)) * 60.0
    hue = np.where(span > 0, hue, 0.0).astype(np.float32)
    sat = np.where(high > 0, span / np.where(high > 0, high, 1.0) * 255.0, 0.0).astype(np.float32)
    return hue, sat, high


def otsu_threshold(values: np.ndarray) -> int:
    """Otsu's threshold of uint8-range values: the t maximising the between-class variance of
    (values <= t, values > t); integer arithmetic on the histogram, so exact and deterministic."""
    hist = np.bincount(np.clip(values, 0, 255).astype(np.int64).ravel(), minlength=256)[:256]
    hist = hist.astype(np.float64)
    total = hist.sum()
    if total == 0:
        return 0
    levels = np.arange(256, dtype=np.float64)
    w0 = np.cumsum(hist)
    m0 = np.cumsum(hist * levels)
    w1 = total - w0
    mean_all = m0[-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (mean_all * w0 - m0 * total) ** 2 / (w0 * w1)
    between[(w0 == 0) | (w1 == 0)] = -1.0
    return int(np.argmax(between))


def pen_mask(rgb: np.ndarray) -> np.ndarray:
    """Blue, green and black marker ink: hues and saturations H&E does not take, or near-black,
    in patches larger than a nucleus. Blue needs a saturation hematoxylin reaches on under 0.3%
    of the pixels of the real scans in tests/data/he/ (scattered nuclei), and components under
    PEN_MIN_FRACTION of the image (a nucleus at full resolution) are dropped."""
    hue, sat, value = hsv(rgb)
    blue = (hue >= 190) & (hue <= 245) & (sat >= 170) & (value >= 100)
    green = (hue >= 70) & (hue <= 170) & (sat >= 100) & (value >= 40)
    black = value < DARK_VALUE
    return without_specks(blue | green | black, PEN_MIN_FRACTION)


def without_specks(mask: np.ndarray, fraction: float) -> np.ndarray:
    """`mask` without its connected components smaller than `fraction` of its pixels."""
    labels, n = ndimage.label(mask, _STRUCT)
    if n:
        small = np.bincount(labels.ravel()) < max(1, int(fraction * mask.size))
        small[0] = False
        mask = mask & ~small[labels]
    return mask


def tissue_masks(rgb: np.ndarray) -> Masks:
    """Tissue and pen masks of a low-resolution RGB image of the whole slide."""
    _, sat, _ = hsv(rgb)
    pen = pen_mask(rgb)
    # smoothed over a few cells, so that Otsu splits tissue from glass, not nuclei from stroma
    size = max(3, min(rgb.shape[:2]) // SMOOTH_DIVISOR) | 1
    sat = ndimage.uniform_filter(np.where(pen, 0.0, sat).astype(np.float32), size=size, mode="nearest")
    candidates = sat[~pen]
    threshold = max(MIN_SATURATION, otsu_threshold(candidates) if candidates.size else 255)
    tissue = (sat > threshold) & ~pen
    tissue = ndimage.binary_closing(tissue, _STRUCT, iterations=2, border_value=0)
    tissue = ndimage.binary_opening(tissue, _STRUCT, iterations=2, border_value=0)
    tissue = ndimage.binary_fill_holes(tissue)
    tissue = without_specks(tissue & ~pen, SPECK_FRACTION)
    pen = ndimage.binary_dilation(pen, _STRUCT, iterations=1)
    return Masks(tissue=tissue, pen=pen)


def summed_area(mask: np.ndarray) -> np.ndarray:
    """The summed-area table of `mask`, padded with a zero row and column (int64)."""
    table = np.zeros((mask.shape[0] + 1, mask.shape[1] + 1), dtype=np.int64)
    np.cumsum(np.cumsum(mask, axis=0, dtype=np.int64), axis=1, out=table[1:, 1:])
    return table


def box_fractions(table: np.ndarray, x0: np.ndarray, y0: np.ndarray, x1: np.ndarray,
                  y1: np.ndarray) -> np.ndarray:
    """The share of True pixels of the mask behind `table` in each box [x0, x1) x [y0, y1)
    (integer mask coordinates, clipped to the mask; an empty box counts as 0)."""
    h, w = table.shape[0] - 1, table.shape[1] - 1
    x0, x1 = np.clip(x0, 0, w), np.clip(x1, 0, w)
    y0, y1 = np.clip(y0, 0, h), np.clip(y1, 0, h)
    inside = table[y1, x1] - table[y0, x1] - table[y1, x0] + table[y0, x0]
    area = (x1 - x0) * (y1 - y0)
    return np.where(area > 0, inside / np.maximum(area, 1), 0.0)


def sharpness(rgb: np.ndarray) -> float:
    """Variance of the 4-neighbour Laplacian of the grey levels (float64, exact order): low when
    the patch is out of focus. Borders are left out rather than padded."""
    grey = rgb.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    lap = (grey[:-2, 1:-1] + grey[2:, 1:-1] + grey[1:-1, :-2] + grey[1:-1, 2:]
           - 4.0 * grey[1:-1, 1:-1])
    return float(lap.var()) if lap.size else 0.0
