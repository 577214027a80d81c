"""A synthetic H&E cohort of any size, fast: whole slides rendered at once with vectorised NumPy.

The same Beer–Lambert stain model as `pathtrail.data.demo` (site protocols with per-slide jitter,
via its `site_protocol` / `slide_protocol`), with a cheaper morphology: nuclei are a thresholded
smooth noise field whose density follows a per-patient severity, so the label is learnable but no
per-nucleus drawing is needed. Every draw comes from a generator keyed by (seed, purpose, slide),
so the cohort is bit-identical for a seed and does not depend on the number of writer threads.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from functools import cache
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from pathtrail.data.demo import site_protocol, slide_protocol

INTERNAL_SITES = ("site_a", "site_b", "site_c")
EXTERNAL_SITE = "site_d"
PATCHES_PER_PATIENT = 20
SLIDES_PER_PATIENT = 2
EXTERNAL_EVERY = 5  # every fifth patient is external: 20 % of the patches
_SITE, _PATIENT, _SLIDE = range(3)


@cache
def _upsampler(size: int, grid: int) -> np.ndarray:
    pos = np.linspace(0, grid, size)
    return np.maximum(0, 1 - np.abs(pos[:, None] - np.arange(grid + 1)[None, :]))


def _noise(rng: np.random.Generator, n: int, size: int, grid: int) -> np.ndarray:
    """(n, size, size) smooth value noise, zero-mean unit-variance per patch."""
    up = _upsampler(size, grid)
    field = up @ rng.standard_normal((n, grid + 1, grid + 1)) @ up.T
    flat = field.reshape(n, -1)
    return ((flat - flat.mean(1, keepdims=True)) / (flat.std(1, keepdims=True) + 1e-8)).reshape(field.shape)


def render_slide(rng: np.random.Generator, protocol, severity: float, n: int, size: int) -> np.ndarray:
    """n (size, size, 3) uint8 patches of one slide."""
    gaps = _noise(rng, n, size, 3)
    background = np.where(rng.random(n) < 0.4, 0.0, rng.uniform(0.05, 0.4, n))
    ranked = np.sort(gaps.reshape(n, -1), axis=1)
    cut = ranked[np.arange(n), ((1 - background) * (size * size - 1)).astype(int)]
    cut = np.where(background > 0, cut, np.inf)[:, None, None]
    tissue = np.clip((cut - gaps) / 0.15 + 0.5, 0, 1)
    sev = np.clip(severity + rng.normal(0, 0.1, n), 0, 1)[:, None, None]
    nuclei = 1 / (1 + np.exp(-(_noise(rng, n, size, 14) - (1.7 - 1.4 * sev)) / 0.12))
    c_h = (rng.uniform(0.02, 0.2, (n, 1, 1)) + 1.6 * nuclei) * tissue * protocol.h_scale
    c_e = rng.uniform(0.3, 0.7, (n, 1, 1)) * (0.85 + 0.15 * _noise(rng, n, size, 5)) * (1 - 0.7 * nuclei)
    c_e = c_e * tissue * protocol.e_scale
    od = (c_h[..., None] * protocol.h_vec + c_e[..., None] * protocol.e_vec).astype(np.float32)
    img = protocol.io.astype(np.float32) * np.exp(-od) + 2 * rng.standard_normal(od.shape, dtype=np.float32)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def cohort_rows(n_patches: int) -> pd.DataFrame:
    """Who is who: one row per patch (path, label, patient_id, slide_id, site, cohort, slide number)."""
    patch = np.arange(n_patches)
    patient = patch // PATCHES_PER_PATIENT
    slide = patient * SLIDES_PER_PATIENT + (patch % PATCHES_PER_PATIENT) * SLIDES_PER_PATIENT // PATCHES_PER_PATIENT
    external = patient % EXTERNAL_EVERY == EXTERNAL_EVERY - 1
    internal_rank = patient - (patient + 1) // EXTERNAL_EVERY
    site = np.where(external, EXTERNAL_SITE, np.array(INTERNAL_SITES)[internal_rank % len(INTERNAL_SITES)])
    patient_id = [f"{s.removeprefix('site_')}-P{p:06d}" for s, p in zip(site, patient, strict=True)]
    slide_id = [f"{pid}-S{s % SLIDES_PER_PATIENT + 1}" for pid, s in zip(patient_id, slide, strict=True)]
    cohort = np.where(external, "external", "internal")
    path = [f"{c}/{s}/{pid}/{sid}_{i:07d}.png" for c, s, pid, sid, i in
            zip(cohort, site, patient_id, slide_id, patch, strict=True)]
    return pd.DataFrame({"path": path, "patient_id": patient_id, "slide_id": slide_id, "site": site,
                         "cohort": cohort, "patient": patient, "slide": slide})


def write_cohort(root: Path, n_patches: int, seed: int, size: int = 64, workers: int = 2) -> dict[str, Path]:
    """Write the PNGs and internal.csv / external.csv under `root`; returns the manifests' paths."""
    rows = cohort_rows(n_patches)
    sites = {s: site_protocol(np.random.default_rng([seed, _SITE, i]), s == EXTERNAL_SITE)
             for i, s in enumerate((*INTERNAL_SITES, EXTERNAL_SITE))}
    labels = {p: int(np.random.default_rng([seed, _PATIENT, p]).random() < 0.5) for p in rows.patient.unique()}
    rows["label"] = rows.patient.map(labels).astype("int64")
    for folder in {str(Path(p).parent) for p in rows.path}:
        (root / folder).mkdir(parents=True, exist_ok=True)

    def write_slide(group: pd.DataFrame) -> None:
        first = group.iloc[0]
        rng = np.random.default_rng([seed, _SLIDE, int(first.slide)])
        protocol = slide_protocol(sites[first.site], rng)
        severity = rng.normal(0.7 if first.label else 0.3, 0.12)
        images = render_slide(rng, protocol, severity, len(group), size)
        for rel, image in zip(group.path, images, strict=True):
            Image.fromarray(image).save(root / rel, format="PNG", compress_level=6)

    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(write_slide, (g for _, g in rows.groupby("slide", sort=True))))
    manifests = {}
    for cohort in ("internal", "external"):
        part = rows[rows.cohort == cohort][["path", "label", "patient_id", "slide_id", "site"]]
        manifests[cohort] = root / f"{cohort}.csv"
        part.sort_values("path").to_csv(manifests[cohort], index=False)
    return manifests
