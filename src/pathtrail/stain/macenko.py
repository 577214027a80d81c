"""Batched, robust Macenko stain normalization (torch; the same code runs on CPU and CUDA).

Numerically it follows torchstain's torch backend (Macenko et al., ISBI 2009): optical density
OD = -ln((I + 1) / io); tissue pixels have every channel OD >= beta; the two stain vectors are the
alpha / (100 - alpha) nearest-rank percentile angles in the plane of the two largest eigenvectors of
the tissue OD covariance (the one with the larger red component is hematoxylin); concentrations come
from least squares over all pixels and are rescaled by 99th-percentile maxima. Each patch is mapped
by one linear map in OD space, ``io * exp(-(ref_stains @ diag(ref_max / max) @ unmix) @ OD)``.

Where torchstain raises or renders background purple (blank patches, <= 1 % tissue, flat colour,
single-colour pen ink; ink with sensor noise passes as two stains and is not caught), a patch whose
estimate is unusable falls back to the reference ("reference": the reference stains stand in for
the patch's own), is returned unchanged ("passthrough"), or uses its slide's estimate ("slide": one
estimate from the pooled pixels of the slide's patches in the batch, as `normalize_slide` makes it;
the reference's if that is unusable too); `last_stats` counts fallbacks ("fallback": all of them,
"fallback_slide": those that used their slide's estimate).

Near-collinear stains. An estimate whose stain vectors are under `ops.MIN_STAIN_ANGLE` (2 degrees)
apart falls back as above: that is the measured error of the estimated angle itself, since one
stain alone, quantised to uint8, is estimated as two up to 0.81 degrees apart (1.68 with 0.5-level
sensor noise; 36 patches of 32-224 pixels, random stain directions; test_single_stain_is_rejected),
while real H&E tiles (torchstain's samples, 32-224 px) are estimated >= 5.7 degrees apart. Numerics
set no threshold: near-collinear stains unmix with large coefficients, so a map can leave the
float32 tables' 1-level bound (`ops.TABLE_LOG_BOUND`; past it the tables were measured up to 255
levels off, on up to 0.33 % of all colours, at estimated angles of 2.4-4.6 degrees); such a map is
evaluated in float64 instead (`ops.apply_exact`, an exact search of ln(1..255)), so every patch is
within 1 level of trunc(io * exp(-M @ OD)) in float64 at any accepted angle
(test_near_collinear_stains_match_float64_or_fall_back,
test_apply_maps_is_within_one_level_over_the_colour_cube). Maps within the bound (the demo's, real
H&E's) keep the tables' bits.

Patches are independent: on CPU a patch gives the same bits alone or inside any batch, in any
chunking. The one exception is by design: under fallback="slide" a patch that falls back depends on
the other patches of its slide (and their order in the batch), never on other slides' patches nor
on the chunking; a patch with a usable estimate of its own gives the same bits under every
fallback. On CUDA a chunk holding a single patch sums its moments in another order (CUDA
reductions split rows when there are few), so a lone patch can differ from the batched one by
rounding.

On CPU, patches of at least `fast.MIN_PIXELS` pixels take the fast path (`fast`, `kernels`: the
same algorithm with its per-pixel loops fused in numba), bitwise the results of the torch kernels
(`ops`), which still serve CUDA, tiny patches and `return_concentrations`
(test_stain_fast.py).

A normalizer holds per-call scratch memory; use one instance per thread.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable, Sequence
from typing import Any

import structlog
import torch
from torch import Tensor

from pathtrail import __version__
from pathtrail.stain import fast, inputs, ops

log = structlog.get_logger(__name__)

FORMAT_VERSION = 1
FALLBACKS = ("reference", "passthrough", "slide")
# torchstain's built-in reference, used until `fit` is called.
DEFAULT_STAINS = ((0.5626, 0.2159), (0.7201, 0.8012), (0.4062, 0.5581))
DEFAULT_MAX_CONCENTRATIONS = (1.9705, 1.0308)
# Per-slide scope and the "slide" fallback: pixels sampled (evenly strided over all of the slide's
# patches) to estimate the slide's map.
SLIDE_SAMPLE_PIXELS = 1 << 18
# `fit` pools at most this many pixels (an evenly strided sample beyond it) to bound its memory.
FIT_MAX_PIXELS = 1 << 22
# Chunks are also capped in pixels: a working set past the CPU caches costs more than it saves.
CHUNK_PIXELS = 1 << 17
# The fast path (`fast`) keeps 16 bytes a pixel; larger chunks amortise its per-chunk torch algebra
# (2^20 pixels ran 18 % faster than 2^19 at 224x224, and 2^21 no faster).
FAST_CHUNK_PIXELS = 1 << 20
# On a GPU the cap only bounds scratch memory (~200 bytes a pixel, so ~1 GB): 2^17-pixel chunks
# (two 256x256 patches) left an H200 mostly idle, 27x slower than 2^22 at 256x256.
GPU_CHUNK_PIXELS = 1 << 22

Array = inputs.Array


class MacenkoNormalizer:
    """Macenko normalizer: `fit` a reference, then `normalize` (per patch) or `normalize_slide`."""

    def __init__(self, io: float = 240, alpha: float = 1.0, beta: float = 0.15,
                 min_tissue_fraction: float = 0.05, fallback: str = "reference",
                 chunk_size: int = 64) -> None:
        if not io > 0:
            raise ValueError(f"io must be > 0, got {io}")
        if not 0 <= alpha < 50:
            raise ValueError(f"alpha must be in [0, 50), got {alpha}")
        if not beta >= 0:
            raise ValueError(f"beta must be >= 0, got {beta}")
        if not 0 <= min_tissue_fraction <= 1:
            raise ValueError(f"min_tissue_fraction must be in [0, 1], got {min_tissue_fraction}")
        if fallback not in FALLBACKS:
            raise ValueError(f"fallback must be one of {FALLBACKS}, got {fallback!r}")
        if int(chunk_size) < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        self.io, self.alpha, self.beta = float(io), float(alpha), float(beta)
        self.min_tissue_fraction = float(min_tissue_fraction)
        self.fallback, self.chunk_size = fallback, int(chunk_size)
        self.stain_matrix = torch.tensor(DEFAULT_STAINS, dtype=torch.float64)  # (3, 2): H, E
        self.max_concentrations = torch.tensor(DEFAULT_MAX_CONCENTRATIONS, dtype=torch.float64)
        self.reference_sha256: list[str] = []
        self.last_stats: dict[str, int] = {"patches": 0, "fallback": 0, "fallback_slide": 0}
        self._device_cache: dict[torch.device, dict[str, Any]] = {}

    # ----------------------------------------------------------------------------- reference
    def fit(self, images: Array | Sequence[Array]) -> MacenkoNormalizer:
        """Fit the reference on one uint8 (H, W, 3) image or on the pooled pixels of several."""
        items = [images] if inputs.is_array(images) and images.ndim == 3 else list(images)
        if not items:
            raise ValueError("fit needs at least one image")
        tensors = [inputs.as_tensor(img, ndim=3, what="reference image") for img in items]
        pixels = torch.cat([t.reshape(-1, 3) for t in tensors]).unsqueeze(0)
        if pixels.shape[1] > FIT_MAX_PIXELS:
            log.info("stain.fit.sampled", pixels=pixels.shape[1], sample=FIT_MAX_PIXELS)
            pixels = inputs.strided_sample(pixels, FIT_MAX_PIXELS)
        est = self._estimate(pixels, ops.Scratch())[1]
        if not bool(est.valid[0]):
            raise ValueError(
                f"the reference has no usable H&E staining (tissue fraction "
                f"{float(est.tissue_fraction[0]):.3f}, min {self.min_tissue_fraction}): "
                "fit on patches with tissue")
        self.stain_matrix = est.stains[0].cpu()
        self.max_concentrations = est.max_conc[0].cpu()
        self.reference_sha256 = [inputs.image_sha256(t) for t in tensors]
        self._device_cache.clear()
        log.info("stain.fit", images=len(tensors), pixels=pixels.shape[1],
                 tissue_fraction=round(float(est.tissue_fraction[0]), 4))
        return self

    def to_dict(self) -> dict[str, Any]:
        """JSON-able reference: settings, stain matrix (rows R, G, B; columns H, E), maxima."""
        return {
            "version": FORMAT_VERSION,
            "method": "macenko",
            "pathtrail_version": __version__,
            "io": self.io,
            "alpha": self.alpha,
            "beta": self.beta,
            "min_tissue_fraction": self.min_tissue_fraction,
            "fallback": self.fallback,
            "chunk_size": self.chunk_size,
            "stain_matrix": [[float(v) for v in row] for row in self.stain_matrix.tolist()],
            "max_concentrations": [float(v) for v in self.max_concentrations.tolist()],
            "reference_sha256": list(self.reference_sha256),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any], **overrides: Any) -> MacenkoNormalizer:
        """Rebuild from `to_dict` output; keys it does not know (e.g. fit_paths) are ignored.

        `overrides` replace the stored min_tissue_fraction / fallback / chunk_size.
        """
        missing = [k for k in ("version", "io", "alpha", "beta", "stain_matrix", "max_concentrations")
                   if k not in d]
        if missing:
            raise KeyError(f"stain reference is missing keys {missing}")
        if d["version"] != FORMAT_VERSION:
            raise ValueError(f"stain reference version {d['version']} is not {FORMAT_VERSION}")
        unknown = set(overrides) - {"min_tissue_fraction", "fallback", "chunk_size"}
        if unknown:
            raise TypeError(f"unknown overrides {sorted(unknown)}")
        settings = {k: d[k] for k in ("min_tissue_fraction", "fallback", "chunk_size") if k in d}
        norm = cls(io=d["io"], alpha=d["alpha"], beta=d["beta"], **{**settings, **overrides})
        stains = torch.tensor(d["stain_matrix"], dtype=torch.float64)
        maxima = torch.tensor(d["max_concentrations"], dtype=torch.float64)
        if stains.shape != (3, 2) or maxima.shape != (2,):
            raise ValueError("stain_matrix must be 3x2 and max_concentrations of length 2")
        norm.stain_matrix, norm.max_concentrations = stains, maxima
        norm.reference_sha256 = [str(h) for h in d.get("reference_sha256", [])]
        return norm

    # ----------------------------------------------------------------------------- normalize
    def normalize(self, batch: Array, return_concentrations: bool = False,
                  slide_ids: Sequence[Hashable] | None = None):
        """Normalize each patch with its own stain estimate.

        batch: uint8 (N, H, W, 3), numpy or torch; returns the same type, dtype, shape and device.
        With `return_concentrations`, returns (normalized, H, E), H and E float32 (N, H, W) in the
        reference's concentration scale.
        slide_ids: N hashable ids, one per patch, saying which patches share a slide; used by
        fallback="slide" (None: the whole batch is one slide), length-checked but otherwise
        ignored by the other fallbacks. A patch that falls back to its slide depends on all of that
        slide's patches in this batch, so pass whole slides, in a fixed order.
        """
        start = time.perf_counter()
        x = inputs.as_tensor(batch, ndim=4, what="batch")
        n, height, width, _ = x.shape
        ids = inputs.slide_id_list(slide_ids, n)
        flat = x.view(n, height * width, 3)
        out = torch.empty_like(flat)
        conc = torch.empty(2, n, height * width, dtype=torch.float32, device=x.device) \
            if return_concentrations else None
        slide_maps = self._slide_maps(flat, ids) if self.fallback == "slide" else None
        fallbacks = from_slide = exact = 0
        use_fast = conc is None and fast.usable(flat)
        for lo, hi in self._chunks(n, height * width, x.device, use_fast):
            bad, bad_slide, n_exact = self._normalize_chunk(
                flat[lo:hi], out[lo:hi], None if conc is None else conc[:, lo:hi], slide_maps, lo)
            fallbacks, from_slide, exact = fallbacks + bad, from_slide + bad_slide, exact + n_exact
        self.last_stats = {"patches": n, "fallback": fallbacks, "fallback_slide": from_slide}
        log.debug("stain.normalize", patches=n, fallback=fallbacks, fallback_slide=from_slide,
                  exact=exact, seconds=round(time.perf_counter() - start, 4))
        result = inputs.like(out.view(x.shape), batch)
        if conc is None:
            return result
        planes = conc.view(2, n, height, width)
        return result, inputs.like(planes[0], batch), inputs.like(planes[1], batch)

    def normalize_slide(self, batch: Array) -> Array:
        """Per-slide scope: one stain estimate from an evenly strided pixel sample of the whole
        batch (a slide), then the same fixed map for every patch (faster, and no per-patch
        variation). Falls back for the whole batch if the slide's estimate is unusable (there is
        no other slide estimate to use, so fallback="slide" acts as "reference" here)."""
        start = time.perf_counter()
        x = inputs.as_tensor(batch, ndim=4, what="batch")
        n, height, width, _ = x.shape
        flat = x.view(n, height * width, 3)
        out = torch.empty_like(flat)
        cache = self._cache(x.device)
        est = self._slide_estimate(flat, cache["scratch"])
        valid = bool(est.valid[0]) and n > 0
        if valid or self.fallback != "passthrough":
            unmix = est.unmix if valid else cache["ref_unmix"]
            max_conc = est.max_conc if valid else cache["ref_max"]
            od_map = ops.od_map(cache["ref_stains"], cache["ref_max"], unmix, max_conc)
            if bool(ops.tables_exact(od_map, cache["exact"][0])[0]):
                tables = ops.channel_tables(od_map, cache["lut"], self.io)[0]
                if fast.usable(flat):
                    fast.apply_fixed(flat, tables, out)
                else:
                    rg_table = ops.pair_table(tables)
                    for lo, hi in self._chunks(n, height * width, x.device):
                        planar = ops.to_planar(flat[lo:hi], cache["scratch"])
                        ops.apply_fixed(planar, rg_table, tables[2], out[lo:hi],
                                        cache["scratch"])
            else:  # outside the tables' 1-level bound (see ops.TABLE_LOG_BOUND)
                for i in range(n):
                    ops.apply_exact(flat[i], od_map[0], self.io, cache["exact"][1], out[i])
        else:
            out.copy_(flat)
        self.last_stats = {"patches": n, "fallback": 0 if valid else n, "fallback_slide": 0}
        log.debug("stain.normalize_slide", patches=n, fallback=self.last_stats["fallback"],
                  tissue_fraction=round(float(est.tissue_fraction[0]), 4),
                  seconds=round(time.perf_counter() - start, 4))
        return inputs.like(out.view(x.shape), batch)

    # ----------------------------------------------------------------------------- internals
    def _normalize_chunk(self, patches: Tensor, out: Tensor, conc: Tensor | None,
                         slide_maps: Callable[[int], tuple[Tensor, Tensor] | None] | None = None,
                         offset: int = 0) -> tuple[int, int, int]:
        """Normalize (m, P, 3) uint8 patches into `out`, their (2, m, P) concentrations into
        `conc` if given. `slide_maps(offset + i)` (fallback="slide") gives the slide estimate's
        (unmix, max_conc) for the chunk's patch i, or None if it is unusable. Returns (fallbacks,
        fallbacks that used their slide's estimate, patches evaluated by `ops.apply_exact`)."""
        cache = self._cache(patches.device)
        use_fast = conc is None and fast.usable(patches)
        planar, est, od = self._estimate(patches, cache["scratch"], use_fast)
        ok = est.valid
        m = ok.shape[0]
        fb_unmix, fb_max = cache["ref_unmix"].expand(m, 2, 3), cache["ref_max"].expand(m, 2)
        n_slide = 0
        bad_rows = (~ok).nonzero().squeeze(-1).tolist() if slide_maps is not None else []
        if bad_rows:
            fb_unmix, fb_max = fb_unmix.clone(), fb_max.clone()
            for i in bad_rows:
                slide = slide_maps(offset + i)  # estimated with its own scratch: ours stays intact
                if slide is not None:
                    fb_unmix[i], fb_max[i] = slide
                    n_slide += 1
        unmix = torch.where(ok[:, None, None], est.unmix, fb_unmix)
        max_conc = torch.where(ok[:, None], est.max_conc, fb_max)
        od_map = ops.od_map(cache["ref_stains"], cache["ref_max"], unmix, max_conc)
        if conc is not None:
            conc.copy_(est.conc)  # before the scratch buffers are reused
            bad = (~ok).nonzero().squeeze(-1)
            if len(bad):
                conc[:, bad] = ops.concentrations(od[:, bad], fb_unmix[bad], cache["scratch"],
                                                  "conc_ref")
            conc *= (cache["ref_max"] / max_conc).T.to(torch.float32).unsqueeze(-1)
        skip = ~ok if self.fallback == "passthrough" else None  # returned unchanged below
        if use_fast:
            n_exact = fast.apply_maps(patches, od_map, cache["lut"], self.io, out, cache["exact"],
                                      skip)
        else:
            n_exact = ops.apply_maps(patches, planar, od_map, cache["lut"], self.io, out,
                                     cache["scratch"], cache["exact"], skip)
        n_bad = int((~ok).sum())
        if n_bad and self.fallback == "passthrough":
            out[~ok] = patches[~ok]
        return n_bad, n_slide, n_exact

    def _slide_estimate(self, patches: Tensor, scratch: ops.Scratch) -> ops.StainEstimate:
        """One estimate (n = 1) for a slide's (n, P, 3) patches, from an evenly strided sample of
        their pixels: `normalize_slide`'s map and the "slide" fallback's."""
        return self._estimate(inputs.strided_sample(patches, SLIDE_SAMPLE_PIXELS), scratch)[1]

    def _slide_maps(self, flat: Tensor, ids: list[Hashable] | None
                    ) -> Callable[[int], tuple[Tensor, Tensor] | None]:
        """For fallback="slide": patch index -> its slide estimate's (unmix (2, 3), max_conc (2,)),
        or None if unusable. Each slide is estimated at most once per call, only when asked, from
        its own patches in batch order (never other slides', whatever the chunking)."""
        slide_of = ids if ids is not None else [0] * flat.shape[0]
        members: dict[Hashable, list[int]] = {}
        for i, sid in enumerate(slide_of):
            members.setdefault(sid, []).append(i)
        memo: dict[Hashable, tuple[Tensor, Tensor] | None] = {}

        def lookup(i: int) -> tuple[Tensor, Tensor] | None:
            sid = slide_of[i]
            if sid not in memo:
                rows = members[sid]
                if rows[-1] - rows[0] + 1 == len(rows):  # contiguous: a view, no copy
                    patches = flat[rows[0]:rows[-1] + 1]
                else:
                    patches = flat[torch.tensor(rows, device=flat.device)]
                est = self._slide_estimate(patches, self._cache(flat.device)["slide_scratch"])
                memo[sid] = (est.unmix[0], est.max_conc[0]) if bool(est.valid[0]) else None
                log.debug("stain.slide_fallback", slide=str(sid), patches=len(rows),
                          usable=memo[sid] is not None,
                          tissue_fraction=round(float(est.tissue_fraction[0]), 4))
            return memo[sid]

        return lookup

    def _estimate(self, patches: Tensor, scratch: ops.Scratch, use_fast: bool = True
                  ) -> tuple[Tensor | None, ops.StainEstimate, Tensor | None]:
        """(n, P, 3) uint8 -> planar indices (3, n, P), the stain estimate, OD (3, n, P); by
        `fast` where it serves the patches and `use_fast` (then without indices, OD nor
        per-pixel concentrations: the same estimate otherwise, bitwise)."""
        if use_fast and fast.usable(patches):
            cache = self._cache(patches.device)
            est = fast.estimate(patches, cache["lut"], cache["levels"], self.alpha,
                                self.min_tissue_fraction, scratch)[0]
            return None, est, None
        planar = ops.to_planar(patches, scratch)
        od = ops.optical_density(planar, self._cache(patches.device)["lut"], scratch)
        est = ops.estimate(od, self.alpha, self.beta, self.min_tissue_fraction, scratch)
        return planar, est, od

    def _chunks(self, n: int, npix: int, device: torch.device, use_fast: bool = False
                ) -> list[tuple[int, int]]:
        cap = FAST_CHUNK_PIXELS if use_fast else CHUNK_PIXELS if device.type == "cpu" \
            else GPU_CHUNK_PIXELS
        step = max(1, min(self.chunk_size, cap // max(npix, 1)))
        return [(lo, min(lo + step, n)) for lo in range(0, n, step)]

    def _cache(self, device: torch.device) -> dict[str, Any]:
        """Reference tensors and look-up tables on `device` (rebuilt after `fit`)."""
        if device not in self._device_cache:
            lut = ops.od_lut(self.io, device)
            stains = self.stain_matrix.to(device)
            self._device_cache[device] = {
                "lut": lut,
                "exact": (ops.table_bounds(lut, self.io), ops.log_levels(device)),
                "levels": fast.tissue_levels(lut.cpu(), self.beta),
                "ref_stains": stains.unsqueeze(0),
                "ref_max": self.max_concentrations.to(device).unsqueeze(0),
                "ref_unmix": ops.unmixing_matrix(stains.unsqueeze(0)),
                "scratch": ops.Scratch(),
                "slide_scratch": ops.Scratch(),  # the "slide" fallback's, beside a chunk's
            }
        return self._device_cache[device]

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_device_cache": {}}
