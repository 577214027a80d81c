"""pathtrail.stain's CPU fast path (`fast`, `kernels`): bitwise the results of the torch kernels (`ops`).

The oracle is the torch path itself, which the normalizer still takes where the fast path does not
serve (concentration output, CUDA, patches under `fast.MIN_PIXELS` pixels): `normalize(x,
return_concentrations=True)[0]` runs `ops` only, `normalize(x)` runs `fast` on CPU.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from pathtrail.data import demo
from pathtrail.stain import MacenkoNormalizer, fast, kernels, ops

HE_DIR = Path(__file__).resolve().parents[1] / "data/he"
REPO = Path(__file__).resolve().parents[2]
REF_BOX = (100, 150, 256)


def _load_he(name: str) -> np.ndarray:
    from PIL import Image

    return np.ascontiguousarray(np.asarray(Image.open(HE_DIR / f"{name}.png").convert("RGB")))


@pytest.fixture(scope="module")
def he_source() -> np.ndarray:
    return _load_he("source")


@pytest.fixture(scope="module")
def reference() -> np.ndarray:
    y, x, s = REF_BOX
    return _load_he("target")[y:y + s, x:x + s].copy()


def _tiles(image: np.ndarray, size: int, count: int) -> np.ndarray:
    h, w, _ = image.shape
    step = max(8, (h - size) // 4)
    tiles = [image[y:y + size, x:x + size] for y in range(0, h - size + 1, step)
             for x in range(0, w - size + 1, step)]
    return np.stack(tiles[:: max(1, len(tiles) // count)][:count])


def _unit(v) -> np.ndarray:
    v = np.asarray(v, dtype=np.float64)
    return v / np.linalg.norm(v)


def _hard(size: int) -> np.ndarray:
    """Blank, sparse (< 1 % tissue), flat, pen ink, black, noise and near-collinear patches."""
    rng = np.random.default_rng(size)
    white = np.clip(np.rint(245 + rng.normal(0, 2, (size, size, 3))), 0, 255).astype(np.uint8)
    sparse, pen = white.copy(), white.copy()
    sparse[2:4, 2:5] = (120, 60, 150)
    pen[:, size // 3: size // 2] = (20, 160, 40)
    h, e = _unit(demo.H_BASE), _unit(demo.E_BASE)
    e = np.cos(np.radians(8)) * h + np.sin(np.radians(8)) * _unit(e - h * (h @ e))
    c_h, c_e = rng.uniform(0.3, 0.8, (2, 2, size, size, 1))
    collinear = np.clip(np.rint(240 * np.exp(-(c_h * h + c_e * e))
                                + rng.normal(0, 0.5, (2, size, size, 3))), 0, 255).astype(np.uint8)
    return np.stack([np.full((size, size, 3), 245, np.uint8), white, sparse, pen,
                     np.full((size, size, 3), (180, 100, 170), np.uint8),
                     np.zeros((size, size, 3), np.uint8),
                     rng.integers(0, 256, (size, size, 3), dtype=np.uint8), *collinear])


def _estimates_equal(a: ops.StainEstimate, b: ops.StainEstimate) -> None:
    for name in ("stains", "unmix", "max_conc", "tissue_fraction", "valid"):
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype and torch.equal(x, y), name


# --------------------------------------------------------------------------------- kernels
def test_moment_sums_match_torch_sum_bitwise():
    """cascade_sum's order, for every tail shape (8..95 values, level-step edges, 2^22), as
    `ops._covariance` sums: rows of a (9, n, P) tensor (a lone 1-D tensor is summed otherwise)."""
    rng = np.random.default_rng(0)
    lengths = [*range(8, 96), 511, 512, 513, 1024 * 16 - 1, 1024 * 16, 1024 * 16 + 33, 50176,
               65537, 200_003, 1 << 22]
    acc = np.empty((kernels._LEVELS, kernels._GROUP), np.float32)
    for n in lengths:
        scale = np.float32(10.0 ** rng.integers(-3, 3))
        a, b, c = (rng.standard_normal((3, n)) * scale).astype(np.float32)
        b[rng.random(n) < 0.3] = 0  # the tissue weight's zeros
        product = torch.from_numpy(a) * torch.from_numpy(b) * torch.from_numpy(c)
        want = product.expand(9, 1, n).contiguous().sum(-1)[4, 0]
        got = kernels._moment_sum(a, b, c, acc)
        assert np.float32(got).view(np.uint32) == want.numpy().view(np.uint32), n


_FMA_SCRIPT = """
from pathtrail.stain import fast, kernels
fast.compile_time()
names = []
for name in dir(kernels):
    kernel = getattr(kernels, name)
    for signature in getattr(kernel, "signatures", []):
        asm = kernel.inspect_asm(signature).lower()
        names.append(name)
        assert not any(op in asm for op in ("vfmadd", "vfmsub", "vfnmadd", "vfnmsub")), name
print(len(names))
"""


@pytest.mark.slow
def test_kernels_have_no_fma(tmp_path):
    """No fused multiply-add (it rounds once where torch rounds twice) in any compiled kernel:
    compiled afresh in a process with empty numba caches, numba's and ours (jit_cache.py): code loaded
    from a cache cannot be inspected."""
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "numba"),
           "PATHTRAIL_NUMBA_CACHE": str(tmp_path / "pathtrail"), "PYTHONPATH": str(REPO / "src")}
    done = subprocess.run([sys.executable, "-c", _FMA_SCRIPT], env=env, capture_output=True,
                          text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert int(done.stdout.strip().splitlines()[-1]) >= 8


# ------------------------------------------------------------------------- bitwise vs ops
@pytest.mark.parametrize("size", [32, 48, 64, 100, 224])
def test_fast_normalize_is_bitwise_the_torch_path(he_source, reference, size):
    norm = MacenkoNormalizer(chunk_size=7).fit(reference)
    batch = np.concatenate([_tiles(he_source, size, 12 if size < 224 else 6), _hard(size)])
    assert fast.usable(torch.from_numpy(batch).view(len(batch), -1, 3))
    out = norm.normalize(batch)
    stats = dict(norm.last_stats)
    torch_out = norm.normalize(batch, return_concentrations=True)[0]
    assert np.array_equal(out, torch_out) and stats == norm.last_stats
    assert 5 <= stats["fallback"] < len(batch)  # the hard cases fall back, tissue does not
    flat = torch.from_numpy(batch).view(len(batch), -1, 3)
    _estimates_equal(norm._estimate(flat, ops.Scratch())[1],
                     norm._estimate(flat, ops.Scratch(), use_fast=False)[1])


@pytest.mark.parametrize("fallback", ["passthrough", "slide"])
def test_fast_path_keeps_the_fallbacks_bitwise(he_source, reference, fallback):
    norm = MacenkoNormalizer(fallback=fallback).fit(reference)
    batch = np.concatenate([_tiles(he_source, 64, 10), _hard(64)])
    ids = [i % 3 for i in range(len(batch))]
    out = norm.normalize(batch, slide_ids=ids)
    assert np.array_equal(out, norm.normalize(batch, slide_ids=ids, return_concentrations=True)[0])


def test_fast_slide_scope_and_fit_are_bitwise_the_torch_path(he_source, reference):
    tiles = _tiles(he_source, 128, 8)
    flat = torch.from_numpy(tiles).view(len(tiles), -1, 3)
    pooled = flat.reshape(1, -1, 3)
    norm = MacenkoNormalizer().fit(reference)
    _estimates_equal(norm._estimate(pooled, ops.Scratch())[1],
                     norm._estimate(pooled, ops.Scratch(), use_fast=False)[1])
    cache = norm._cache(torch.device("cpu"))
    est = norm._slide_estimate(flat, ops.Scratch())
    od_map = ops.od_map(cache["ref_stains"], cache["ref_max"], est.unmix, est.max_conc)
    tables = ops.channel_tables(od_map, cache["lut"], norm.io)[0]
    want, got = torch.empty_like(flat), torch.empty_like(flat)
    planar = ops.to_planar(flat, ops.Scratch())
    ops.apply_fixed(planar, ops.pair_table(tables), tables[2], want, ops.Scratch())
    fast.apply_fixed(flat, tables, got)
    assert torch.equal(got, want)
    assert np.array_equal(norm.normalize_slide(tiles), want.view(tiles.shape).numpy())


def test_tiny_patches_take_the_torch_path():
    tiny = torch.zeros(2, fast.MIN_PIXELS - 1, 3, dtype=torch.uint8)
    assert not fast.usable(tiny) and fast.usable(torch.zeros(1, fast.MIN_PIXELS, 3,
                                                             dtype=torch.uint8))


def test_fast_path_is_batch_invariant(he_source, reference):
    batch = np.concatenate([_tiles(he_source, 64, 9), _hard(64)])
    out = MacenkoNormalizer(chunk_size=64).fit(reference).normalize(batch)
    norm = MacenkoNormalizer(chunk_size=3).fit(reference)
    for i in range(len(batch)):
        assert np.array_equal(norm.normalize(batch[i:i + 1])[0], out[i])
    perm = np.random.default_rng(1).permutation(len(batch))
    assert np.array_equal(norm.normalize(batch[perm]), out[perm])


_SCRIPT = """
import hashlib, numpy as np, torch
from PIL import Image
from pathtrail.stain import MacenkoNormalizer
img = np.asarray(Image.open({source!r}).convert("RGB"))
ref = np.ascontiguousarray(np.asarray(Image.open({target!r}).convert("RGB"))[100:356, 150:406])
tiles = np.stack([img[y:y + 96, x:x + 96] for y in (0, 150, 300) for x in (0, 200, 400)])
norm = MacenkoNormalizer().fit(ref)
print(hashlib.sha256(norm.normalize(tiles).tobytes() + norm.normalize_slide(tiles).tobytes())
      .hexdigest())
"""


def test_same_bits_under_the_default_cpu_capability(he_source, reference):
    """ATEN_CPU_CAPABILITY=default and one thread (the execution contract's variables) in a fresh
    process give the bits of this process."""
    tiles = np.stack([he_source[y:y + 96, x:x + 96] for y in (0, 150, 300) for x in (0, 200, 400)])
    norm = MacenkoNormalizer().fit(reference)
    here = hashlib.sha256(norm.normalize(tiles).tobytes()
                          + norm.normalize_slide(tiles).tobytes()).hexdigest()
    script = _SCRIPT.format(source=str(HE_DIR / "source.png"), target=str(HE_DIR / "target.png"))
    env = {**os.environ, "ATEN_CPU_CAPABILITY": "default", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(REPO / "src")}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                          timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == here  # after the normalizer's log lines


def test_fixed_map_without_the_pair_table_over_all_red_green_pairs():
    """fast.apply_fixed (three tables) == ops.apply_fixed (the R x G pair table) on every (R, G)
    pair, for maps with entries across the tables' whole range."""
    rng = np.random.default_rng(3)
    lut = ops.od_lut(240.0)
    rg = np.stack(np.meshgrid(np.arange(256), np.arange(256), indexing="ij"), -1).reshape(-1, 2)
    for scale in (0.3, 1.0, 3.0):
        od_map = torch.from_numpy(rng.normal(0, scale, (1, 3, 3)))
        tables = ops.channel_tables(od_map, lut, 240.0)[0]
        px = np.concatenate([rg, rng.integers(0, 256, (len(rg), 1))], 1).astype(np.uint8)
        flat = torch.from_numpy(px).view(1, -1, 3)
        want, got = torch.empty_like(flat), torch.empty_like(flat)
        ops.apply_fixed(ops.to_planar(flat, ops.Scratch()), ops.pair_table(tables), tables[2], want,
                        ops.Scratch())
        fast.apply_fixed(flat, tables, got)
        assert torch.equal(got, want), scale


def test_selection_is_exact_on_adversarial_orders():
    """`_kth_key_near_end` against a sort, where the 1-in-16 sample's threshold holds (random),
    misleads (the extremes off the sampled positions: the full selection decides) and for ranks
    far from the end; ties and +-0 included."""
    rng = np.random.default_rng(7)
    m = 20_000
    cases = {"random": rng.standard_normal(m), "ties": rng.integers(-3, 4, m) * 0.5,
             "zeros": np.where(rng.random(m) < 0.5, 0.0, -0.0)}
    hidden = rng.standard_normal(m)
    hidden[np.arange(m) % 16 != 0] *= 100  # the sample sees only the narrow values
    cases["hidden_extremes"] = hidden
    cand, buf = np.empty(m, np.uint32), np.empty(m, np.uint32)
    hist, rank, out = np.empty((4, 4096), np.int32), np.empty(1, np.int64), np.empty(1, np.uint32)
    for name, values in cases.items():
        keys = kernels._to_keys(values.astype(np.float32), m).copy()
        ordered = np.sort(keys)
        for k in (1, 2, 17, 200, 201, 4999, 5000, 12_000, m):
            for largest in (False, True):
                got = kernels._kth_key_near_end(keys, m, k, largest, cand, buf, hist, rank, out)
                assert got == (ordered[m - k] if largest else ordered[k - 1]), (name, k, largest)
