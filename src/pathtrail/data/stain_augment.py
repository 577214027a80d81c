"""HED stain augmentation: jitter each stain's concentration, as TIAToolbox's StainAugmentor and
HEDJitter (Tellez et al., 2018) do.

Colour space: skimage's `rgb2hed` / `hed2rgb` convention. Optical density OD = ln(max(I/255, 1e-6)) /
ln(1e-6) per channel (0 for white, 1 for black), concentrations C = OD @ inv(R) with Ruifrok and
Johnston's stain matrix R (rows H, E, D). The jitter maps C to C * a + b (a and b per stain), then
back: OD' = C' @ R, I' = 255 * 1e-6 ** OD'. Unlike `rgb2hed`, negative concentrations are not
clipped before the jitter, so a = 1, b = 0 returns the patch unchanged (test_stain_augment.py).

`hed_jitter` is the deterministic core; `random_hed_jitter` draws a and b from a generator keyed
on (seed, epoch, sample index, STAIN_KEY), so an augmented patch depends on nothing else (not on
DataLoader workers, ranks or where a run was resumed). The arithmetic is elementwise (no BLAS
product whose summation order could vary by machine).
"""

from __future__ import annotations

import numpy as np

# skimage.color.colorconv.rgb_from_hed (Ruifrok & Johnston, 2001): rows are the H, E, D stains' RGB OD.
RGB_FROM_HED = ((0.65, 0.70, 0.29), (0.07, 0.99, 0.11), (0.27, 0.57, 0.78))


def _inverse(m: tuple[tuple[float, ...], ...]) -> tuple[tuple[float, ...], ...]:
    """A 3x3 inverse by cofactors in Python floats (no LAPACK: the same bits on every machine)."""
    (a, b, c), (d, e, f), (g, h, i) = m
    det = a * (e * i - f * h) - b * (d * i - f * g) + c * (d * h - e * g)
    cof = ((e * i - f * h, c * h - b * i, b * f - c * e),
           (f * g - d * i, a * i - c * g, c * d - a * f),
           (d * h - e * g, b * g - a * h, a * e - b * d))
    return tuple(tuple(x / det for x in row) for row in cof)


HED_FROM_RGB = _inverse(RGB_FROM_HED)
STAIN_KEY = 0x4ED  # keeps these draws apart from the dihedral augmentation's (seed, epoch, index)
_LOG_ADJUST = np.log(1e-6)
# OD of each uint8 level (a 256-entry table: the same for every patch)
_OD_OF_LEVEL = np.log(np.maximum(np.arange(256) / 255.0, 1e-6)) / _LOG_ADJUST


def jitter_matrix(scale: np.ndarray, shift: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(A, c) with OD' = OD @ A + c for per-stain `scale` (a) and `shift` (b), each of 3 values."""
    a, b = [float(x) for x in scale], [float(x) for x in shift]
    H, R = HED_FROM_RGB, RGB_FROM_HED
    A = [[sum(H[i][k] * a[k] * R[k][j] for k in range(3)) for j in range(3)] for i in range(3)]
    c = [sum(b[k] * R[k][j] for k in range(3)) for j in range(3)]
    return np.array(A), np.array(c)


def hed_jitter(img: np.ndarray, scale: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """`img` (H, W, 3) uint8 with each stain's concentration c replaced by c * scale + shift."""
    A, c = jitter_matrix(scale, shift)
    od = _OD_OF_LEVEL[img]  # (H, W, 3) float64
    out = np.empty(img.shape, dtype=np.float64)
    for j in range(3):  # written out: every element gets the same operations in the same order
        out[..., j] = od[..., 0] * A[0, j] + od[..., 1] * A[1, j] + od[..., 2] * A[2, j] + c[j]
    rgb = np.exp(out * _LOG_ADJUST) * 255.0
    return np.rint(np.clip(rgb, 0.0, 255.0)).astype(np.uint8)


def draw_jitter(sigma_scale: float, sigma_shift: float, seed: int, epoch: int,
                index: int) -> tuple[np.ndarray, np.ndarray]:
    """(scale, shift) of one sample: a ~ U(1 - sigma_scale, 1 + sigma_scale), b ~ U(-sigma_shift, sigma_shift)."""
    rng = np.random.default_rng([seed, epoch, index, STAIN_KEY])
    scale = rng.uniform(1.0 - sigma_scale, 1.0 + sigma_scale, size=3)
    shift = rng.uniform(-sigma_shift, sigma_shift, size=3)
    return scale, shift


def random_hed_jitter(img: np.ndarray, sigma_scale: float, sigma_shift: float, seed: int, epoch: int,
                      index: int) -> np.ndarray:
    """`hed_jitter` with the sample's keyed draw (`draw_jitter`)."""
    return hed_jitter(img, *draw_jitter(sigma_scale, sigma_shift, seed, epoch, index))
