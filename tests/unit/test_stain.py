"""pathtrail.stain: the batched Macenko normalizer (agreement with torchstain, contracts, robustness).

Real H&E scans (torchstain's sample images, MIT) live in tests/data/he/; everything else uses
small synthetic patches.
"""

from __future__ import annotations

import hashlib
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from pathtrail.data import demo
from pathtrail.stain import MacenkoNormalizer, ops
from pathtrail.stain.macenko import DEFAULT_MAX_CONCENTRATIONS, DEFAULT_STAINS

HE_DIR = Path(__file__).resolve().parents[1] / "data/he"
# Tissue-rich 256x256 region of target.png used as the reference throughout.
REF_BOX = (100, 150, 256)  # y, x, size


# ------------------------------------------------------------------------------------ helpers
def _load_he(name: str) -> np.ndarray:
    from PIL import Image

    path = HE_DIR / f"{name}.png"
    return np.ascontiguousarray(np.asarray(Image.open(path).convert("RGB")))


@pytest.fixture(scope="module")
def he_source() -> np.ndarray:
    return _load_he("source")


@pytest.fixture(scope="module")
def he_reference() -> np.ndarray:
    y, x, s = REF_BOX
    return _load_he("target")[y:y + s, x:x + s].copy()


def _tiles(image: np.ndarray, size: int, step: int | None = None) -> np.ndarray:
    step = step or size
    h, w, _ = image.shape
    return np.stack([image[y:y + size, x:x + size]
                     for y in range(0, h - size + 1, step) for x in range(0, w - size + 1, step)])


def _unit(v) -> np.ndarray:
    v = np.asarray(v, dtype=np.float64)
    return v / np.linalg.norm(v)


def _synthetic_tissue(size: int = 48, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A Beer-Lambert H&E patch with known concentrations: hematoxylin nuclei (discs) on an
    eosin stroma with a little hematoxylin counterstain (so that stroma passes beta = 0.15).
    Returns (uint8 image, true c_H, true c_E)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    nuclei = np.zeros((size, size), bool)
    for cy, cx in rng.uniform(5, size - 5, (size // 5, 2)):
        nuclei |= (yy - cy) ** 2 + (xx - cx) ** 2 < 12
    c_h = np.where(nuclei, 1.6, 0.25) * rng.uniform(0.9, 1.1, (size, size))
    c_e = np.where(nuclei, 0.2, 0.9) * rng.uniform(0.8, 1.2, (size, size))
    od = c_h[..., None] * _unit(demo.H_BASE) + c_e[..., None] * _unit(demo.E_BASE)
    img = 245 * np.exp(-od) + rng.normal(0, 1.5, od.shape)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8), c_h, c_e


def _white(size: int = 32, seed: int = 0) -> np.ndarray:
    """Slide background: near-white glass with 2-level sensor noise."""
    rng = np.random.default_rng(seed)
    return np.clip(np.rint(245 + rng.normal(0, 2, (size, size, 3))), 0, 255).astype(np.uint8)


def _hard_cases(size: int = 32) -> dict[str, np.ndarray]:
    """Patches where a Macenko estimate is unusable (all must fall back)."""
    near_blank = _white(size)
    near_blank[5:8, 5:8] = (120, 60, 150)  # 9 dark pixels of 1024: < 1 % tissue
    green_pen, blue_pen = _white(size), _white(size)
    green_pen[:, 10:20] = (20, 160, 40)  # saturated single-colour ink strokes
    blue_pen[:, 10:20] = (30, 60, 200)
    return {
        "blank": np.full((size, size, 3), 245, np.uint8),
        "noisy_blank": _white(size, seed=1),
        "near_blank": near_blank,
        "flat_colour": np.full((size, size, 3), (180, 100, 170), np.uint8),
        "green_pen": green_pen,
        "blue_pen": blue_pen,
        "black": np.zeros((size, size, 3), np.uint8),
    }


def _near_collinear(size: int, n: int = 3) -> np.ndarray:
    """Faint patches of two stains about 3.5 degrees apart (as estimated): accepted, but their
    maps are outside the float32 tables' bound, so `normalize` evaluates them exactly (checked in
    test_stain_collinear.py)."""
    rng = np.random.default_rng(5)
    h, e = _unit(demo.H_BASE), _unit(demo.E_BASE)
    e = np.cos(np.radians(8)) * h + np.sin(np.radians(8)) * _unit(e - h * (h @ e))
    c_h, c_e = rng.uniform(0.3, 0.8, (2, n, size, size, 1))
    img = 240 * np.exp(-(c_h * h + c_e * e)) + rng.normal(0, 0.5, (n, size, size, 3))
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def _torchstain(reference: np.ndarray):
    torchstain = pytest.importorskip("torchstain")
    ts = torchstain.normalizers.MacenkoNormalizer(backend="torch")
    ts.fit(torch.from_numpy(reference).permute(2, 0, 1))
    return ts


def _ts_normalize(ts, patch: np.ndarray) -> np.ndarray:
    out, _, _ = ts.normalize(I=torch.from_numpy(patch).permute(2, 0, 1), Io=240, alpha=1,
                             beta=0.15, stains=True)
    return out.numpy()


# --------------------------------------------------------------------- agreement with torchstain
def test_fit_matches_torchstain(he_reference):
    ts = _torchstain(he_reference)
    ours = MacenkoNormalizer().fit(he_reference)
    # Measured on five 256x256 crops of each scan: stain entries differ by <= 1.8e-4 and the
    # maxima by <= 6.8e-4 relative (float32 covariance summed in another order moves the
    # eigenvectors by ~1e-4; a nearest-rank percentile can then pick the neighbouring pixel).
    np.testing.assert_allclose(ours.stain_matrix.numpy(), ts.HERef.double().numpy(), atol=1e-3)
    np.testing.assert_allclose(ours.max_concentrations.numpy(), ts.maxCRef.double().numpy(),
                               rtol=3e-3)
    # Hematoxylin first (the vector with the larger red OD), unit vectors.
    stains = ours.stain_matrix.numpy()
    assert stains[0, 0] > stains[0, 1]
    np.testing.assert_allclose(np.linalg.norm(stains, axis=0), 1, atol=1e-9)


@pytest.mark.parametrize("size", [64, 256])
def test_normalize_matches_torchstain_on_tissue_tiles(he_source, he_reference, size):
    ts = _torchstain(he_reference)
    ours = MacenkoNormalizer().fit(he_reference)
    tiles = _tiles(he_source, size)
    batched = ours.normalize(tiles)
    compared = 0
    for i, tile in enumerate(tiles):
        ours.normalize(tile[None])  # alone, to learn whether this tile fell back
        if ours.last_stats["fallback"]:
            continue  # < 5 % tissue: deliberately not torchstain's output (see robustness tests)
        diff = np.abs(_ts_normalize(ts, tile) - batched[i].astype(np.int32))
        # Measured: mean <= 0.035, max 1 (float32 rounding in another order moves a value across
        # an integer before torchstain's truncation). A real disagreement is tens of levels.
        assert diff.mean() < 0.1, f"tile {i}: mean abs diff {diff.mean():.3f}"
        assert diff.max() <= 1, f"tile {i}: max abs diff {diff.max()}"
        compared += 1
    assert compared >= (0.7 * len(tiles) if size == 64 else len(tiles))


def test_concentrations_match_torchstain(he_source, he_reference):
    ts = _torchstain(he_reference)
    ours = MacenkoNormalizer().fit(he_reference)
    compute = ts._TorchMacenkoNormalizer__compute_matrices  # torchstain's private (HE, C, maxC)
    for tile in _tiles(he_source, 256):
        _, h, e = ours.normalize(tile[None], return_concentrations=True)
        _, conc, max_conc = compute(torch.from_numpy(tile).permute(2, 0, 1), 240, 1, 0.15)
        conc = (conc * (ts.maxCRef / max_conc).unsqueeze(-1)).numpy()
        # Measured: <= 1.7e-3 absolute on values up to ~3 (the reference's 1e-4 stain difference).
        np.testing.assert_allclose(h[0].ravel(), conc[0], atol=1e-2)
        np.testing.assert_allclose(e[0].ravel(), conc[1], atol=1e-2)


def test_torchstain_fails_where_we_fall_back():
    """Why the fallback exists: torchstain raises on blank glass and turns a near-blank patch
    dark, while the fallback keeps glass white."""
    ts = _torchstain(_synthetic_tissue(64)[0])
    cases = _hard_cases()
    with pytest.raises((IndexError, RuntimeError)):
        _ts_normalize(ts, cases["blank"])
    assert _ts_normalize(ts, cases["near_blank"]).mean() < 100
    assert MacenkoNormalizer().normalize(cases["near_blank"][None]).mean() > 220


# ------------------------------------------------------------------------ type / shape contract
@pytest.mark.parametrize("method", ["normalize", "normalize_slide"])
@pytest.mark.parametrize("kind", ["numpy", "torch"])
def test_type_shape_contract(method, kind):
    img = np.stack([_synthetic_tissue(40, seed)[0][:24] for seed in range(3)])  # (3, 24, 40, 3)
    batch = img if kind == "numpy" else torch.from_numpy(img.copy())
    before = batch.copy() if kind == "numpy" else batch.clone()
    out = getattr(MacenkoNormalizer(), method)(batch)
    assert type(out) is type(batch)
    assert out.dtype == batch.dtype and tuple(out.shape) == (3, 24, 40, 3)
    assert (out != batch).any()  # it did change the colours
    assert (batch == before).all()  # and left the input alone


def test_concentrations_contract():
    img = np.stack([_synthetic_tissue(32, seed)[0] for seed in range(2)])
    out, h, e = MacenkoNormalizer().normalize(img, return_concentrations=True)
    assert isinstance(out, np.ndarray) and isinstance(h, np.ndarray) and isinstance(e, np.ndarray)
    assert h.dtype == e.dtype == np.float32 and h.shape == e.shape == (2, 32, 32)
    out_t, h_t, e_t = MacenkoNormalizer().normalize(torch.from_numpy(img),
                                                    return_concentrations=True)
    assert isinstance(h_t, torch.Tensor) and h_t.dtype == torch.float32
    assert torch.equal(h_t, torch.from_numpy(h)) and torch.equal(out_t, torch.from_numpy(out))
    assert torch.equal(e_t, torch.from_numpy(e))


def test_read_only_and_strided_inputs():
    img = np.stack([_synthetic_tissue(32, seed)[0] for seed in range(2)])
    expected = MacenkoNormalizer().normalize(img)
    frozen = img.copy()
    frozen.flags.writeable = False
    np.testing.assert_array_equal(MacenkoNormalizer().normalize(frozen), expected)
    padded = np.zeros((2, 32, 64, 3), np.uint8)
    padded[:, :, ::2] = img  # a non-contiguous view
    np.testing.assert_array_equal(MacenkoNormalizer().normalize(padded[:, :, ::2]), expected)


@pytest.mark.parametrize("bad, error, message", [
    (np.zeros((2, 8, 8, 3), np.float32), TypeError, "must be uint8"),
    (torch.zeros(2, 8, 8, 3, dtype=torch.int32), TypeError, "must be uint8"),
    ([np.zeros((8, 8, 3), np.uint8)], TypeError, "numpy array or a torch tensor"),
    (np.zeros((8, 8, 3), np.uint8), ValueError, r"\(N, H, W, 3\)"),
    (np.zeros((2, 8, 8, 4), np.uint8), ValueError, r"\(N, H, W, 3\).*\(2, 8, 8, 4\)"),
    (np.zeros((2, 3, 8, 8), np.uint8), ValueError, r"\(N, H, W, 3\)"),
])
@pytest.mark.parametrize("method", ["normalize", "normalize_slide"])
def test_bad_batches_raise_helpful_errors(method, bad, error, message):
    with pytest.raises(error, match=message):
        getattr(MacenkoNormalizer(), method)(bad)


def test_bad_settings_and_fit_inputs_raise():
    for kwargs, match in [({"io": 0}, "io"), ({"alpha": 50}, "alpha"), ({"beta": -1}, "beta"),
                          ({"min_tissue_fraction": 2}, "min_tissue_fraction"),
                          ({"fallback": "white"}, "fallback"), ({"chunk_size": 0}, "chunk_size")]:
        with pytest.raises(ValueError, match=match):
            MacenkoNormalizer(**kwargs)
    norm = MacenkoNormalizer()
    with pytest.raises(TypeError, match="reference image must be uint8"):
        norm.fit(np.zeros((8, 8, 3), np.float64))
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        norm.fit(np.zeros((8, 8), np.uint8))


def test_empty_batches_and_zero_pixel_patches():
    """Regression: these used to raise IndexError-like RuntimeErrors from the rank selection."""
    norm = MacenkoNormalizer()
    assert norm.normalize(np.zeros((0, 8, 8, 3), np.uint8)).shape == (0, 8, 8, 3)
    assert norm.normalize_slide(np.zeros((0, 8, 8, 3), np.uint8)).shape == (0, 8, 8, 3)
    assert norm.last_stats == {"patches": 0, "fallback": 0, "fallback_slide": 0}
    assert norm.normalize(np.zeros((2, 0, 0, 3), np.uint8)).shape == (2, 0, 0, 3)
    assert norm.last_stats == {"patches": 2, "fallback": 2, "fallback_slide": 0}
    with pytest.raises(ValueError, match="no usable H&E staining"):
        norm.fit(np.zeros((0, 0, 3), np.uint8))


# ----------------------------------------------------------------------------- batch invariance
def test_patch_is_bitwise_the_same_alone_or_in_any_batch():
    tissue = [_synthetic_tissue(32, seed)[0] for seed in range(5)]
    batch = np.stack([*tissue, *_hard_cases(32).values()])
    rng = np.random.default_rng(0)
    batch = np.concatenate([batch, rng.integers(0, 256, (3, 32, 32, 3), dtype=np.uint8),
                            _near_collinear(32)])  # the exact (float64) path
    base = MacenkoNormalizer().fit(tissue)
    est = base._estimate(torch.from_numpy(batch[-3:]).reshape(3, -1, 3), ops.Scratch())[1]
    cache = base._cache(torch.device("cpu"))
    maps = ops.od_map(cache["ref_stains"], cache["ref_max"], est.unmix, est.max_conc)
    assert est.valid.all() and not ops.tables_exact(maps, cache["exact"][0]).any()
    out, h, e = base.normalize(batch, return_concentrations=True)
    for i in range(len(batch)):  # alone
        alone, h1, e1 = base.normalize(batch[i:i + 1], return_concentrations=True)
        assert np.array_equal(alone[0], out[i]) and np.array_equal(h1[0], h[i])
        assert np.array_equal(e1[0], e[i])
    for chunk_size in (1, 3, 7, 64):  # other positions, other chunkings
        norm = MacenkoNormalizer.from_dict(base.to_dict(), chunk_size=chunk_size)
        perm = rng.permutation(len(batch))
        out2, h2, e2 = norm.normalize(batch[perm], return_concentrations=True)
        assert np.array_equal(out2, out[perm]), f"chunk_size={chunk_size}"
        assert np.array_equal(h2, h[perm]) and np.array_equal(e2, e[perm])


def test_real_tiles_bitwise_batch_invariant(he_source, he_reference):
    norm = MacenkoNormalizer(chunk_size=5).fit(he_reference)
    tiles = _tiles(he_source, 64)[:20]
    out = norm.normalize(tiles)
    stacked = np.concatenate([tiles[7:8], tiles[::-1]])  # tile 7 first, then again at 13 + 1
    out2 = norm.normalize(stacked)
    assert np.array_equal(out2[0], out[7]) and np.array_equal(out2[13], out[7])
    assert np.array_equal(out2[1:], out[::-1])


# ---------------------------------------------------------------------------------- robustness
@pytest.mark.parametrize("name", list(_hard_cases()))
def test_unusable_patches_never_raise_and_fall_back(name):
    patch = _hard_cases()[name]
    tissue = _synthetic_tissue(32)[0]
    norm = MacenkoNormalizer()
    out, h, e = norm.normalize(np.stack([tissue, patch]), return_concentrations=True)
    assert out.dtype == np.uint8 and out.shape == (2, 32, 32, 3)
    assert np.isfinite(h).all() and np.isfinite(e).all()
    assert norm.last_stats == {"patches": 2, "fallback": 1, "fallback_slide": 0}
    passthrough = MacenkoNormalizer(fallback="passthrough")
    out_pt = passthrough.normalize(np.stack([tissue, patch]))
    assert passthrough.last_stats == {"patches": 2, "fallback": 1, "fallback_slide": 0}
    assert np.array_equal(out_pt[1], patch)  # returned unchanged
    assert np.array_equal(out_pt[0], out[0])  # usable patches are unaffected by the mode


def test_noisy_pen_stroke_never_raises():
    """A pen stroke with sensor noise is NOT caught by the fallback (its 1st/99th percentile
    angles spread by a few degrees, like two stains), but it must still give finite, uint8
    output."""
    rng = np.random.default_rng(3)
    pen = _white(32).astype(np.float64)
    pen[:, 8:24] = np.array([20, 160, 40]) + rng.normal(0, 3, (32, 16, 3))
    pen = np.clip(np.rint(pen), 0, 255).astype(np.uint8)
    out, h, e = MacenkoNormalizer().normalize(pen[None], return_concentrations=True)
    assert out.dtype == np.uint8 and np.isfinite(h).all() and np.isfinite(e).all()


def test_near_blank_background_stays_white():
    near_blank = _hard_cases()["near_blank"]
    background = near_blank.min(-1) > 200
    assert background.mean() > 0.99
    out = MacenkoNormalizer().normalize(near_blank[None])[0]
    before, after = near_blank[background].mean(0), out[background].mean(0)
    assert (after > 220).all()
    # measured: within 1.7 levels per channel (the reference's stains applied to the glass's OD)
    np.testing.assert_allclose(after, before, atol=4)


# ------------------------------------------------------------------------- fit / serialisation
def test_fit_on_list_pools_pixels():
    a, b = _synthetic_tissue(32, 0)[0], _synthetic_tissue(32, 1)[0]
    b = np.clip(b.astype(np.int16) - 40, 0, 255).astype(np.uint8)  # a darker second image
    pooled = MacenkoNormalizer().fit([a, b])
    only_a = MacenkoNormalizer().fit(a)
    assert not torch.allclose(pooled.max_concentrations, only_a.max_concentrations, rtol=1e-3)
    # pooling is exactly fitting the pixels of both: the same as one image stacked from them
    stacked = MacenkoNormalizer().fit(np.concatenate([a, b]))
    assert torch.equal(pooled.stain_matrix, stacked.stain_matrix)
    assert torch.equal(pooled.max_concentrations, stacked.max_concentrations)
    assert len(pooled.reference_sha256) == 2 and pooled.reference_sha256[0] == only_a.reference_sha256[0]
    # a 4-D batch is a list of images too
    assert torch.equal(MacenkoNormalizer().fit(np.stack([a, b])).stain_matrix, pooled.stain_matrix)


def test_fit_on_blank_raises_and_keeps_reference():
    norm = MacenkoNormalizer()
    with pytest.raises(ValueError, match="no usable H&E staining.*fit on patches with tissue"):
        norm.fit(np.full((32, 32, 3), 250, np.uint8))
    with pytest.raises(ValueError, match="at least one image"):
        norm.fit([])
    np.testing.assert_array_equal(norm.stain_matrix.numpy(), np.array(DEFAULT_STAINS))
    np.testing.assert_array_equal(norm.max_concentrations.numpy(),
                                  np.array(DEFAULT_MAX_CONCENTRATIONS))
    assert norm.reference_sha256 == []


def test_json_round_trip_gives_identical_output():
    tissue = [_synthetic_tissue(32, seed)[0] for seed in range(3)]
    norm = MacenkoNormalizer(fallback="passthrough", chunk_size=2).fit(tissue)
    batch = np.stack([*tissue, _hard_cases(32)["blank"]])
    text = json.dumps(norm.to_dict(), sort_keys=True)
    back = MacenkoNormalizer.from_dict(json.loads(text))
    assert back.to_dict() == norm.to_dict()
    np.testing.assert_array_equal(back.normalize(batch), norm.normalize(batch))
    np.testing.assert_array_equal(back.normalize_slide(batch), norm.normalize_slide(batch))
    # pickling (e.g. into data-loader workers) drops only the device cache
    again = pickle.loads(pickle.dumps(norm))
    np.testing.assert_array_equal(again.normalize(batch), norm.normalize(batch))
    # overrides and malformed references
    assert MacenkoNormalizer.from_dict(norm.to_dict(), fallback="reference").fallback == "reference"
    with pytest.raises(TypeError, match="unknown overrides"):
        MacenkoNormalizer.from_dict(norm.to_dict(), beta=0.2)
    with pytest.raises(ValueError, match="version"):
        MacenkoNormalizer.from_dict({**norm.to_dict(), "version": 99})
    with pytest.raises(KeyError, match="stain_matrix"):
        MacenkoNormalizer.from_dict({k: v for k, v in norm.to_dict().items() if k != "stain_matrix"})


def test_reference_sha256_identifies_the_reference_image():
    img = _synthetic_tissue(32)[0]
    d = MacenkoNormalizer().fit(img).to_dict()
    digest = hashlib.sha256(b"32x32x3:" + img.tobytes()).hexdigest()  # the documented format
    assert d["reference_sha256"] == [digest]
    changed = img.copy()
    changed[0, 0, 0] ^= 1
    assert MacenkoNormalizer().fit(changed).to_dict()["reference_sha256"] != [digest]
    assert MacenkoNormalizer().fit(torch.from_numpy(img)).reference_sha256 == [digest]


# ---------------------------------------------------------------------------------- concentrations
def test_concentrations_separate_nuclei_from_stroma():
    img, c_h, c_e = _synthetic_tissue(48)
    norm = MacenkoNormalizer()
    _, h, e = norm.normalize(img[None], return_concentrations=True)
    h, e = h[0], e[0]
    assert norm.last_stats["fallback"] == 0 and np.isfinite(h).all() and np.isfinite(e).all()
    nuclei = c_h > 1
    assert (h[nuclei] > e[nuclei]).mean() > 0.95
    assert (e[~nuclei] > h[~nuclei]).mean() > 0.95
    # recovered concentrations track the truth (measured r = 0.999 for H, 0.995 for E)
    assert np.corrcoef(h.ravel(), c_h.ravel())[0, 1] > 0.95
    assert np.corrcoef(e.ravel(), c_e.ravel())[0, 1] > 0.95
    # they are on the reference's scale: the 99th percentiles are the reference maxima
    p99 = [np.percentile(c, 99, method="nearest") for c in (h, e)]
    np.testing.assert_allclose(p99, DEFAULT_MAX_CONCENTRATIONS, rtol=1e-5)


# ------------------------------------------------------------------------------- per-slide scope
def test_slide_of_one_stain_matches_per_patch():
    img = _synthetic_tissue(48)[0]
    # flips and rotations: one stain, the same pixels, so per-patch and per-slide estimates agree
    slide = np.stack([img, img[::-1], img[:, ::-1], np.rot90(img), np.rot90(img, 2)])
    norm = MacenkoNormalizer()
    per_patch = norm.normalize(slide)
    per_slide = norm.normalize_slide(slide)
    assert norm.last_stats == {"patches": 5, "fallback": 0, "fallback_slide": 0}
    diff = np.abs(per_slide.astype(np.int16) - per_patch)
    assert diff.mean() < 0.5 and diff.max() <= 2  # measured: mean 1e-4, max 1 (rounding)


def test_slide_of_real_tiles_is_close_to_per_patch(he_source, he_reference):
    norm = MacenkoNormalizer().fit(he_reference)
    tiles = _tiles(he_source, 128)
    per_slide = norm.normalize_slide(tiles)
    assert norm.last_stats["fallback"] == 0
    per_patch = norm.normalize(tiles)
    # Per-patch maxima vary with content; measured mean |diff| 5.1, slide mean colour within 3.4.
    assert np.abs(per_slide.astype(np.int16) - per_patch).mean() < 10
    gap = np.abs(per_slide.reshape(-1, 3).mean(0) - per_patch.reshape(-1, 3).mean(0))
    assert (gap < 8).all(), gap


def test_blank_slide_falls_back():
    slide = np.stack([_white(32, seed) for seed in range(4)])
    norm = MacenkoNormalizer()
    out = norm.normalize_slide(slide)
    assert norm.last_stats == {"patches": 4, "fallback": 4, "fallback_slide": 0}
    assert out.dtype == np.uint8 and out.mean() > 220
    passthrough = MacenkoNormalizer(fallback="passthrough")
    assert np.array_equal(passthrough.normalize_slide(slide), slide)
    assert passthrough.last_stats == {"patches": 4, "fallback": 4, "fallback_slide": 0}


# ------------------------------------------------------------------------------ slide fallback
def _sparse(size: int = 32, seed: int = 5) -> np.ndarray:
    """Glass with one 5x5 tissue spot (2.4 % tissue): below min_tissue_fraction, so its own
    estimate is unusable, but its pixels are real tissue."""
    patch = _white(size, seed)
    patch[10:15, 10:15] = _synthetic_tissue(size, seed)[0][10:15, 10:15]
    return patch


def _stained_slide(seed: int, darken: float = 1.0) -> np.ndarray:
    """Three tissue-rich patches and a sparse one (index 1); `darken` scales the optical density
    (a heavier stain), so slides of different `darken` have different estimates."""
    patches = [_synthetic_tissue(32, seed + k)[0] for k in range(3)]
    patches.insert(1, _sparse(seed=seed + 10))
    batch = np.stack(patches).astype(np.float64)
    return np.clip(np.rint(250 * (batch / 250) ** darken), 0, 255).astype(np.uint8)


def test_sparse_patch_uses_its_slides_estimate():
    slide = _stained_slide(0)
    ref = MacenkoNormalizer()
    out_ref, h_ref, e_ref = ref.normalize(slide, return_concentrations=True)
    assert ref.last_stats == {"patches": 4, "fallback": 1, "fallback_slide": 0}
    norm = MacenkoNormalizer(fallback="slide")
    out, h, e = norm.normalize(slide, return_concentrations=True)
    assert norm.last_stats == {"patches": 4, "fallback": 1, "fallback_slide": 1}
    # the sparse patch got the slide's map, not the reference's: exactly normalize_slide's output
    assert (out[1] != out_ref[1]).mean() > 0.3
    assert np.array_equal(out[1], norm.normalize_slide(slide)[1])
    assert np.isfinite(h).all() and np.isfinite(e).all() and not np.array_equal(h[1], h_ref[1])
    # the other patches keep their own estimates, bit for bit
    for i in (0, 2, 3):
        assert np.array_equal(out[i], out_ref[i]) and np.array_equal(h[i], h_ref[i])
        assert np.array_equal(e[i], e_ref[i])


def test_blank_slide_falls_back_to_the_reference():
    tissue = _stained_slide(0)
    blank = np.stack([_white(32, seed) for seed in range(3)])
    batch = np.concatenate([tissue, blank])
    ids = ["a"] * 4 + ["b"] * 3
    expected = MacenkoNormalizer().normalize(batch)
    norm = MacenkoNormalizer(fallback="slide")
    out = norm.normalize(batch, slide_ids=ids)
    assert norm.last_stats == {"patches": 7, "fallback": 4, "fallback_slide": 1}
    assert np.array_equal(out[4:], expected[4:]) and out[4:].mean() > 220
    assert not np.array_equal(out[1], expected[1])
    # normalize_slide has no other slide estimate to use: "slide" acts as "reference" there
    assert np.array_equal(norm.normalize_slide(blank), MacenkoNormalizer().normalize_slide(blank))
    assert norm.last_stats == {"patches": 3, "fallback": 3, "fallback_slide": 0}


def test_slide_ids_are_checked():
    batch = _stained_slide(0)
    for fallback in ("slide", "reference"):
        norm = MacenkoNormalizer(fallback=fallback)
        with pytest.raises(ValueError, match="one id per patch: got 3 for 4 patches"):
            norm.normalize(batch, slide_ids=["a", "a", "b"])
        with pytest.raises(TypeError, match="not a string"):
            norm.normalize(batch, slide_ids="abcd")
        with pytest.raises(TypeError, match="hashable"):
            norm.normalize(batch, slide_ids=[[1], [1], [2], [2]])
    norm = MacenkoNormalizer(fallback="slide")
    # ids by value, whatever their container
    expected = norm.normalize(batch, slide_ids=["s1", "s1", "s2", "s2"])
    for ids in (np.array(["s1", "s1", "s2", "s2"]), torch.tensor([1, 1, 2, 2]), (7, 7, 8, 8)):
        assert np.array_equal(norm.normalize(batch, slide_ids=ids), expected)


def test_usable_patches_are_bitwise_the_same_under_every_fallback():
    rng = np.random.default_rng(1)
    batch = np.concatenate([_stained_slide(0), _stained_slide(20, darken=1.4),
                            np.stack(list(_hard_cases(32).values())),
                            rng.integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)])
    ids = rng.integers(0, 3, len(batch))  # three slides, interleaved
    base = MacenkoNormalizer().fit([_synthetic_tissue(32, 9)[0]])
    usable = []
    for patch in batch:
        base.normalize(patch[None])
        usable.append(base.last_stats["fallback"] == 0)
    usable = np.array(usable)
    assert 4 < usable.sum() < len(batch)
    results = {}
    for fallback in ("reference", "passthrough", "slide"):
        norm = MacenkoNormalizer.from_dict(base.to_dict(), fallback=fallback, chunk_size=3)
        results[fallback] = norm.normalize(batch, return_concentrations=True, slide_ids=ids)
        assert norm.last_stats["fallback"] == (~usable).sum()
    for fallback in ("passthrough", "slide"):
        for ours, theirs in zip(results[fallback], results["reference"], strict=True):
            assert np.array_equal(ours[usable], theirs[usable]), fallback
    assert not np.array_equal(results["slide"][0][~usable], results["reference"][0][~usable])


def test_slide_fallback_ignores_other_slides_and_chunking():
    a, b, c = _stained_slide(0), _stained_slide(20, darken=1.4), _stained_slide(40, darken=0.7)
    ref = MacenkoNormalizer().fit([_synthetic_tissue(32, 9)[0]])
    alone = MacenkoNormalizer.from_dict(ref.to_dict(), fallback="slide").normalize(a)
    # pooling another slide's pixels would change the sparse patch: the check below can fail
    pooled = MacenkoNormalizer.from_dict(ref.to_dict(), fallback="slide").normalize(
        np.concatenate([a, b]))
    assert not np.array_equal(pooled[1], alone[1])
    # slide a interleaved with b, or with c, at other positions, in any chunking
    mixes = [(np.stack([a[0], b[0], a[1], b[1], b[2], a[2], b[3], a[3]]), list("ababbaba")),
             (np.concatenate([c, a]), list("ccccaaaa"))]
    for chunk_size in (1, 3, 64):
        norm = MacenkoNormalizer.from_dict(ref.to_dict(), fallback="slide", chunk_size=chunk_size)
        for batch, ids in mixes:
            out = norm.normalize(batch, slide_ids=ids)
            assert norm.last_stats["fallback_slide"] == 2
            rows = [i for i, s in enumerate(ids) if s == "a"]
            assert np.array_equal(out[rows], alone), chunk_size


def test_fallback_param_is_validated(repo_params):
    from pathtrail.config.loading import ParamsError, from_dict
    from pathtrail.config.sections import StainParams

    for value in ("reference", "passthrough", "slide"):
        stain = from_dict(StainParams, dict(repo_params["stain"], fallback=value), prefix="stain")
        assert MacenkoNormalizer(fallback=stain.fallback).fallback == value
    with pytest.raises(ParamsError, match=r"'stain\.fallback' must be one of 'reference', "
                                          r"'passthrough', 'slide', got 'slides'"):
        from_dict(StainParams, dict(repo_params["stain"], fallback="slides"), prefix="stain")


# ------------------------------------------------------------------------------------- purpose
def _cohort_gap(internal: np.ndarray, external: np.ndarray) -> np.ndarray:
    return np.abs(internal.reshape(-1, 3).mean(0) - external.reshape(-1, 3).mean(0))


def test_normalization_shrinks_the_colour_gap_between_cohorts():
    params = demo.DemoParams(seed=0, patch_size=64, internal_sites=["site_a", "site_b"],
                             external_site="site_c", patients_per_site=3, external_patients=3,
                             patches_per_patient=3, max_slides_per_patient=1)
    cohorts = demo.generate_cohorts(params)
    internal = np.stack([p.image for p in cohorts["internal"]])
    external = np.stack([p.image for p in cohorts["external"]])
    norm = MacenkoNormalizer().fit(list(internal))  # the pipeline's defaults (beta = 0.15)
    before = _cohort_gap(internal, external)
    after = _cohort_gap(norm.normalize(internal), norm.normalize(external))
    # measured (R, G, B): before (45, 17, 27), after (11.5, 8.4, 4.5)
    assert (after < 0.6 * before).all(), (before, after)

    def per_slide(patches):
        out = []
        for slide in sorted({p.slide_id for p in patches}):
            out.append(norm.normalize_slide(np.stack([p.image for p in patches
                                                      if p.slide_id == slide])))
        return np.concatenate(out)

    after_slide = _cohort_gap(per_slide(cohorts["internal"]), per_slide(cohorts["external"]))
    assert (after_slide < 0.6 * before).all(), (before, after_slide)


# ------------------------------------------------------------------------------------------ GPU
@pytest.mark.gpu
def test_cuda_matches_cpu():
    tissue = [_synthetic_tissue(48, seed)[0] for seed in range(6)]
    batch = np.stack([*tissue, *_hard_cases(48).values()])
    norm = MacenkoNormalizer().fit(tissue)
    cpu = torch.from_numpy(norm.normalize(batch)).to(torch.int16)
    gpu = norm.normalize(torch.from_numpy(batch).cuda())
    assert gpu.is_cuda and gpu.dtype == torch.uint8 and gpu.shape == batch.shape
    assert norm.last_stats["fallback"] == len(_hard_cases())
    # measured on an H200: identical to the CPU's output
    diff = (gpu.cpu().to(torch.int16) - cpu).abs()
    assert diff.float().mean() < 0.1 and diff.max() <= 1
    # Not bitwise on CUDA: a chunk of one patch has so few rows that CUDA splits each row sum
    # across blocks (another summation order), so a lone patch may differ by rounding.
    alone = torch.cat([norm.normalize(torch.from_numpy(p[None]).cuda()) for p in batch])
    diff = (alone.cpu().to(torch.int16) - gpu.cpu().to(torch.int16)).abs()
    assert diff.float().mean() < 0.1 and diff.max() <= 1
    slide = norm.normalize_slide(torch.from_numpy(batch[:6]).cuda())
    diff = (slide.cpu().to(torch.int16) - torch.from_numpy(norm.normalize_slide(batch[:6]))).abs()
    assert slide.is_cuda and diff.float().mean() < 0.1 and diff.max() <= 1
