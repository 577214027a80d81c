"""Synthetic morphology findings for the multi-label demo (`data.demo.findings`).

Each finding is a visible pattern added to a rendered patch in optical density (Beer-Lambert, on
top of the stains already there, with the slide's own stain vectors), so a small CNN can learn it:

- `lymphocytes`: a cluster of small, round, dense hematoxylin nuclei;
- `fibrosis`: thick parallel eosin bands across the patch;
- `haemorrhage`: scattered red blood cells (small discs absorbing green and blue).

Presence is drawn per patch around a per-patient propensity (findings cluster within patients,
as the patient-clustered CIs expect), from generators keyed on (seed, purpose, cohort, site,
patient, item, finding): the binary demo never draws them, so its bytes are unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

FINDINGS = ("lymphocytes", "fibrosis", "haemorrhage")
_FINDING = 4  # purpose tag (demo.py uses 0..3)
RBC_OD = np.array([0.08, 0.80, 0.59])  # red cells: green and blue absorbed, red passed


def check_findings(names: Sequence[str]) -> None:
    unknown = [n for n in names if n not in FINDINGS]
    if unknown or len(set(names)) != len(names):
        raise ValueError(f"data.demo.findings {list(names)!r}: each at most once, from {', '.join(FINDINGS)}")


def finding_rng(seed: int, *key: int) -> np.random.Generator:
    return np.random.default_rng([seed, _FINDING, *key])


def patient_propensities(seed: int, key: tuple[int, ...], patient: int, names: Sequence[str]) -> list[float]:
    """Per finding, the probability that one of this patient's patches shows it."""
    out = []
    for k, _ in enumerate(names):
        rng = finding_rng(seed, *key, patient, 1 << 20, k)
        out.append(0.65 if rng.random() < 0.4 else 0.08)
    return out


def draw_present(seed: int, key: tuple[int, ...], patient: int, item: int,
                 propensities: Sequence[float]) -> tuple[int, ...]:
    return tuple(int(finding_rng(seed, *key, patient, item, k).random() < p) for k, p in enumerate(propensities))


def _discs(size: int, centres: np.ndarray, radius: float) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size]
    d2 = (yy[None] - centres[:, 0, None, None]) ** 2 + (xx[None] - centres[:, 1, None, None]) ** 2
    return np.clip((radius - np.sqrt(d2)) / 0.6 + 0.5, 0, 1).max(axis=0) if len(centres) else np.zeros((size, size))


def finding_od(name: str, rng: np.random.Generator, size: int, h_vec: np.ndarray,
               e_vec: np.ndarray) -> np.ndarray:
    """The (size, size, 3) optical density one finding adds."""
    scale = size / 64
    if name == "lymphocytes":
        centre = rng.uniform(0.25, 0.75, 2) * size
        pts = centre + rng.normal(0, 9 * scale, (int(rng.integers(18, 30)), 2))
        return (1.5 * _discs(size, pts, 1.7 * scale))[..., None] * h_vec
    if name == "fibrosis":
        yy, xx = np.mgrid[0:size, 0:size] / size
        angle = rng.uniform(0, np.pi)
        phase = rng.uniform(0, 2 * np.pi)
        bands = np.sin(2 * np.pi * 4 * (xx * np.cos(angle) + yy * np.sin(angle)) + phase) > 0.3
        return (1.1 * bands.astype(float))[..., None] * e_vec
    if name == "haemorrhage":
        pts = rng.uniform(0, size, (int(rng.integers(25, 40)), 2))
        return (1.3 * _discs(size, pts, 2.3 * scale))[..., None] * RBC_OD
    raise ValueError(f"unknown finding {name!r}")


def paint(image: np.ndarray, present: Sequence[int], names: Sequence[str], rng_of, h_vec: np.ndarray,
          e_vec: np.ndarray) -> np.ndarray:
    """`image` (uint8) with the present findings added; `rng_of(k)` gives finding k's generator."""
    if not any(present):
        return image
    od = np.zeros(image.shape, dtype=np.float64)
    for k, (name, on) in enumerate(zip(names, present, strict=True)):
        if on:
            od += finding_od(name, rng_of(k), image.shape[0], h_vec, e_vec)
    return np.clip(np.rint(image * np.exp(-od)), 0, 255).astype(np.uint8)
