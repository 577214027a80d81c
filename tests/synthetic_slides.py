"""Small pyramidal tiled TIFF slides, written at test time (nothing is downloaded).

`write_slide(path, ...)` writes a generic tiled TIFF with several levels (each half the previous),
the resolution in the TIFF tags (or none: `mpp=None`), tissue blobs textured from the real H&E
image `tests/data/he/source.png` on a near-white background, a blue pen stroke and one blob out of
focus, so tissue detection and the filters see realistic colour. Tiles are made one at a time, so
a 20,000 x 20,000 slide (bench/tile.py) is written in bounded memory. Same arguments, same bytes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image, ImageFilter

HE = Path(__file__).resolve().parent / "data" / "he" / "source.png"
HE_OTHER = HE.with_name("target.png")  # another scan, other staining: a second "class" of tissue
BACKGROUND = np.array([236, 234, 240], dtype=np.float32)
PEN = np.array([30, 60, 200], dtype=np.float32)


@dataclass(frozen=True)
class Layout:
    """What lies where, in fractions of the slide's width and height."""

    blobs: tuple[tuple[float, float, float, float], ...] = (  # ellipses: centre x, y, radius x, y
        (0.28, 0.33, 0.20, 0.25), (0.72, 0.35, 0.20, 0.27), (0.50, 0.78, 0.22, 0.16))
    blurred_blob: int | None = 2       # this blob is out of focus
    pen: tuple[float, float, float, float] | None = (0.12, 0.05, 0.42, 0.60)  # x0, y0, x1, y1
    pen_width: float = 0.03


def _texture(source: Path, level_down: int, blurred: bool) -> np.ndarray:
    img = Image.open(source).convert("RGB")
    if blurred:
        img = img.filter(ImageFilter.GaussianBlur(8))
    if level_down > 1:
        w, h = img.size
        img = img.resize((max(1, w // level_down), max(1, h // level_down)), Image.Resampling.BOX)
    tex = np.asarray(img, dtype=np.float32)
    # mirrored: the tiled texture has no seams
    return np.concatenate([np.concatenate([tex, tex[:, ::-1]], 1),
                           np.concatenate([tex[::-1], tex[::-1, ::-1]], 1)], 0)


def _tiles(width: int, height: int, down: int, tile: int, layout: Layout, seed: int, level: int,
           source: Path):
    tex, tex_blur = _texture(source, down, False), _texture(source, down, True)
    lw, lh = math.ceil(width / down), math.ceil(height / down)
    # where the texture starts depends on the seed: slides of one texture differ in every patch
    oy, ox = (int(v) for v in np.random.default_rng([seed]).integers(0, 10_000, 2) // down)
    for ty in range(0, lh, tile):
        for tx in range(0, lw, tile):
            yy, xx = np.mgrid[ty:ty + tile, tx:tx + tile]
            u, v = (xx * down + down / 2) / width, (yy * down + down / 2) / height
            rng = np.random.default_rng([seed, level, ty, tx])
            out = np.broadcast_to(BACKGROUND, (tile, tile, 3))
            for k, (cx, cy, rx, ry) in enumerate(layout.blobs):
                radius = np.sqrt(((u - cx) / rx) ** 2 + ((v - cy) / ry) ** 2)
                if (radius <= 1.0).any():
                    blurred = k == layout.blurred_blob
                    t = tex_blur if blurred else tex
                    texel = t[(yy + oy) % t.shape[0], (xx + ox) % t.shape[1]]
                    # out of focus, the blob's edge is soft too
                    alpha = np.clip((1.0 - radius) / 0.15, 0, 1) if blurred else (radius <= 1.0) * 1.0
                    out = alpha[..., None] * texel + (1 - alpha[..., None]) * out
            out = out + rng.normal(0, 2.0, (tile, tile, 3))  # sensor noise, tissue included
            if layout.pen is not None:
                x0, y0, x1, y1 = layout.pen
                dx, dy = x1 - x0, y1 - y0
                s = np.clip(((u - x0) * dx + (v - y0) * dy) / (dx * dx + dy * dy), 0, 1)
                dist = np.hypot(u - (x0 + s * dx), v - (y0 + s * dy))
                out = np.where((dist <= layout.pen_width / 2)[..., None], 0.15 * out + 0.85 * PEN, out)
            outside = (xx >= lw) | (yy >= lh)
            out = np.where(outside[..., None], 0, out)
            yield np.clip(np.rint(out), 0, 255).astype(np.uint8)


def write_slide(path: str | Path, width: int = 4096, height: int = 3072, *, mpp: float | None = 0.25,
                levels: int = 4, tile: int = 256, layout: Layout = Layout(), seed: int = 0,
                compression: str | None = "zlib", texture: Path = HE) -> Path:
    """A pyramidal tiled TIFF at `path`: level 0 `width` x `height` at `mpp` µm/px (None: no
    resolution tags), `levels` levels each half the previous, tissue textured from `texture`."""
    path = Path(path)
    with tifffile.TiffWriter(path, bigtiff=width * height * 3 > 2**31) as tw:
        for level in range(levels):
            down = 2 ** level
            shape = (math.ceil(height / down), math.ceil(width / down), 3)
            extra = {}
            if mpp is not None:
                extra = {"resolution": (1e4 / (mpp * down), 1e4 / (mpp * down)),
                         "resolutionunit": "CENTIMETER"}
            tw.write(_tiles(width, height, down, tile, layout, seed, level, texture), shape=shape,
                     dtype=np.uint8, tile=(tile, tile), photometric="rgb", compression=compression,
                     subfiletype=1 if level else 0, metadata=None, software=False, **extra)
    return path


def write_slide_set(folder: str | Path, internal_patients: int = 10, external_patients: int = 4,
                    width: int = 1024, height: int = 768, mpp: float = 0.25, levels: int = 3) -> Path:
    """A cohort of synthetic slides, one per patient, and its slide tables (`internal.csv`: sites
    site_a and site_b; `external.csv`: site_c), in `folder`. Tumour slides are textured from one
    real H&E scan, benign ones from the other, so a model has something to learn."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    header = "path,label,patient_id,slide_id,site\n"
    tables = {"internal": [header], "external": [header]}
    for cohort, n, sites in (("internal", internal_patients, ("site_a", "site_b")),
                             ("external", external_patients, ("site_c",))):
        for i in range(n):
            label = ("benign", "tumour")[i % 2]
            site = sites[(i // 2) % len(sites)]
            pid = f"{site.removeprefix('site_')}{i:03d}"
            name = f"{cohort}/{pid}.tif"
            (folder / cohort).mkdir(exist_ok=True)
            write_slide(folder / name, width, height, mpp=mpp, levels=levels,
                        seed=hash_seed(cohort, i), texture=HE if label == "tumour" else HE_OTHER)
            tables[cohort].append(f"{name},{label},P{pid},S{pid},{site}\n")
    for cohort, lines in tables.items():
        (folder / f"{cohort}.csv").write_text("".join(lines), encoding="utf-8")
    return folder


def hash_seed(cohort: str, i: int) -> int:
    return (1 if cohort == "internal" else 2) * 100_000 + i


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="Write synthetic slides and their slide tables.")
    parser.add_argument("folder", help="where (e.g. slides: tile.slide_root of pipelines/data/slides.yaml)")
    parser.add_argument("--internal-patients", type=int, default=10)
    parser.add_argument("--external-patients", type=int, default=4)
    parser.add_argument("--size", type=int, nargs=2, default=(1024, 768), metavar=("W", "H"))
    args = parser.parse_args()
    out = write_slide_set(args.folder, args.internal_patients, args.external_patients, *args.size)
    print(f"wrote {args.internal_patients + args.external_patients} slides and "
          f"{out / 'internal.csv'}, {out / 'external.csv'}")
