"""The per-slide QC thumbnail: the slide, its tissue mask's outline and the patch grid on it.

Tissue outline yellow, pen marks outlined blue; kept patches green, patches rejected as blurred
red, as pen orange (background ones are simply not drawn: they lie outside the outline). The
PNG carries no metadata (no date, no software version), so the same slide gives the same bytes.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from pathtrail.wsi.tissue import Masks

COLOURS = {"kept": (0, 200, 0), "blur": (230, 0, 0), "pen": (255, 140, 0)}
_OUTLINE = {"tissue": (255, 230, 0), "pen": (0, 90, 255)}
PNG_COMPRESS_LEVEL = 6


def _outline(mask: np.ndarray) -> np.ndarray:
    return mask & ~ndimage.binary_erosion(mask, iterations=1, border_value=0)


def qc_thumbnail(overview: np.ndarray, masks: Masks, boxes: Mapping[str, np.ndarray],
                 scale: tuple[float, float], footprint: float, size: int) -> Image.Image:
    """The thumbnail (longest side at most `size`); `boxes[kind]` are (n, 2) level-0 corners,
    `scale` the level-0 pixels per overview pixel (x, y)."""
    h, w = overview.shape[:2]
    t = min(1.0, size / max(h, w))
    tw, th = max(1, round(w * t)), max(1, round(h * t))
    base = overview.copy()
    for name in ("tissue", "pen"):
        base[_outline(getattr(masks, name))] = _OUTLINE[name]
    image = Image.fromarray(base).resize((tw, th), Image.Resampling.NEAREST if t < 1 else Image.Resampling.BILINEAR)
    draw = ImageDraw.Draw(image)
    fx, fy = t / scale[0], t / scale[1]
    inset = 1 if footprint * min(fx, fy) > 6 else 0  # neighbours' outlines stay apart
    for kind in ("pen", "blur", "kept"):
        for x, y in boxes.get(kind, np.zeros((0, 2))):
            x0, y0 = x * fx + inset, y * fy + inset
            x1, y1 = (x + footprint) * fx - 1 - inset, (y + footprint) * fy - 1 - inset
            draw.rectangle([x0, y0, max(x0, x1), max(y0, y1)], outline=COLOURS[kind])
    return image


def save_png(image: Image.Image | np.ndarray, path: Path) -> None:
    img = image if isinstance(image, Image.Image) else Image.fromarray(image)
    img.save(path, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
