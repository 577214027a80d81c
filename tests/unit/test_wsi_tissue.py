"""Tissue detection, pen and blur filters, level choice, grid and resampling (pathtrail.wsi)."""

from __future__ import annotations

import colorsys
import math

import numpy as np
import pytest
from PIL import Image, ImageFilter

from conftest import REPO
from pathtrail.wsi.grid import choose_level, grid_origins, resample
from pathtrail.wsi.tissue import (
    box_fractions,
    hsv,
    otsu_threshold,
    pen_mask,
    sharpness,
    summed_area,
    tissue_masks,
)

HE = np.asarray(Image.open(REPO / "tests/data/he/source.png").convert("RGB"))
HE_OTHER = np.asarray(Image.open(REPO / "tests/data/he/target.png").convert("RGB"))  # bluer nuclei


def test_hsv_matches_colorsys():
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (200, 3), dtype=np.uint8)
    hue, sat, value = hsv(rgb)
    for (r, g, b), h, s, v in zip(rgb, hue, sat, value, strict=True):
        eh, es, ev = colorsys.rgb_to_hsv(r / 255, g / 255, b / 255)
        assert h == pytest.approx(eh * 360 % 360, abs=1e-3)
        assert s == pytest.approx(es * 255, abs=1e-3)
        assert v == pytest.approx(ev * 255, abs=1e-3)


def test_otsu_matches_a_brute_force_oracle():
    rng = np.random.default_rng(2)
    values = np.concatenate([rng.normal(40, 8, 3000), rng.normal(170, 20, 1000)]).clip(0, 255).astype(np.uint8)

    def between(t):
        lo, hi = values[values <= t].astype(float), values[values > t].astype(float)
        if not len(lo) or not len(hi):
            return -1
        return len(lo) * len(hi) * (lo.mean() - hi.mean()) ** 2

    best = max(range(256), key=between)
    assert otsu_threshold(values) == best
    assert 60 < best < 140


def test_pen_ink_is_found_and_real_he_is_not_pen():
    assert pen_mask(HE).sum() == pen_mask(HE_OTHER).sum() == 0  # nuclei are no blue marker
    ink = np.array([[[30, 60, 200], [20, 140, 60], [10, 10, 10], [200, 120, 190]]], dtype=np.uint8)
    assert pen_mask(ink).tolist() == [[True, True, True, False]]


def _overview(size=(300, 400), texture=HE):
    h, w = size
    yy, xx = np.mgrid[:h, :w]
    blob = ((xx - 130) / 90) ** 2 + ((yy - 150) / 100) ** 2 <= 1
    img = np.full((h, w, 3), (236, 234, 240), dtype=np.uint8)
    tex = texture[yy % texture.shape[0], xx % texture.shape[1]]
    img[blob] = tex[blob]
    pen = (np.abs(xx - 300) < 6) & (yy > 40) & (yy < 260)
    img[pen] = (30, 60, 200)
    return img, blob, pen


@pytest.mark.parametrize("texture", [HE, HE_OTHER], ids=["source", "target"])
def test_tissue_mask_finds_the_tissue_and_leaves_out_pen_and_glass(texture):
    img, blob, pen = _overview(texture=texture)
    masks = tissue_masks(img)
    iou = (masks.tissue & blob).sum() / (masks.tissue | blob).sum()
    assert iou > 0.9  # pale stroma and lumens of the real H&E at the blob's edge are glass-like
    assert (masks.tissue & ~blob).sum() < 0.01 * blob.sum()  # almost nothing outside it
    assert not (masks.tissue & pen).any()
    assert masks.pen[pen].all()
    blank = np.full((100, 120, 3), (236, 234, 240), dtype=np.uint8)
    assert not tissue_masks(blank).tissue.any()  # a blank slide has no tissue, whatever Otsu says


def test_box_fractions_match_counting():
    rng = np.random.default_rng(3)
    mask = rng.random((37, 53)) < 0.3
    table = summed_area(mask)
    boxes = [(0, 0, 53, 37), (5, 7, 9, 20), (50, 30, 70, 60), (10, 10, 10, 12), (-5, -5, 3, 3)]
    x0, y0, x1, y1 = (np.array(v) for v in zip(*boxes, strict=True))
    got = box_fractions(table, x0, y0, x1, y1)
    for (a, b, c, d), g in zip(boxes, got, strict=True):
        sub = mask[max(b, 0):max(min(d, 37), 0), max(a, 0):max(min(c, 53), 0)]
        assert g == pytest.approx(sub.mean() if sub.size else 0.0)


def test_sharpness_separates_focused_from_blurred_he():
    img = Image.fromarray(HE)
    sharp = [sharpness(HE[y:y + 64, x:x + 64]) for y in (0, 128, 256) for x in (0, 200, 400)]
    blurred = np.asarray(img.filter(ImageFilter.GaussianBlur(4)))
    soft = [sharpness(blurred[y:y + 64, x:x + 64]) for y in (0, 128, 256) for x in (0, 200, 400)]
    assert min(sharp) > 150 > max(soft)  # tile.min_sharpness in pipelines/data/slides.yaml


@pytest.mark.parametrize(("mpp", "level"), [(0.25, 0), (0.26, 0), (0.5, 1), (0.502, 1), (0.6, 1),
                                             (1.0, 2), (1.9, 2), (2.0, 3), (50.0, 3)])
def test_the_level_read_is_the_coarsest_not_coarser_than_the_target(mpp, level):
    assert choose_level([1.0, 2.0, 4.0, 8.0], 0.25, mpp, 0.05) == level


def test_a_target_finer_than_the_scan_is_refused():
    with pytest.raises(ValueError, match="finer than the slide's level 0"):
        choose_level([1.0, 2.0], 0.5, 0.25, 0.05)
    assert choose_level([1.0, 2.0], 0.5, 0.49, 0.05) == 0  # within the tolerance


@pytest.mark.parametrize("footprint", [64.0, 76.8, 100.0, 333.3])
def test_the_grid_tiles_the_image_without_leaving_it(footprint):
    xs, ys = grid_origins(1000, 700, footprint)
    assert len(xs) == len(ys) > 0
    assert (xs >= 0).all() and (ys >= 0).all()
    assert (xs + math.ceil(footprint) <= 1000).all() and (ys + math.ceil(footprint) <= 700).all()
    assert len(set(zip(xs.tolist(), ys.tolist(), strict=True))) == len(xs)
    assert list(zip(ys, xs, strict=True)) == sorted(zip(ys, xs, strict=True))  # row by row
    nx = len(set(xs.tolist()))
    assert nx >= math.floor(1000 / footprint) - 1


def test_resampling_is_lanczos_and_identity_at_the_target_size():
    region = HE[:77, :77].copy()
    assert resample(HE[:64, :64], 64) is not None and (resample(HE[:64, :64], 64) == HE[:64, :64]).all()
    want = np.asarray(Image.fromarray(region).resize((64, 64), Image.Resampling.LANCZOS))
    assert (resample(region, 64) == want).all()
