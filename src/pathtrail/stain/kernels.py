"""Fused per-pixel Macenko kernels (numba), private to `pathtrail.stain`: the bits of `ops`.

Each kernel makes one pass over a patch's uint8 pixels and reproduces, operation for operation,
the float32 arithmetic of the torch kernels in `ops` (same operands, same order, separate
multiply and add: numba compiles without fastmath, and LLVM contracts no multiply-add unless told
to), so its results are bitwise those of `ops`:

- `moment_sums`: tissue counts and the 9 first / second moment sums of each patch. The sums are
  float32 and their rounding depends on the order of the additions, so the kernel adds in the order
  of ATen's `cascade_sum` (aten/src/ATen/native/cpu/SumKernel.cpp: `vectorized_inner_sum` with
  8-float vectors, as under ATEN_CPU_CAPABILITY=default and avx2, `row_sum` with 4-way ILP,
  `multi_row_sum` with 4 levels of 16 or more) on every machine
  (test_moment_sums_match_torch_sum_bitwise).
- `angle_picks` / `conc_picks`: exact order statistics (1st / 99th percentile angles, 99th
  percentile concentrations) by a radix selection on the float32 bit patterns, after a
  threshold from a 1-in-16 sample has kept the candidates: a k-th smallest is a value, not an
  order of operations, so any exact selection gives torch.topk's bits
  (test_selection_is_exact_on_adversarial_orders).
- `apply_tables`: the per-pixel products of the float32 look-up tables.

Nothing here reduces in parallel, uses fastmath or depends on the CPU's vector width: LLVM
vectorizes only loops of independent lanes (which changes no result) and, without fastmath,
neither reassociates nor contracts a multiply and an add into an FMA (test_kernels_have_no_fma).
Compiled on first use and cached by numba in one folder per user keyed by this file's content
and the CPU (`jit_cache`: every clone on a machine shares it): a cold compile took 14-20 s on the
shared 2-core machine (load ~5), a process loading the cache 0.4 s (`fast.compile_time`, recorded
by bench/stain.py).
"""

from __future__ import annotations

import numba
import numpy as np

from pathtrail.stain import jit_cache

jit_cache.serve(__file__)

_JIT = {"nogil": True, "cache": True, "fastmath": False, "error_model": "numpy",
        "boundscheck": False}
_VEC = 8  # floats per Vectorized<float> (32-byte vectors: ATen's default and avx2 builds)
_ILP = 4  # row_sum's ilp_factor
_LEVELS = 4  # multi_row_sum's num_levels
_GROUP = _VEC * _ILP  # values per multi_row_sum row: lane q is vector q // 8, element q % 8
# moment m is (od[_FIRST[m]] * weight) * od[_SECOND[m]] (-1: a plane of ones): ops' moment rows
_FIRST = (0, 1, 2, 0, 0, 0, 1, 1, 2)
_SECOND = (-1, -1, -1, 0, 1, 2, 1, 2, 2)


@numba.njit(**_JIT)
def _ceil_log2(x: int) -> int:
    """ATen's utils::CeilLog2: 1 for x <= 2, else the bit length of x - 1."""
    if x <= 2:
        return 1
    bits, v = 0, x - 1
    while v > 0:
        v >>= 1
        bits += 1
    return bits


@numba.njit(**_JIT)
def _moment_sum(a, b, c, acc):
    """torch.sum of the float32 products (a * b) * c (>= 8 of them), bitwise: cascade_sum's order.

    acc: (_LEVELS, _GROUP) float32 scratch from the caller. Its width is read at run time so that
    LLVM keeps the lane loops as loops and vectorizes them (with a constant 32 it unrolls them
    into scalar code: measured 6x slower); `moment_sums` checks that it is _GROUP.
    """
    width = acc.shape[1]
    npix = a.shape[0]
    vec_size = npix // _VEC
    size_ilp = vec_size // _ILP
    power = max(4, _ceil_log2(size_ilp) // _LEVELS)
    mask = (1 << power) - 1
    full = size_ilp - size_ilp % (1 << power)  # rows in whole level steps
    zero = np.float32(0.0)
    acc[:] = zero
    lane = acc[0]
    for i in range(size_ilp):  # multi_row_sum's row i: _ILP vectors of _VEC values
        o = i * width
        for q in range(width):
            lane[q] += (a[o + q] * b[o + q]) * c[o + q]
        if i < full and (i + 1) & mask == 0:  # the end of a level step: carry up
            for j in range(1, _LEVELS):
                if j > 1 and (i + 1) & (mask << ((j - 1) * power)):
                    break
                for q in range(width):
                    acc[j, q] += acc[j - 1, q]
                    acc[j - 1, q] = zero
    for j in range(1, _LEVELS):
        for q in range(width):
            lane[q] += acc[j, q]
    # row_sum: the vectors past the last whole ILP row go into partial sum 0, then the fold
    for v in range(size_ilp * _ILP, vec_size):
        for q in range(_VEC):
            o = v * _VEC + q
            lane[q] += (a[o] * b[o]) * c[o]
    for k in range(1, _ILP):
        for q in range(_VEC):
            lane[q] += lane[k * _VEC + q]
    # vectorized_inner_sum: the scalar tail first, then the 8 lanes; the output is 0 + the sum
    final = zero
    for o in range(vec_size * _VEC, npix):
        final += (a[o] * b[o]) * c[o]
    for q in range(_VEC):
        final += lane[q]
    return zero + final


@numba.njit(**_JIT)
def _planes(px, lut, tissue_level, od):
    """px (P, 3) uint8 -> od (4, P) float32: the three OD planes, the tissue weight (1 where every
    channel's level is tissue, else 0); returns the tissue count."""
    tissue = 0
    for q in range(px.shape[0]):
        r, g, b = px[q, 0], px[q, 1], px[q, 2]
        od[0, q] = lut[r]
        od[1, q] = lut[g]
        od[2, q] = lut[b]
        t = tissue_level[r] & tissue_level[g] & tissue_level[b]
        od[3, q] = np.float32(t)
        tissue += t
    return tissue


@numba.njit(**_JIT)
def moment_sums(px, lut, tissue_level, od, sums, counts, acc):
    """px (n, P, 3) uint8 (P >= 8), lut (256,) float32 OD, tissue_level (256,) uint8 (OD >= beta)
    -> od (n, 4, P) float32 (`_planes`), sums (n, 9) float32: torch.sum over the pixels of
    [m0, m1, m2, m0*od0, m0*od1, m0*od2, m1*od1, m1*od2, m2*od2] with m = od * weight (`ops`'
    moments: m * 1 is m exactly), counts (n,) int64 tissue pixels; acc (_LEVELS, _GROUP) float32
    scratch (see `_moment_sum`)."""
    if acc.shape[0] != _LEVELS or acc.shape[1] != _GROUP:
        raise ValueError("acc must be (_LEVELS, _GROUP)")
    ones = np.ones(px.shape[1], np.float32)
    for s in range(px.shape[0]):
        o = od[s]
        counts[s] = _planes(px[s], lut, tissue_level, o)
        for m in range(9):  # one call site: numba inlines each, and compiles each inlined copy
            second = ones if _SECOND[m] < 0 else o[_SECOND[m]]
            sums[s, m] = _moment_sum(o[_FIRST[m]], o[3], second, acc)


@numba.njit(**_JIT)
def _to_keys(values, m):
    """values[:m] float32 -> their order-preserving uint32 keys, in place (a uint32 view)."""
    keys = values.view(np.uint32)
    for q in range(m):
        u = keys[q]
        keys[q] = u ^ np.uint32(0xFFFFFFFF) if u >> np.uint32(31) else u ^ np.uint32(0x80000000)
    return keys


@numba.njit(**_JIT)
def _from_key(key):
    """Inverse of `_to_keys` for one key, returned as float32."""
    u = key ^ np.uint32(0x80000000) if key >> np.uint32(31) else key ^ np.uint32(0xFFFFFFFF)
    return np.array([u], np.uint32).view(np.float32)[0]


@numba.njit(**_JIT)
def _histogram(src, count, shift, bins, hist):
    """hist[0, b] = how many of src[:count] have (key >> shift) & (bins - 1) == b. Long inputs
    use four interleaved histograms (summed into row 0), which keep runs of equal bins from
    serialising on one counter; short ones one (clearing four costs more than it saves)."""
    rows = 4 if count > 16384 else 1
    hist[:rows, :bins] = 0
    mask = np.uint32(bins - 1)
    if rows == 1:
        for q in range(count):
            hist[0, (src[q] >> np.uint32(shift)) & mask] += 1
        return
    for q in range(count):
        hist[q & 3, (src[q] >> np.uint32(shift)) & mask] += 1
    for b in range(bins):
        hist[0, b] += hist[1, b] + hist[2, b] + hist[3, b]


@numba.njit(**_JIT)
def _pick(hist, k):
    """(bin, rank within it) of the k-th smallest value counted by hist[0]."""
    chosen = 0
    while k > hist[0, chosen]:
        k -= hist[0, chosen]
        chosen += 1
    return chosen, k


@numba.njit(**_JIT)
def _kth_keys(keys, m, ranks, out, buf, hist):
    """out[r] = the ranks[r]-th smallest (1-based, in [1, m]) of keys[:m], exactly: a radix
    selection over the key's bits 20-31, 8-19 and 0-7 (a histogram of each level, then the keys
    of the chosen bin). The first level's histogram is shared by all ranks."""
    _histogram(keys, m, 20, 4096, hist)
    first = hist[0, :4096].copy()
    for r in range(ranks.shape[0]):
        hist[0, :4096] = first
        chosen, k = _pick(hist, ranks[r])
        prefix = np.uint32(chosen) << np.uint32(20)
        kept = 0  # the keys of the chosen bin (branch-free: the store is undone by not counting)
        for q in range(m):
            v = keys[q]
            buf[kept] = v
            kept += (v >> np.uint32(20)) == np.uint32(chosen)
        _histogram(buf, kept, 8, 4096, hist)
        chosen, k = _pick(hist, k)
        prefix |= np.uint32(chosen) << np.uint32(8)
        count = 0
        for q in range(kept):
            v = buf[q]
            buf[count] = v
            count += ((v >> np.uint32(8)) & np.uint32(4095)) == np.uint32(chosen)
        _histogram(buf, count, 0, 256, hist)
        chosen, k = _pick(hist, k)
        out[r] = prefix | np.uint32(chosen)


@numba.njit(**_JIT)
def angle_picks(od, counts, coef, k_low, k_high, picks):
    """The percentile angles of each patch's tissue pixels, as `ops.estimate` ranks them.

    od (n, 4, P) from `moment_sums`; coef (n, 2, 3) float32, the projection on the plane (rows x,
    y); k_low, k_high (n,) int64: ranks among the tissue angles of the low pick and (counted from
    the top) of the high pick. Writes picks (2, n) float32: angle + 0 and 0 - angle, the values
    `ops.kth_smallest` returns (0 where a patch has no tissue)."""
    n, npix = od.shape[0], od.shape[2]
    values = np.empty(npix, np.float32)
    buf = np.empty(npix, np.uint32)
    cand = np.empty(npix, np.uint32)
    hist = np.empty((4, 4096), np.int32)
    rank = np.empty(1, np.int64)
    chosen = np.empty(1, np.uint32)
    tiny = np.float32(1.1754944e-38)  # torch.finfo(float32).tiny
    zero, one = np.float32(0.0), np.float32(1.0)
    for s in range(n):
        o = od[s]
        cx0, cx1, cx2 = coef[s, 0, 0], coef[s, 0, 1], coef[s, 0, 2]
        cy0, cy1, cy2 = coef[s, 1, 0], coef[s, 1, 1], coef[s, 1, 2]
        m = 0
        for q in range(npix):
            if o[3, q] != zero:
                x = (o[0, q] * cx0 + o[1, q] * cx1) + o[2, q] * cx2
                y = (o[0, q] * cy0 + o[1, q] * cy1) + o[2, q] * cy2
                total = max(abs(x) + abs(y), tiny)  # clamp_(min=tiny); no NaN in finite OD
                values[m] = np.copysign(-(x / total) + one, y)
                m += 1
        if m == 0:
            picks[0, s] = picks[1, s] = zero
            continue
        keys = _to_keys(values, m)
        low, high = min(max(k_low[s], 1), m), min(max(k_high[s], 1), m)
        # the low-th smallest angle, + 0; the high-th smallest of 0 - angle: 0 - the high-th largest
        picks[0, s] = _from_key(_kth_key_near_end(keys, m, low, False, cand, buf, hist, rank,
                                                  chosen)) + zero
        picks[1, s] = zero - _from_key(_kth_key_near_end(keys, m, high, True, cand, buf, hist,
                                                         rank, chosen))


@numba.njit(**_JIT)
def _kth_key_near_end(keys, m, k, largest, cand, buf, hist, one, out):
    """The k-th smallest (or with `largest` the k-th largest) of keys[:m], 1 <= k <= m, exactly.

    For a k near that end, a threshold from every 16th key first keeps the keys at or beyond it
    (cand): when at least k pass, the answer is among them; otherwise (or for a k far from the
    end) the full radix selection over all m keys decides."""
    stride = 16
    sampled = 0
    for q in range(0, m, stride):
        buf[sampled] = keys[q]
        sampled += 1
    margin = k // stride + k // (2 * stride) + 16  # about 1.5x the expected rank in the sample
    if 4 * k < m and margin < sampled:
        one[0] = sampled - margin + 1 if largest else margin
        _kth_keys(buf[:sampled].copy(), sampled, one, out, buf, hist)
        threshold = out[0]
        kept = 0
        for q in range(m):
            v = keys[q]
            cand[kept] = v
            kept += (v >= threshold) if largest else (v <= threshold)
        if kept >= k:
            one[0] = kept - k + 1 if largest else k
            _kth_keys(cand, kept, one, out, buf, hist)
            return out[0]
    one[0] = m - k + 1 if largest else k
    _kth_keys(keys, m, one, out, buf, hist)
    return out[0]


@numba.njit(**_JIT)
def conc_picks(od, coef, k_small, picks):
    """Per patch, the k_small-th smallest (the 99th percentile) H and E concentration over all
    pixels; coef (n, 2, 3) float32 (the unmixing matrix), picks (2, n) float32."""
    n, npix = od.shape[0], od.shape[2]
    values = np.empty(npix, np.float32)
    cand = np.empty(npix, np.uint32)
    buf = np.empty(npix, np.uint32)
    hist = np.empty((4, 4096), np.int32)
    one = np.empty(1, np.int64)
    chosen = np.empty(1, np.uint32)
    for s in range(n):
        o = od[s]
        top = npix - min(max(k_small[s], 1), npix) + 1
        for r in range(2):
            c0, c1, c2 = coef[s, r, 0], coef[s, r, 1], coef[s, r, 2]
            for q in range(npix):
                values[q] = (o[0, q] * c0 + o[1, q] * c1) + o[2, q] * c2
            keys = _to_keys(values, npix)
            picks[r, s] = _from_key(_kth_key_near_end(keys, npix, top, True, cand, buf, hist,
                                                      one, chosen))


@numba.njit(**_JIT)
def apply_tables(px, tables, out):
    """out (n, P, 3) uint8 = trunc(min((T0[r] * T1[g]) * T2[b], 255)) per output channel, from
    per-patch tables (n, 3, 256, 4) float32 (`ops.channel_tables`), as `ops.apply_tables`, or
    from one map's tables (1, 3, 256, 4) for every patch (`fast.apply_fixed`)."""
    cap = np.float32(255.0)
    for s in range(px.shape[0]):
        t = s if tables.shape[0] > 1 else 0
        t0, t1, t2 = tables[t, 0], tables[t, 1], tables[t, 2]
        p, o = px[s], out[s]
        for q in range(px.shape[1]):
            r, g, b = p[q, 0], p[q, 1], p[q, 2]
            v0 = (t0[r, 0] * t1[g, 0]) * t2[b, 0]
            v1 = (t0[r, 1] * t1[g, 1]) * t2[b, 1]
            v2 = (t0[r, 2] * t1[g, 2]) * t2[b, 2]
            o[q, 0] = np.uint8(min(v0, cap))
            o[q, 1] = np.uint8(min(v1, cap))
            o[q, 2] = np.uint8(min(v2, cap))
