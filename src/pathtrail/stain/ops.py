"""Batched Macenko kernels in plain torch (CPU and CUDA), private to `pathtrail.stain`.

Layout: a chunk of n patches with P pixels each is handled channel-major, ``(3, n, P)``, so every
per-channel operation runs over long contiguous rows. Per-pixel work uses only operations that are
exactly rounded (table look-ups, +, -, *, /, comparisons, min/max, top-k) and row reductions that
never span patches, so on CPU a patch gives the same bits alone or inside any batch (CUDA's float
reductions change their order with the row count); transcendental functions are evaluated on small
per-patch tables only (`apply_exact`, for maps outside the float32 tables' bound, also sums float64
table entries and searches a fixed table).

Numerics follow torchstain's torch backend (float32 optical density, nearest-rank percentiles);
the 3x3 / 2x2 algebra runs in float64.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

# A patch whose two stain vectors are closer than this is one stain (flat colour, pen ink): one
# stain quantised to uint8 is estimated as two up to 1.68 degrees apart (see macenko's docstring).
MIN_STAIN_ANGLE = math.radians(2.0)
# A 99th-percentile concentration below this is no stain at all (the "purple background" failure).
MIN_MAX_CONCENTRATION = 1e-2
EPS = 1e-9  # Tikhonov term for the covariance and the 2x2 normal equations
# Table entries are capped so that a product of three stays finite (inf * 0 would give NaN).
_TABLE_MAX = 1e12
# The float32 tables are exact to 1 level only while every entry lies in [1/_TABLE_MAX, _TABLE_MAX]:
# then nothing is clamped, a product of three stays a normal float32 (e^-82.9 > 2^-126) and five
# roundings of 2^-24 (plus float32 OD) keep it within 1e-5 relative of float64, so truncation
# moves it by at most one level. A map with |ln entry| past this bound (near-collinear stains
# unmix with large coefficients, so one factor saturates while another underflows: measured up to
# 255 levels off) is evaluated by `apply_exact` instead.
TABLE_LOG_BOUND = math.log(_TABLE_MAX)
# Pseudo-angles lie in [-2, 2]; non-tissue pixels are pushed this far out of the way.
_MASK_OFFSET = 8.0
_BLOCKS = 16  # rank selection: candidate blocks per row (see `kth_smallest`)
_PAIRS = ((0, 0), (0, 1), (0, 2), (1, 1), (1, 2), (2, 2))


class Scratch:
    """Named buffers reused from chunk to chunk: fresh multi-megabyte tensors on every chunk cost
    page faults (allocator churn) that were measured to dominate the arithmetic."""

    def __init__(self) -> None:
        self._buffers: dict[tuple[str, torch.dtype, torch.device], Tensor] = {}

    def get(self, name: str, shape: tuple[int, ...], dtype: torch.dtype,
            device: torch.device) -> Tensor:
        numel = math.prod(shape)
        key = (name, dtype, torch.device(device))
        buf = self._buffers.get(key)
        if buf is None or buf.numel() < numel:
            buf = self._buffers[key] = torch.empty(numel, dtype=dtype, device=device)
        return buf[:numel].view(shape)


@dataclass(frozen=True)
class StainEstimate:
    """Per-patch Macenko statistics (float64 unless stated)."""

    stains: Tensor  # (n, 3, 2) unit H and E optical-density vectors, H first
    unmix: Tensor  # (n, 2, 3) least-squares map from OD to concentrations
    max_conc: Tensor  # (n, 2) 99th-percentile concentrations
    tissue_fraction: Tensor  # (n,)
    valid: Tensor  # (n,) bool: the estimate is usable (else the caller falls back)
    conc: Tensor  # (2, n, P) float32 per-pixel concentrations (not rescaled)


def od_lut(io: float, device: torch.device | str = "cpu") -> Tensor:
    """Optical density of the 256 uint8 levels, computed exactly as torchstain does (float32)."""
    levels = torch.arange(256, dtype=torch.float32, device=device)
    return -torch.log((levels + 1) / io)


def to_planar(patches: Tensor, ws: Scratch) -> Tensor:
    """(n, P, 3) uint8 -> (3, n, P) int64 table indices."""
    n, npix, _ = patches.shape
    return ws.get("planar", (3, n, npix), torch.int64, patches.device).copy_(patches.permute(2, 0, 1))


def optical_density(planar: Tensor, lut: Tensor, ws: Scratch) -> Tensor:
    """(3, n, P) indices -> (3, n, P) float32 optical density."""
    out = ws.get("od", planar.shape, torch.float32, planar.device)
    return torch.index_select(lut, 0, planar.view(-1), out=out.view(-1)).view(planar.shape)


def nearest_rank(count: Tensor, q: float) -> Tensor:
    """1-based rank of the q-th percentile among `count` values: torchstain's (and numpy
    "nearest") definition, ``1 + round(0.01 * q * (count - 1))`` with ties to even."""
    return 1 + torch.round((0.01 * float(q)) * (count.to(torch.float64) - 1)).to(torch.int64)


def kth_smallest(values: Tensor, k: Tensor, largest: bool = False) -> Tensor:
    """The k-th (1-based) smallest (or largest) value of each row of `values` (R, P); k: (R,).

    Exact and order-free. For small k, rows are cut into `_BLOCKS` interleaved blocks: the k blocks
    with the smallest minima hold at least k values <= the answer, so the answer is the k-th
    smallest of those blocks' values (a top-k over a few thousand values instead of P).
    """
    rows, npix = values.shape
    if npix == 0:  # no values (0-pixel patches, an empty slide): callers mark the row invalid
        return values.new_zeros(rows)
    k = k.clamp(1, npix)
    kmax = int(k.max())
    width = npix // _BLOCKS
    if npix % _BLOCKS == 0 and _BLOCKS * kmax * 4 <= npix:
        blocks = values.view(rows, _BLOCKS, width)
        extreme = blocks.amax(1) if largest else blocks.amin(1)
        chosen = torch.topk(extreme, kmax, dim=-1, largest=largest, sorted=False).indices
        values = torch.gather(blocks, 2, chosen.unsqueeze(1).expand(rows, _BLOCKS, kmax))
        values = values.reshape(rows, -1)
    top = torch.topk(values, kmax, dim=-1, largest=largest, sorted=True).values
    return top.gather(-1, (k - 1).unsqueeze(-1)).squeeze(-1)


def _combine(coef: Tensor, od: Tensor, ws: Scratch, name: str) -> Tensor:
    """sum_c coef[..., c] * od[c] per patch: coef (r, n, 3), od (3, n, P) -> (r, n, P) float32.

    Separate multiply and add kernels (no fused multiply-add) keep every element exactly rounded.
    """
    c = coef.to(od.dtype).unsqueeze(-1)
    shape = coef.shape[:-1] + od.shape[-1:]
    out = torch.mul(od[0], c[..., 0, :], out=ws.get(name, shape, od.dtype, od.device))
    tmp = ws.get("combine_tmp", shape, od.dtype, od.device)
    for ch in (1, 2):
        out += torch.mul(od[ch], c[..., ch, :], out=tmp)
    return out


def _covariance(od: Tensor, weight: Tensor, count: Tensor, ws: Scratch) -> Tensor:
    """Unbiased covariance of the tissue pixels' OD: (n, 3, 3) float64.

    First and second moments are summed per patch (float32 products, float64 sums of rows)."""
    moments = ws.get("moments", (3 + len(_PAIRS),) + od.shape[1:], od.dtype, od.device)
    masked = torch.mul(od, weight, out=moments[:3])
    for row, (i, j) in enumerate(_PAIRS, start=3):
        torch.mul(masked[i], od[j], out=moments[row])
    return covariance_from_sums(moments.sum(-1).double(), count)


def covariance_from_sums(sums: Tensor, count: Tensor) -> Tensor:
    """(n, 3, 3) covariance from the (9, n) float64 moment sums (`_covariance`'s rows)."""
    n = count.to(torch.float64).clamp(min=1)
    mean = sums[:3] / n
    cov = torch.empty(sums.shape[1], 3, 3, dtype=torch.float64, device=sums.device)
    for row, (i, j) in enumerate(_PAIRS, start=3):
        cov[:, i, j] = cov[:, j, i] = (sums[row] - n * mean[i] * mean[j]) / (n - 1).clamp(min=1)
    return cov


def _pseudo_angle(proj: Tensor, ws: Scratch) -> Tensor:
    """A strictly increasing function of atan2(y, x) on (-pi, pi], for proj = (x, y) of shape
    (2, n, P), made of exactly rounded ops: its ranks are those of torchstain's atan2 angles."""
    norm = torch.abs(proj, out=ws.get("norm", proj.shape, proj.dtype, proj.device))
    total = norm[0].add_(norm[1]).clamp_(min=torch.finfo(proj.dtype).tiny)
    ratio = torch.div(proj[0], total, out=norm[1])
    return torch.copysign(ratio.neg_().add_(1), proj[1], out=total)


def _direction(pseudo: Tensor) -> Tensor:
    """Unit (cos, sin) of the angle that `_pseudo_angle` encodes: (...,) -> (..., 2) float64."""
    p = pseudo.double()
    u = 1 - p.abs()
    w = torch.copysign(1 - u.abs(), p)
    vec = torch.stack((u, w), dim=-1)
    return vec / vec.norm(dim=-1, keepdim=True).clamp(min=EPS)


def unmixing_matrix(stains: Tensor) -> Tensor:
    """Least squares via the regularised 2x2 normal equations: (n, 3, 2) -> (n, 2, 3)."""
    gram = stains.transpose(-1, -2) @ stains
    a, b, d = gram[..., 0, 0] + EPS, gram[..., 0, 1], gram[..., 1, 1] + EPS
    det = (a * d - b * b).clamp(min=EPS * EPS)
    inv = torch.stack((torch.stack((d, -b), -1), torch.stack((-b, a), -1)), -2) / det[..., None, None]
    return inv @ stains.transpose(-1, -2)


def concentrations(od: Tensor, unmix: Tensor, ws: Scratch, name: str = "conc") -> Tensor:
    """Per-pixel H and E concentrations: od (3, n, P), unmix (n, 2, 3) -> (2, n, P) float32."""
    return _combine(unmix.transpose(0, 1), od, ws, name)


def estimate(od: Tensor, alpha: float, beta: float, min_tissue_fraction: float,
             ws: Scratch) -> StainEstimate:
    """Macenko stain vectors and max concentrations of each patch; od: (3, n, P) float32."""
    _, n, npix = od.shape
    weight = torch.amin(od, 0, out=ws.get("weight", (n, npix), od.dtype, od.device))
    tissue = torch.ge(weight, beta, out=ws.get("tissue", (n, npix), torch.bool, od.device))
    weight.copy_(tissue.view(torch.uint8))  # all channels OD >= beta, as in torchstain
    count = tissue.view(torch.uint8).sum(-1)
    enough, plane = principal_plane(_covariance(od, weight, count, ws), count, npix,
                                    min_tissue_fraction)
    angle = _pseudo_angle(_combine(plane.permute(2, 0, 1), od, ws, "proj"), ws)  # (n, P)
    # Row 0: angles for the low percentile; row 1: negated, for the high one. Non-tissue pixels
    # are moved above every real value (exact: adding 0 leaves a tissue angle unchanged).
    offset = weight.neg_().add_(1).mul_(_MASK_OFFSET)
    ranked = ws.get("ranked", (2, n, npix), od.dtype, od.device)
    torch.add(angle, offset, out=ranked[0])
    torch.sub(offset, angle, out=ranked[1])
    picked = kth_smallest(ranked.view(2 * n, npix), angle_ranks(count, alpha).view(-1))
    stains, unmix, separated = stains_from_picks(plane, picked.view(2, n), enough)
    conc = concentrations(od, unmix, ws)
    k99 = conc_rank(n, npix, od.device)
    max_conc = kth_smallest(conc.view(2 * n, npix), k99, largest=True).view(2, n).T.double()
    return finish_estimate(stains, unmix, max_conc, count, npix, enough, separated, conc)


def principal_plane(cov: Tensor, count: Tensor, npix: int, min_tissue_fraction: float
                    ) -> tuple[Tensor, Tensor]:
    """(enough tissue (n,) bool, the plane of the two largest eigenvectors (n, 3, 2))."""
    fraction = count.double() / max(npix, 1)  # 0 for 0-pixel patches, not NaN
    enough = (count >= 3) & (fraction >= min_tissue_fraction) & cov.isfinite().all((-1, -2))
    eye = torch.eye(3, dtype=cov.dtype, device=cov.device)
    cov = torch.where(enough[:, None, None], cov, eye) + EPS * eye
    _, vecs = torch.linalg.eigh(cov)
    # Canonical signs (LAPACK and cuSOLVER may differ): the largest |component| of each vector is
    # positive. The percentile pair is symmetric under a sign flip up to nearest-rank ties.
    sign = torch.gather(vecs, 1, vecs.abs().argmax(1, keepdim=True)).sign()
    vecs = vecs * torch.where(sign == 0, 1.0, sign)
    return enough, vecs[:, :, 1:]  # ascending as in torchstain


def angle_ranks(count: Tensor, alpha: float) -> Tensor:
    """(2, n) ranks of the low (alpha) and high (100 - alpha, counted from the top) angles."""
    return torch.stack((nearest_rank(count, alpha), count - nearest_rank(count, 100 - alpha) + 1))


def conc_rank(n: int, npix: int, device: torch.device) -> Tensor:
    """(2n,) rank, from the top, of the 99th-percentile concentration."""
    k99 = torch.full((2 * n,), npix, dtype=torch.int64, device=device)
    return k99 - nearest_rank(k99, 99) + 1


def stains_from_picks(plane: Tensor, picked: Tensor, enough: Tensor
                      ) -> tuple[Tensor, Tensor, Tensor]:
    """Stain vectors (n, 3, 2), unmixing (n, 2, 3) and separation (n,) bool from the (2, n)
    float32 picks (row 0: low angle, row 1: negated high angle)."""
    picked = torch.where(enough, picked, 0) * torch.tensor([[1.0], [-1.0]], device=plane.device)
    v_min, v_max = (plane.unsqueeze(0) @ _direction(picked).unsqueeze(-1)).squeeze(-1)  # (n, 3)
    h_first = (v_min[:, 0] > v_max[:, 0]).unsqueeze(-1)
    stains = torch.stack((torch.where(h_first, v_min, v_max), torch.where(h_first, v_max, v_min)), -1)
    separated = (v_min * v_max).sum(-1).abs() < math.cos(MIN_STAIN_ANGLE)
    return stains, unmixing_matrix(stains), separated


def finish_estimate(stains: Tensor, unmix: Tensor, max_conc: Tensor, count: Tensor, npix: int,
                    enough: Tensor, separated: Tensor, conc: Tensor) -> StainEstimate:
    """The estimate from its parts; max_conc (n, 2) float64."""
    valid = enough & separated & (max_conc >= MIN_MAX_CONCENTRATION).all(-1)
    valid &= stains.isfinite().all((-1, -2)) & unmix.isfinite().all((-1, -2))
    return StainEstimate(stains, unmix, max_conc.clamp(min=MIN_MAX_CONCENTRATION),
                         count.double() / max(npix, 1), valid, conc)


def od_map(ref_stains: Tensor, ref_max: Tensor, unmix: Tensor, max_conc: Tensor) -> Tensor:
    """The per-patch linear map in OD space: ref_stains @ diag(ref_max / max_conc) @ unmix."""
    scale = (ref_max / max_conc).unsqueeze(-1)  # (n, 2, 1)
    return ref_stains @ (scale * unmix)  # (n, 3, 3)


def channel_tables(od_maps: Tensor, lut: Tensor, io: float) -> Tensor:
    """exp(-map[c, d] * OD(v)) for input channel d, level v, output channel c, io folded into d=0.

    (n, 3, 3) -> (n, 3, 256) complex128, each entry packing 4 float32 (3 outputs + padding) so that
    one look-up fetches a pixel's whole contribution of one input channel.
    """
    n = od_maps.shape[0]
    table = torch.zeros(n, 3, 256, 4, dtype=torch.float64, device=od_maps.device)
    table[..., :3] = torch.exp(-od_maps.transpose(1, 2).unsqueeze(2) * lut.double()[:, None])
    table[:, 0] *= io
    table.clamp_(max=_TABLE_MAX)
    return table.to(torch.float32).view(torch.complex128).squeeze(-1)


def table_bounds(lut: Tensor, io: float) -> Tensor:
    """(2, 3) float64 [low; high] per input channel d: a map entry map[c, d] keeps every table
    entry io^[d = 0] * exp(-map[c, d] * OD(v)) within TABLE_LOG_BOUND in log iff it lies in
    [low[d], high[d]] (the log is linear in OD, so the extreme levels 0 and 255 decide)."""
    bounds = [[-math.inf] * 3, [math.inf] * 3]
    for d in range(3):
        shift = math.log(io) if d == 0 else 0.0
        for od in (float(lut[0]), float(lut[-1])):  # |shift - m * od| <= bound
            if od != 0:
                a, b = (shift - TABLE_LOG_BOUND) / od, (shift + TABLE_LOG_BOUND) / od
                bounds[0][d], bounds[1][d] = max(bounds[0][d], min(a, b)), min(bounds[1][d],
                                                                               max(a, b))
    return torch.tensor(bounds, dtype=torch.float64, device=lut.device)


def tables_exact(od_maps: Tensor, bounds: Tensor) -> Tensor:
    """(n,) bool: whether each (n, 3, 3) map keeps its `channel_tables` within the 1-level bound
    (every entry within `table_bounds` of its input channel)."""
    return ((od_maps >= bounds[0]) & (od_maps <= bounds[1])).all(-1).all(-1)


def log_levels(device: torch.device | str = "cpu") -> Tensor:
    """ln(1), ..., ln(255) in float64: uint8 truncation of exp(t) clipped at 255 counts these <= t."""
    return torch.log(torch.arange(1, 256, dtype=torch.float64, device=device))


def apply_exact(pixels: Tensor, od_map: Tensor, io: float, levels: Tensor, out: Tensor) -> Tensor:
    """Normalized pixels of one map in float64, for maps outside `tables_exact`.

    pixels (P, 3) uint8, od_map (3, 3), levels from `log_levels`; writes out (P, 3) uint8. The
    exponent t = ln(io) - map @ OD (OD in float64) is summed from per-level float64 tables (exactly
    rounded adds, so batch invariant), and trunc(min(exp(t), 255)), the number of ln(j) <= t for
    j = 1..255, is counted by a binary search: exact unless t rounds across some ln(j).
    """
    od = -torch.log((torch.arange(256, dtype=torch.float64, device=pixels.device) + 1) / io)
    terms = -od_map.to(pixels.device).unsqueeze(-1) * od  # (3 out, 3 in, 256)
    terms[:, 0] += math.log(io)
    index = pixels.long()
    for c in range(3):
        t = terms[c, 0][index[:, 0]] + terms[c, 1][index[:, 1]] + terms[c, 2][index[:, 2]]
        out[:, c] = torch.searchsorted(levels, t, right=True)
    return out


def pair_table(tables: Tensor) -> Tensor:
    """Combine the R and G tables of one map: (3, 256) -> (65536,) indexed by R * 256 + G."""
    as_float = tables.view(torch.float32).view(3, 256, 4).double()
    rg = (as_float[0, :, None] * as_float[1, None, :]).reshape(65536, 4)
    return rg.to(torch.float32).contiguous().view(torch.complex128).squeeze(-1)


def _to_uint8(products: Tensor, out: Tensor) -> Tensor:
    """(n, P, 4) float32 -> out (n, P, 3) uint8, clipped at 255 and truncated like torchstain."""
    products.clamp_(max=255.0)
    for channel in range(3):  # one strided copy per channel beats one copy with inner size 3
        out[..., channel].copy_(products[..., channel])
    return out


def apply_tables(planar: Tensor, tables: Tensor, out: Tensor, ws: Scratch) -> Tensor:
    """Normalized pixels from per-patch tables into out (n, P, 3) uint8; planar (3, n, P) int64
    is consumed, tables (n, 3, 256)."""
    _, n, npix = planar.shape
    base = torch.arange(n, device=planar.device) * 3
    planar += ((base + torch.arange(3, device=planar.device)[:, None]) * 256).unsqueeze(-1)
    fetched = ws.get("fetched", (3 * n * npix,), torch.complex128, planar.device)
    torch.index_select(tables.reshape(-1), 0, planar.view(-1), out=fetched)
    parts = fetched.view(torch.float32).view(3, n, npix, 4)
    products = torch.mul(parts[0], parts[1], out=ws.get("products", (n, npix, 4), torch.float32,
                                                         planar.device))
    return _to_uint8(products.mul_(parts[2]), out)


def apply_fixed(planar: Tensor, rg_table: Tensor, b_table: Tensor, out: Tensor,
                ws: Scratch) -> Tensor:
    """Normalized pixels from one fixed map into out (n, P, 3) uint8; planar (3, n, P) int64 is
    consumed; rg_table from `pair_table`, b_table the B channel's table."""
    _, n, npix = planar.shape
    rg = planar[0].mul_(256).add_(planar[1])
    fetched = ws.get("fetched", (2, n * npix), torch.complex128, planar.device)
    torch.index_select(rg_table, 0, rg.view(-1), out=fetched[0])
    torch.index_select(b_table, 0, planar[2].view(-1), out=fetched[1])
    parts = fetched.view(torch.float32).view(2, n, npix, 4)
    return _to_uint8(parts[0].mul_(parts[1]), out)


def apply_maps(patches: Tensor, planar: Tensor, od_maps: Tensor, lut: Tensor, io: float,
               out: Tensor, ws: Scratch, exact: tuple[Tensor, Tensor],
               skip: Tensor | None = None) -> int:
    """Normalized pixels of per-patch maps into out (n, P, 3) uint8: the float32 tables where
    `tables_exact` holds, `apply_exact` for the other patches (except rows where `skip` (n,) is
    true, left to the caller). patches (n, P, 3) uint8; planar (3, n, P) is consumed; od_maps
    (n, 3, 3); exact: (`table_bounds`, `log_levels`). Returns the number of patches evaluated
    exactly."""
    bounds, levels = exact
    apply_tables(planar, channel_tables(od_maps, lut, io), out, ws)
    inside = tables_exact(od_maps, bounds)
    if skip is not None:
        inside |= skip
    if bool(inside.all()):  # the usual case, in a few microseconds
        return 0
    rows = (~inside).nonzero().squeeze(-1).tolist()
    for i in rows:
        apply_exact(patches[i], od_maps[i], io, levels, out[i])
    return len(rows)
