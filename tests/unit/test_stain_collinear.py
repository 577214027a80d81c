"""pathtrail.stain near-collinear numerics: every accepted estimate within 1 level of float64.

The oracle is the direct float64 evaluation trunc(clip(io * exp(-M @ OD), 0, 255)) with
OD = -ln((I + 1) / io) in float64 and M the patch's map as `normalize` derives it from its estimate
(the estimate itself is compared with torchstain in test_stain.py).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pathtrail.data import demo
from pathtrail.stain import MacenkoNormalizer, ops

IO = 240.0
BOUNDS = ops.table_bounds(ops.od_lut(IO), IO)


def _unit(v) -> np.ndarray:
    v = np.asarray(v, dtype=np.float64)
    return v / np.linalg.norm(v)


def _stain_pair(theta_deg: float) -> tuple[np.ndarray, np.ndarray]:
    """Hematoxylin and a second stain theta degrees from it, in the plane of demo's H and E."""
    h, e = _unit(demo.H_BASE), _unit(demo.E_BASE)
    e_perp = _unit(e - h * (h @ e))
    t = math.radians(theta_deg)
    return h, math.cos(t) * h + math.sin(t) * e_perp


def _two_stain_patch(theta_deg: float, seed: int, size: int = 48, pure: bool = False) -> np.ndarray:
    """Beer-Lambert mix of two stains theta apart with 0.5-level sensor noise and 1 % pixels of
    random colour (dark channels: the largest OD). Faint mixed stains (the map's gain is large; the
    estimated angle is about a third of theta), or with `pure`, a third of the pixels of each
    stain alone (the estimate is close to theta)."""
    rng = np.random.default_rng(seed)
    h, e = _stain_pair(theta_deg)
    c_h, c_e = rng.uniform(0.3, 1.0, (2, size, size, 1))
    if pure:
        which = rng.integers(0, 3, (size, size, 1))
        c_h, c_e = np.where(which == 1, 0, c_h), np.where(which == 0, 0, c_e)
    img = IO * np.exp(-(c_h * h + c_e * e)) + rng.normal(0, 0.5, (size, size, 3))
    img = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    odd = rng.random((size, size)) < 0.01
    img[odd] = rng.integers(0, 256, (int(odd.sum()), 3))
    return img


def _float64_oracle(od_map: np.ndarray, pixels: np.ndarray) -> np.ndarray:
    """trunc(clip(io * exp(-M @ OD), 0, 255)) in float64 for (..., 3) uint8 pixels."""
    od = -np.log((pixels.astype(np.float64) + 1) / IO)
    return np.clip(IO * np.exp(-(od @ od_map.T)), 0, 255).astype(np.uint8)


def _maps(norm: MacenkoNormalizer, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per patch: the map `normalize` applies under fallback="reference" (its own estimate's, or
    the reference's), whether the estimate is accepted, and |cos| of its two stain vectors."""
    flat = torch.from_numpy(batch).reshape(len(batch), -1, 3)
    cache = norm._cache(flat.device)
    est = norm._estimate(flat, ops.Scratch())[1]
    ok = est.valid
    unmix = torch.where(ok[:, None, None], est.unmix, cache["ref_unmix"])
    max_conc = torch.where(ok[:, None], est.max_conc, cache["ref_max"])
    od_map = ops.od_map(cache["ref_stains"], cache["ref_max"], unmix, max_conc)
    cos = (est.stains[:, :, 0] * est.stains[:, :, 1]).sum(-1).abs()
    return od_map.numpy(), ok.numpy(), cos.numpy()


def _diff(a: np.ndarray, b: np.ndarray) -> int:
    return int(np.abs(a.astype(np.int16) - b.astype(np.int16)).max())


# ------------------------------------------------------------------------ property over angles
def test_near_collinear_stains_match_float64_or_fall_back():
    """Two stains 1-20 degrees apart (a deterministic grid of angles, seeds and mixtures; the
    estimates span 1.2-21 degrees): an accepted
    estimate is within 1 level of float64 everywhere; one below MIN_STAIN_ANGLE is rejected and
    counted as a fallback (its patch gets the reference's map, also within 1 level)."""
    cases = [(a, seed, pure) for a in range(1, 21) for seed in range(2) for pure in (False, True)]
    batch = np.stack([_two_stain_patch(a, seed, pure=pure) for a, seed, pure in cases])
    norm = MacenkoNormalizer()
    out = norm.normalize(batch)
    od_maps, ok, cos = _maps(norm, batch)
    below = cos > math.cos(ops.MIN_STAIN_ANGLE)
    assert np.array_equal(ok, ~below)  # rejected exactly when the stains are too close
    assert norm.last_stats == {"patches": len(batch), "fallback": int(below.sum()),
                               "fallback_slide": 0}
    for i in range(len(batch)):
        assert _diff(out[i], _float64_oracle(od_maps[i], batch[i])) <= 1, cases[i]
    estimated = np.degrees(np.arccos(np.minimum(cos, 1.0)))
    assert estimated.min() < 1.5 and estimated.max() > 20  # the estimates span 1-20 degrees
    # The grid covers all three regimes: rejected, accepted outside the tables' bound (the exact
    # path), accepted within it (the tables).
    inside = ops.tables_exact(torch.from_numpy(od_maps), BOUNDS).numpy()
    assert below.sum() >= 3 and (ok & ~inside).sum() >= 10 and (ok & inside).sum() >= 10


def test_single_stain_is_rejected():
    """Where MIN_STAIN_ANGLE comes from: one stain, quantised to uint8 with 0.5-level sensor
    noise, is estimated as two stains at most 1.68 degrees apart (measured on 36 patches of 32-224
    pixels, random stain directions); none of these may pass as two stains."""
    rng = np.random.default_rng(7)
    patches = []
    for k in range(8):
        stain = _unit(demo.H_BASE if k == 0 else demo.E_BASE if k == 1
                      else np.abs(rng.normal(0.5, 0.3, 3)) + 0.05)
        size = 32 if k % 2 else 64
        conc = rng.uniform(0.2, 2.0, (size, size, 1))
        img = IO * np.exp(-conc * stain) + rng.normal(0, 0.5, (size, size, 3))
        patches.append(np.clip(np.rint(img), 0, 255).astype(np.uint8))
    for patch in patches:
        norm = MacenkoNormalizer()
        cos = _maps(norm, patch[None])[2][0]
        assert math.degrees(math.acos(min(1.0, cos))) < 0.9 * math.degrees(ops.MIN_STAIN_ANGLE)
        norm.normalize(patch[None])
        assert norm.last_stats["fallback"] == 1


# ------------------------------------------------------------------------- the tables' bound
def _colour_grid(step: int = 3) -> np.ndarray:
    levels = np.arange(0, 256, step, dtype=np.uint8)  # 0 and 255 included
    return np.stack(np.meshgrid(levels, levels, levels, indexing="ij"), -1).reshape(-1, 3)


def _apply(od_map: np.ndarray, pixels: np.ndarray, tables_only: bool = False) -> np.ndarray:
    x = torch.from_numpy(pixels)[None]
    ws, lut, maps = ops.Scratch(), ops.od_lut(IO), torch.from_numpy(od_map)[None]
    out = torch.empty_like(x)
    planar = ops.to_planar(x, ws)
    if tables_only:
        ops.apply_tables(planar, ops.channel_tables(maps, lut, IO), out, ws)
    else:
        ops.apply_maps(x, planar, maps, lut, IO, out, ws, (BOUNDS, ops.log_levels()))
    return out[0].numpy()


def _collinear_map(theta_deg: float) -> np.ndarray:
    """The map `normalize` gives a (faint) patch with stains theta apart: an accepted estimate."""
    od_maps, ok, _ = _maps(MacenkoNormalizer(), _two_stain_patch(theta_deg, 0)[None])
    assert ok[0]
    return od_maps[0]


def test_apply_maps_is_within_one_level_over_the_colour_cube():
    """Over the colour cube (every 3rd level): maps of near-collinear stains are outside the
    float32 tables' bound (where the tables alone are measured up to 255 levels off) and are
    evaluated exactly; a map just inside the bound is within 1 level on the tables."""
    pixels = _colour_grid()
    worst_tables = 0
    for theta in (8, 11, 14):
        od_map = _collinear_map(theta)
        assert not bool(ops.tables_exact(torch.from_numpy(od_map)[None], BOUNDS)[0])
        oracle = _float64_oracle(od_map, pixels)
        assert _diff(_apply(od_map, pixels), oracle) <= 1, theta
        worst_tables = max(worst_tables, _diff(_apply(od_map, pixels, tables_only=True), oracle))
    assert worst_tables > 100  # why the exact path exists
    # Largest multiples that the bound admits (one entry at its bound) of the 14-degree map and of
    # two random maps: the tables hold 1 level there.
    rng = np.random.default_rng(0)
    for base in (_collinear_map(14), rng.normal(0, 1, (3, 3)), rng.normal(0, 1, (3, 3))):
        lo, hi = 0.0, 100.0
        for _ in range(50):
            mid = (lo + hi) / 2
            inside = bool(ops.tables_exact(torch.from_numpy(mid * base)[None], BOUNDS)[0])
            lo, hi = (mid, hi) if inside else (lo, mid)
        edge = lo * base
        assert bool(ops.tables_exact(torch.from_numpy(edge)[None], BOUNDS)[0])
        assert not bool(ops.tables_exact(torch.from_numpy(hi * base)[None], BOUNDS)[0])
        assert _diff(_apply(edge, pixels, tables_only=True), _float64_oracle(edge, pixels)) <= 1


def test_slide_scope_of_near_collinear_stains_matches_float64():
    batch = np.stack([_two_stain_patch(4, seed) for seed in range(4)])
    norm = MacenkoNormalizer()
    out = norm.normalize_slide(batch)
    flat = torch.from_numpy(batch).reshape(len(batch), -1, 3)
    est = norm._slide_estimate(flat, ops.Scratch())
    assert bool(est.valid[0]) and norm.last_stats["fallback"] == 0
    cache = norm._cache(flat.device)
    od_map = ops.od_map(cache["ref_stains"], cache["ref_max"], est.unmix, est.max_conc)
    assert not bool(ops.tables_exact(od_map, BOUNDS)[0])  # the exact path is taken
    assert _diff(out, _float64_oracle(od_map[0].numpy(), batch)) <= 1


@pytest.mark.parametrize("fallback", ["passthrough", "slide"])
def test_exact_path_under_other_fallbacks(fallback):
    """An accepted near-collinear patch gives the same bits under every fallback; a rejected one
    is returned unchanged under passthrough."""
    batch = np.stack([_two_stain_patch(a, 0) for a in (3, 6, 9, 12)])
    reference = MacenkoNormalizer().normalize(batch)
    od_maps, ok, _ = _maps(MacenkoNormalizer(), batch)
    inside = ops.tables_exact(torch.from_numpy(od_maps), BOUNDS).numpy()
    assert np.array_equal(ok, [False, False, True, True]) and not inside[ok].any()
    norm = MacenkoNormalizer(fallback=fallback)
    out = norm.normalize(batch)
    assert np.array_equal(out[ok], reference[ok])
    assert norm.last_stats["fallback"] == int((~ok).sum())
    if fallback == "passthrough":
        assert np.array_equal(out[~ok], batch[~ok])


@pytest.mark.gpu
def test_cuda_exact_path_matches_cpu():
    batch = np.stack([_two_stain_patch(a, 0, pure=pure) for a in (9, 12, 20) for pure in (False, True)])
    norm = MacenkoNormalizer()
    cpu = norm.normalize(batch)
    gpu = norm.normalize(torch.from_numpy(batch).cuda())
    assert gpu.is_cuda and norm.last_stats["fallback"] == 0
    od_maps, ok, _ = _maps(norm, batch)
    assert ok.all() and not ops.tables_exact(torch.from_numpy(od_maps), BOUNDS).all()
    assert _diff(gpu.cpu().numpy(), cpu) <= 1
    for i in range(len(batch)):
        assert _diff(gpu[i].cpu().numpy(), _float64_oracle(od_maps[i], batch[i])) <= 1
