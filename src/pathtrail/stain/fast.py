"""The CPU fast path of `MacenkoNormalizer`: `ops`' algorithm with its per-pixel work in the fused
`kernels`, bitwise the same results (test_stain_fast.py), private to `pathtrail.stain`.

Per chunk of patches there are three passes over the pixels (moments; angles and the angle
percentiles; concentrations and their 99th percentiles) and one to apply the maps; between them
the per-patch 3x3 / 2x2 algebra runs batched in torch through the very functions `ops.estimate`
uses (`ops.covariance_from_sums`, `ops.principal_plane`, `ops.stains_from_picks`, ...), so the
only code that differs from `ops` is the per-pixel loops, which the kernels reproduce operation
for operation. It serves uint8 CPU patches of at least `MIN_PIXELS` pixels; anything else (CUDA,
tiny patches, concentration output) takes `ops`.
"""

from __future__ import annotations

import time

import numpy as np
import torch
from torch import Tensor

from pathtrail.stain import kernels, ops

MIN_PIXELS = 64  # below this the per-chunk torch algebra outweighs the per-pixel work anyway


def usable(patches: Tensor) -> bool:
    """Whether the fast path serves these (n, P, 3) uint8 patches."""
    return patches.device.type == "cpu" and patches.shape[1] >= MIN_PIXELS


def tissue_levels(lut: Tensor, beta: float) -> np.ndarray:
    """(256,) uint8: 1 where a channel at this level passes beta; a pixel is tissue iff all three
    channels do (`ops.estimate`'s amin(od) >= beta, with the same float32 comparison)."""
    return torch.ge(lut, beta).to(torch.uint8).numpy()


def estimate(patches: Tensor, lut: Tensor, levels: np.ndarray, alpha: float,
             min_tissue_fraction: float, ws: ops.Scratch) -> tuple[ops.StainEstimate, np.ndarray]:
    """`ops.estimate` of (n, P, 3) uint8 CPU patches; also returns the (n, 4, P) OD planes.

    The estimate's `conc` is empty (the fast path keeps no per-pixel concentrations)."""
    n, npix, _ = patches.shape
    px = patches.numpy()
    od = ws.get("fast_od", (n, 4, npix), torch.float32, patches.device).numpy()
    sums = np.empty((n, 9), np.float32)
    counts = np.empty(n, np.int64)
    acc = np.empty((kernels._LEVELS, kernels._GROUP), np.float32)
    kernels.moment_sums(px, lut.numpy(), levels, od, sums, counts, acc)
    count = torch.from_numpy(counts)
    cov = ops.covariance_from_sums(torch.from_numpy(sums).T.double(), count)
    enough, plane = ops.principal_plane(cov, count, npix, min_tissue_fraction)
    ranks = ops.angle_ranks(count, alpha)
    picks = np.empty((2, n), np.float32)
    coef = plane.permute(0, 2, 1).to(torch.float32).contiguous().numpy()  # (n, 2 rows, 3)
    kernels.angle_picks(od, counts, coef, ranks[0].numpy(), ranks[1].numpy(), picks)
    stains, unmix, separated = ops.stains_from_picks(plane, torch.from_numpy(picks), enough)
    k99 = ops.conc_rank(n, npix, patches.device)[:n]  # the same rank for H and E
    max_picks = np.empty((2, n), np.float32)
    kernels.conc_picks(od, unmix.to(torch.float32).contiguous().numpy(),
                       (npix - k99 + 1).numpy(), max_picks)
    max_conc = torch.from_numpy(max_picks).T.double()
    empty = torch.empty(2, n, 0, dtype=torch.float32)
    return ops.finish_estimate(stains, unmix, max_conc, count, npix, enough, separated,
                               empty), od


def apply_maps(patches: Tensor, od_maps: Tensor, lut: Tensor, io: float, out: Tensor,
               exact: tuple[Tensor, Tensor], skip: Tensor | None = None) -> int:
    """`ops.apply_maps` (same arguments but the planar indices and scratch) by `kernels`."""
    bounds, levels = exact
    tables = ops.channel_tables(od_maps, lut, io).view(torch.float32)
    kernels.apply_tables(patches.numpy(), tables.view(len(od_maps), 3, 256, 4).numpy(),
                         out.numpy())
    inside = ops.tables_exact(od_maps, bounds)
    if skip is not None:
        inside |= skip
    rows = (~inside).nonzero().squeeze(-1).tolist()
    for i in rows:
        ops.apply_exact(patches[i], od_maps[i], io, levels, out[i])
    return len(rows)


def apply_fixed(patches: Tensor, tables: Tensor, out: Tensor) -> None:
    """`ops.apply_fixed` of one map's (3, 256) `channel_tables`, without its 1 MB pair table.

    `ops.pair_table` rounds the float64 product of two float32 entries to float32; that product is
    exact in float64 (24 + 24 significant bits), so the rounding is the float32 product's own:
    RG[r * 256 + g] == T0[r] * T1[g] in float32, and the pixel is (T0[r] * T1[g]) * T2[b], what
    `kernels.apply_tables` computes from the three 4 KB tables, which stay in the L1 cache
    (test_fast_slide_scope_and_fit_are_bitwise_the_torch_path)."""
    one = tables.view(torch.float32).view(1, 3, 256, 4)
    kernels.apply_tables(patches.numpy(), one.numpy(), out.numpy())


def compile_time() -> float:
    """Seconds to compile every kernel (numba compiles on first call, once per process)."""
    started = time.perf_counter()
    norm_lut = ops.od_lut(240.0)
    px = torch.full((1, MIN_PIXELS, 3), 120, dtype=torch.uint8)
    px[0, ::2] = 200
    est, _ = estimate(px, norm_lut, tissue_levels(norm_lut, 0.15), 1.0, 0.0, ops.Scratch())
    maps = torch.eye(3, dtype=torch.float64).unsqueeze(0)
    out = torch.empty_like(px)
    exact = (ops.table_bounds(norm_lut, 240.0), ops.log_levels())
    apply_maps(px, maps, norm_lut, 240.0, out, exact)
    apply_fixed(px, ops.channel_tables(maps, norm_lut, 240.0)[0], out)
    del est
    return time.perf_counter() - started
