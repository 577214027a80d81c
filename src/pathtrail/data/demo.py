"""Seeded synthetic H&E patches: the built-in demo dataset.

Stain model (Beer–Lambert): a pixel's optical density is the sum of two stains, each a unit OD
vector scaled by its concentration, ``OD = c_H * h_vec + c_E * e_vec``, and the scanner records
``I = Io * exp(-OD)`` with ``Io`` the (near-white, 240-255) illumination. Every site has its own
protocol (stain vectors, stain intensities, illumination; the external site also a blurrier
scanner) and every slide a small jitter of it, so colour depends on site and slide only.

The label (0 benign, 1 tumour) lives in morphology only: a latent severity, drawn per patient from
overlapping class distributions and per patch around it, sets nuclear density, size,
pleomorphism, elongation, contour irregularity and chromatin pattern.

Every random draw comes from a generator keyed by ``(seed, purpose, cohort, site, patient, item)``,
so the output is bit-identical across runs and independent of iteration order.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd
import structlog
from PIL import Image

from pathtrail.config.sections import DemoParams, site_prefix
from pathtrail.data import demo_findings as F

log = structlog.get_logger(__name__)

COHORTS = ("internal", "external")
MANIFEST_COLUMNS = ["path", "label", "patient_id", "slide_id", "site"]
# Base OD vectors. Hematoxylin: Ruifrok & Johnston's. Eosin: the one Macenko's method measures on
# real H&E (torchstain's reference), redder and bluer than Ruifrok's pure eosin (0.07, 0.99, 0.11):
# stroma stained with pure eosin has red and blue OD below the usual tissue threshold beta = 0.15,
# which no real slide shows and which would make Macenko treat stroma as background.
H_BASE = np.array([0.65, 0.70, 0.29])
E_BASE = np.array([0.2159, 0.8012, 0.5581])
PNG_COMPRESS_LEVEL = 6
_SITE, _PATIENT, _SLIDE, _PATCH = range(4)  # purpose tags of the keyed generators


@dataclass(frozen=True)
class DemoPatch:
    relpath: str
    label: int
    patient_id: str
    slide_id: str
    site: str
    image: np.ndarray  # uint8 (H, W, 3)
    findings: tuple[int, ...] = ()  # 0/1 per data.demo.findings (multi-label demo only)


@dataclass(frozen=True)
class StainProtocol:
    h_vec: np.ndarray  # unit OD vector of hematoxylin
    e_vec: np.ndarray  # unit OD vector of eosin
    h_scale: float
    e_scale: float
    io: np.ndarray  # (3,) illumination
    blur_sigma: float  # scanner point spread, pixels


def _rng(
    seed: int, purpose: int, cohort: int, site: int, patient: int = 0, item: int = 0
) -> np.random.Generator:
    return np.random.default_rng([seed, purpose, cohort, site, patient, item])


def _unit(v: np.ndarray) -> np.ndarray:
    v = np.clip(v, 0.01, None)
    return v / np.linalg.norm(v)


def site_protocol(rng: np.random.Generator, external: bool) -> StainProtocol:
    """Internal sites: modest variations of the base vectors; external: a clearly other protocol."""
    if external:  # darker, bluer hematoxylin, purple-shifted intense eosin, blurrier scanner
        h = H_BASE + [0.20, -0.05, -0.12] + rng.normal(0, 0.02, 3)
        e = E_BASE + [0.30, -0.05, 0.30] + rng.normal(0, 0.02, 3)
        h_scale, e_scale = rng.uniform(1.30, 1.45), rng.uniform(1.55, 1.75)
        io, blur = rng.uniform(241, 245) + np.array([-1.0, -1.0, 5.0]), 0.9  # bluish white
    else:
        h, e = H_BASE + rng.normal(0, 0.05, 3), E_BASE + rng.normal(0, 0.05, 3)
        h_scale, e_scale = rng.uniform(0.85, 1.15), rng.uniform(0.85, 1.15)
        io, blur = rng.uniform(246, 253) + rng.normal(0, 1.5, 3), 0.0
    return StainProtocol(_unit(h), _unit(e), h_scale, e_scale, np.clip(io, 240, 255), blur)


def slide_protocol(site: StainProtocol, rng: np.random.Generator) -> StainProtocol:
    """Per-slide jitter: small vector shifts, staining-batch intensity, lamp brightness."""
    return StainProtocol(
        h_vec=_unit(site.h_vec + rng.normal(0, 0.015, 3)),
        e_vec=_unit(site.e_vec + rng.normal(0, 0.015, 3)),
        h_scale=site.h_scale * rng.uniform(0.9, 1.1),
        e_scale=site.e_scale * rng.uniform(0.85, 1.15),
        io=np.clip(site.io + rng.normal(0, 1.0), 240, 255),
        blur_sigma=site.blur_sigma,
    )


@lru_cache(maxsize=16)
def _upsampler(size: int, grid: int) -> np.ndarray:
    """(size, grid + 1) bilinear interpolation matrix from a coarse grid to `size` pixels."""
    pos = np.linspace(0, grid, size)
    matrix = np.maximum(0, 1 - np.abs(pos[:, None] - np.arange(grid + 1)[None, :]))
    matrix.flags.writeable = False  # shared through the cache
    return matrix


def _smooth_noise(rng: np.random.Generator, size: int, grid: int) -> np.ndarray:
    """Smooth value noise, roughly zero-mean unit-variance, features ~size/grid pixels."""
    up = _upsampler(size, grid)
    field = up @ rng.standard_normal((grid + 1, grid + 1)) @ up.T
    return (field - field.mean()) / (field.std() + 1e-8)


def _gaussian_blur(img: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur of an (H, W, C) float image with reflected borders."""
    radius = max(1, int(np.ceil(3 * sigma)))
    kernel = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    kernel /= kernel.sum()
    for axis in (0, 1):
        pad = [(0, 0)] * img.ndim
        pad[axis] = (radius, radius)
        padded, n = np.pad(img, pad, mode="reflect"), img.shape[axis]
        img = sum(w * np.take(padded, np.arange(i, i + n), axis=axis) for i, w in enumerate(kernel))
    return img


def nuclei_layers(
    rng: np.random.Generator, size: int, severity: float, tissue: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Hematoxylin concentration of the nuclei and their soft mask, both (size, size)."""
    scale = size / 64
    n = rng.poisson((12 + 9 * severity) * scale**2 * tissue.mean())
    if n == 0:
        return np.zeros((size, size)), np.zeros((size, size))
    centre = rng.choice(size * size, n, p=(tissue / tissue.sum()).ravel())
    cy, cx = np.divmod(centre, size) + rng.uniform(0, 1, (2, n))
    radius = (2.3 + 1.5 * severity) * scale * rng.lognormal(0, 0.06 + 0.30 * severity, n)
    elong = 1 + np.abs(rng.normal(0, 0.08 + 0.55 * severity, n))
    a, b = radius * np.sqrt(elong), radius / np.sqrt(elong)
    theta = rng.uniform(0, np.pi, n)
    amp = rng.normal(0, 0.02 + 0.10 * severity, (n, 3))
    phase = rng.uniform(0, 2 * np.pi, (n, 3))
    density = np.clip(2.05 - 0.95 * severity + rng.normal(0, 0.12, n), 1.0, 2.3)
    vesicular = np.clip(0.9 * severity + rng.normal(0, 0.1, n), 0, 0.75)
    nucleolus = rng.random(n) < 0.7 * severity**2

    # each nucleus is drawn in its own small window, then max-composited onto the canvas
    half = int(np.ceil(a.max() * (1 + 3 * np.abs(amp).max()) + 2))
    offsets = np.arange(-half, half + 1)
    iy, ix = np.floor(cy).astype(int), np.floor(cx).astype(int)
    dy = (iy[:, None] + offsets - cy[:, None])[:, :, None]
    dx = (ix[:, None] + offsets - cx[:, None])[:, None, :]
    cos, sin = np.cos(theta)[:, None, None], np.sin(theta)[:, None, None]
    u = (dx * cos + dy * sin) / a[:, None, None]
    v = (dy * cos - dx * sin) / b[:, None, None]
    r = np.sqrt(u**2 + v**2)
    z = (u + 1j * v) / np.maximum(r, 1e-6)  # e^{i phi}; harmonics as powers avoid trig
    rot = np.exp(1j * phase)
    contour = 1 + sum(
        amp[:, k, None, None] * (z ** (k + 2) * rot[:, k, None, None]).real for k in range(3)
    )
    edge = np.clip((contour - r) * radius[:, None, None] / 0.45, -30, 30)
    mask = 1 / (1 + np.exp(-edge))
    chromatin = 1 - vesicular[:, None, None] * np.exp(-((r / 0.65) ** 2))  # pale open centre
    chromatin += nucleolus[:, None, None] * 0.9 * np.exp(-(dx**2 + dy**2) / (0.9 * scale) ** 2)
    conc = mask * chromatin * density[:, None, None]
    rows = np.broadcast_to((iy[:, None] + offsets + half)[:, :, None], mask.shape)
    cols = np.broadcast_to((ix[:, None] + offsets + half)[:, None, :], mask.shape)
    layers = np.zeros((2, size + 2 * half, size + 2 * half))
    np.maximum.at(layers[0], (rows, cols), conc)
    np.maximum.at(layers[1], (rows, cols), mask)
    return layers[0, half:-half, half:-half], layers[1, half:-half, half:-half]


def render_patch(
    rng: np.random.Generator, size: int, severity: float, protocol: StainProtocol
) -> np.ndarray:
    """One (size, size, 3) uint8 H&E patch: stroma, nuclei, background gaps, noise."""
    bg_frac = 0.0 if rng.random() < 0.4 else rng.uniform(0.05, 0.5)
    gaps = _smooth_noise(rng, size, 3)
    threshold = np.quantile(gaps, 1 - bg_frac) if bg_frac else np.inf
    tissue = np.clip((threshold - gaps) / 0.15 + 0.5, 0, 1)
    texture = _smooth_noise(rng, size, 5) + 0.5 * _smooth_noise(rng, size, 12)
    yy, xx = np.mgrid[0:size, 0:size] / size
    angle = rng.uniform(0, np.pi)
    waves = rng.uniform(5, 9) * 2 * np.pi * (xx * np.cos(angle) + yy * np.sin(angle))
    fibres = ((1 + np.sin(waves + 2.5 * _smooth_noise(rng, size, 3))) / 2) ** 4
    e_level = rng.uniform(0.3, 0.7)
    c_e = e_level * np.clip(0.85 + 0.15 * texture + rng.uniform(0.05, 0.3) * fibres, 0.2, None)
    c_h = rng.uniform(0.02, 0.22) * np.clip(1 + 0.3 * _smooth_noise(rng, size, 16), 0, None)
    nuc_h, nuc_mask = nuclei_layers(rng, size, severity, tissue)
    # label-independent per-patch nuisance (section thickness, uneven staining) keeps mean
    # colour from tracking the nuclear load
    amount = rng.uniform(0.75, 1.25) * tissue
    c_h = (c_h * (1 - nuc_mask) + nuc_h) * amount * protocol.h_scale * rng.uniform(0.75, 1.25)
    c_e = c_e * (1 - 0.75 * nuc_mask) * amount * protocol.e_scale
    od = c_h[..., None] * protocol.h_vec + c_e[..., None] * protocol.e_vec
    img = protocol.io * np.exp(-od)
    if protocol.blur_sigma > 0:
        img = _gaussian_blur(img, protocol.blur_sigma)
    img = img + rng.normal(0, 2.0, img.shape)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def _site_patches(params: DemoParams, cohort: int, site: str, n_patients: int) -> list[DemoPatch]:
    # keyed by the site's name, so a site's patches do not depend on which other sites exist
    key = (cohort, zlib.crc32(site.encode()))
    base = site_protocol(_rng(params.seed, _SITE, *key), external=cohort == 1)
    label_draws = [_rng(params.seed, _PATIENT, *key, p).random() for p in range(n_patients)]
    labels = [int(d < 0.5) for d in label_draws]
    if len(set(labels)) == 1:  # guarantee both classes: flip the least decided patient
        flip = int(np.argmin(np.abs(np.array(label_draws) - 0.5)))
        labels[flip] = 1 - labels[flip]
    prefix, patches = site_prefix(site), []
    for p, label in enumerate(labels):
        rng = _rng(params.seed, _PATIENT, *key, p)
        rng.random()  # the label draw
        severity = rng.normal(0.70 if label else 0.30, 0.13)
        n_slides = min(
            int(rng.integers(1, params.max_slides_per_patient + 1)), params.patches_per_patient
        )
        slide_of = rng.permutation(np.arange(params.patches_per_patient) % n_slides)
        slides = [
            slide_protocol(base, _rng(params.seed, _SLIDE, *key, p, s)) for s in range(n_slides)
        ]
        patient_id = f"{prefix}-P{p:04d}"
        names = params.findings
        prone = F.patient_propensities(params.seed, key, p, names) if names else []
        for j, s in enumerate(slide_of):
            prng = _rng(params.seed, _PATCH, *key, p, j)
            sev = float(np.clip(severity + prng.normal(0, 0.12), 0, 1))
            slide_id = f"{patient_id}-S{s + 1}"
            image = render_patch(prng, params.patch_size, sev, slides[s])
            present = F.draw_present(params.seed, key, p, j, prone) if names else ()
            if names:
                def rng_of(k: int, j: int = j, p: int = p) -> np.random.Generator:
                    return F.finding_rng(params.seed, *key, p, j, k, 1)
                image = F.paint(image, present, names, rng_of, slides[s].h_vec, slides[s].e_vec)
            patches.append(
                DemoPatch(
                    relpath=f"{COHORTS[cohort]}/{site}/{patient_id}/{slide_id}_{j:04d}.png",
                    label=label,
                    patient_id=patient_id,
                    slide_id=slide_id,
                    site=site,
                    image=image,
                    findings=present,
                )
            )
    return patches


def generate_cohorts(params: DemoParams) -> dict[str, list[DemoPatch]]:
    """All demo patches, keyed "internal" and "external"; pure and deterministic."""
    F.check_findings(params.findings)
    internal = [
        patch
        for site in params.internal_sites
        for patch in _site_patches(params, 0, site, params.patients_per_site)
    ]
    external = _site_patches(params, 1, params.external_site, params.external_patients)
    log.info("demo.generated", internal=len(internal), external=len(external), seed=params.seed)
    return {"internal": internal, "external": external}


def write_cohorts(cohorts: dict[str, list[DemoPatch]], root: Path,
                  findings: list[str] | tuple[str, ...] = ()) -> dict[str, pd.DataFrame]:
    """Write every patch as a PNG under root/<relpath>; one manifest per cohort, sorted by path
    (with one 0/1 column per finding of the multi-label demo after the five columns)."""
    root = Path(root)
    manifests = {}
    for name, patches in cohorts.items():
        for patch in patches:
            path = root / patch.relpath
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(patch.image).save(path, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
        rows = [(p.relpath, int(p.label), p.patient_id, p.slide_id, p.site) for p in patches]
        frame = pd.DataFrame(rows, columns=MANIFEST_COLUMNS).astype({"label": "int64"})
        for k, finding in enumerate(findings):
            frame[finding] = np.array([p.findings[k] for p in patches], dtype=np.int64)
        manifests[name] = frame.sort_values("path", ignore_index=True)
        log.info("demo.written", cohort=name, patches=len(patches), root=str(root))
    return manifests
