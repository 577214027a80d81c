"""Drift of a new cohort against the model's training reference and internal test set (pure).

Three kinds of evidence, each a check with its value, its limit (params section `drift`) and a
verdict; any check over its limit makes the report's verdict DRIFT:
- the prediction scores (positive-class probability; K > 2 classes: the top probability) against
  the internal test set's: the population stability index over `score_bins` equal bins of [0, 1]
  (empty bins floored at 1e-4) and the two-sample Kolmogorov-Smirnov statistic;
- the stain: a Macenko fit on a sample of the cohort's raw patches, with the card's stain settings,
  against the stain reference: the angle between the H (and the E) vectors, and the ratio of the
  99th-percentile concentration maxima; plus the percentiles of the H and E concentrations of the
  sample, unmixed with the reference's stain vectors (tissue pixels only), for both sides;
- the RGB intensities: `intensity_bins` histograms per channel against those of the reference's
  own fit patches (when they are at hand, each checked against the reference's image hashes).
Tested on a shifted cohort against an unshifted one (tests/unit/test_drift.py).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from pathtrail.config.sections import DriftParams, StainParams
from pathtrail.stain import MacenkoNormalizer

PSI_FLOOR = 1e-4
CONC_PIXELS = 1 << 20
PERCENTILES = (1, 5, 25, 50, 75, 95, 99)
DRIFT, NO_DRIFT = "DRIFT", "NO DRIFT"


def histogram(values: np.ndarray, bins: int, low: float, high: float) -> np.ndarray:
    """Fractions of `values` in `bins` equal bins of [low, high] (the last bin closed)."""
    counts, _ = np.histogram(np.asarray(values, dtype=np.float64), bins=bins, range=(low, high))
    total = counts.sum()
    return counts / total if total else counts.astype(np.float64)


def psi(expected: np.ndarray, actual: np.ndarray) -> float:
    """Population stability index of two histograms (fractions): sum (a - e) ln(a / e)."""
    e, a = np.maximum(expected, PSI_FLOOR), np.maximum(actual, PSI_FLOOR)
    return math.fsum(((a - e) * np.log(a / e)).tolist())  # exact: no summation order to vary


def ks_statistic(a: np.ndarray, b: np.ndarray) -> float:
    """The two-sample Kolmogorov-Smirnov statistic: the largest gap between the two ECDFs."""
    a, b = np.sort(np.asarray(a, np.float64)), np.sort(np.asarray(b, np.float64))
    if not len(a) or not len(b):
        return float("nan")
    grid = np.concatenate([a, b])
    gap = np.searchsorted(a, grid, side="right") / len(a) - np.searchsorted(b, grid, side="right") / len(b)
    return float(np.abs(gap).max())


def check(name: str, value: float | None, limit: float, why: str = "") -> dict[str, Any]:
    """One check: over its limit (or not computable for a reason that is itself a shift) is drift."""
    bad = value is None or not math.isfinite(value)
    return {"name": name, "value": None if bad else float(value), "limit": float(limit),
            "drift": bool(bad and why.startswith("!")) or (not bad and value > limit),
            "note": why.lstrip("!") if bad else ""}


def score_section(new: np.ndarray, reference: np.ndarray | None, params: DriftParams) -> dict[str, Any]:
    """Both score histograms, means, PSI and KS (None without reference scores)."""
    new_hist = histogram(new, params.score_bins, 0.0, 1.0)
    ref_hist = histogram(reference, params.score_bins, 0.0, 1.0) if reference is not None else None

    def mean(x: np.ndarray | None) -> float | None:
        return math.fsum(np.asarray(x, np.float64).tolist()) / len(x) if x is not None and len(x) else None

    return {"n_new": len(new), "n_reference": 0 if reference is None else len(reference),
            "bins": np.linspace(0.0, 1.0, params.score_bins + 1).tolist(),
            "reference_histogram": None if ref_hist is None else ref_hist.tolist(), "new_histogram": new_hist.tolist(),
            "new_mean": mean(new), "reference_mean": mean(reference),
            "psi": None if ref_hist is None else psi(ref_hist, new_hist),
            "ks": None if reference is None else ks_statistic(reference, new)}


def concentrations(images: list[np.ndarray], stains: np.ndarray, io: float, beta: float) -> dict[str, Any]:
    """Percentiles of the H and E concentrations of tissue pixels (every channel OD >= beta), at
    most CONC_PIXELS of them (evenly strided), unmixed by least squares with `stains` (3 x 2,
    columns H and E) in float64, element by element (no BLAS call whose summation order varies)."""
    pixels = np.concatenate([img.reshape(-1, 3) for img in images])
    pixels = pixels[:: max(1, math.ceil(len(pixels) / CONC_PIXELS))].astype(np.float64)
    od = -np.log((pixels + 1.0) / io)
    tissue = od[(od >= beta).all(axis=1)]
    if not len(tissue):
        return {"tissue_pixels": 0, "H": None, "E": None}
    s = np.asarray(stains, np.float64)
    a, b, d = (math.fsum((s[:, i] * s[:, j]).tolist()) for i, j in ((0, 0), (0, 1), (1, 1)))
    det = a * d - b * b
    unmix = [[(d * s[c, 0] - b * s[c, 1]) / det for c in range(3)],
             [(a * s[c, 1] - b * s[c, 0]) / det for c in range(3)]]  # (S^T S)^-1 S^T
    conc = [u[0] * tissue[:, 0] + u[1] * tissue[:, 1] + u[2] * tissue[:, 2] for u in unmix]
    return {"tissue_pixels": len(tissue),
            **{stain: dict(zip(map(str, PERCENTILES), np.percentile(conc[k], PERCENTILES).tolist(), strict=True))
               for k, stain in enumerate(("H", "E"))}}


def intensities(images: list[np.ndarray], bins: int) -> list[list[float]]:
    """Per RGB channel, the fractions of pixel values in `bins` equal bins of 0..255."""
    pixels = np.concatenate([img.reshape(-1, 3) for img in images])
    return [histogram(pixels[:, c], bins, 0.0, 256.0).tolist() for c in range(3)]


def angle(u: np.ndarray, v: np.ndarray) -> float:
    cos = abs(float(np.dot(u, v))) / (float(np.linalg.norm(u)) * float(np.linalg.norm(v)))
    return math.degrees(math.acos(min(1.0, cos)))


def stain_section(images: list[np.ndarray], reference_images: list[np.ndarray] | None, reference: dict[str, Any],
                  stain: StainParams, params: DriftParams) -> dict[str, Any]:
    """The cohort's stain vectors, maxima, concentration percentiles and intensity histograms, and the
    reference's (its fit patches' percentiles and histograms only when they are given)."""
    ref_stains = np.asarray(reference["stain_matrix"], np.float64)
    out: dict[str, Any] = {"reference": {"stain_matrix": ref_stains.tolist(),
                                         "max_concentrations": list(reference["max_concentrations"])},
                           "new": {"patches": len(images)}}
    try:
        fitted = MacenkoNormalizer(io=stain.io, alpha=stain.alpha, beta=stain.beta,
                                   min_tissue_fraction=stain.min_tissue_fraction).fit(images)
        out["new"] |= {"stain_matrix": fitted.stain_matrix.tolist(),
                       "max_concentrations": fitted.max_concentrations.tolist()}
    except ValueError as exc:
        out["new"]["fit_problem"] = str(exc)
    out["new"]["concentrations"] = concentrations(images, ref_stains, stain.io, stain.beta)
    out["new"]["intensity_histograms"] = intensities(images, params.intensity_bins)
    if reference_images:
        out["reference"]["patches"] = len(reference_images)
        out["reference"]["concentrations"] = concentrations(reference_images, ref_stains, stain.io, stain.beta)
        out["reference"]["intensity_histograms"] = intensities(reference_images, params.intensity_bins)
    return out


def stain_checks(section: dict[str, Any], params: DriftParams, reference_note: str) -> list[dict[str, Any]]:
    new, ref = section["new"], section["reference"]
    checks = []
    unusable = "!no usable H&E staining could be estimated on the cohort's patches"
    for k, name in enumerate(("H", "E")):
        value = None
        ratio = None
        if "stain_matrix" in new:
            value = angle(np.asarray(new["stain_matrix"])[:, k], np.asarray(ref["stain_matrix"])[:, k])
            r = new["max_concentrations"][k] / ref["max_concentrations"][k]
            ratio = max(r, 1 / r) if r > 0 else float("inf")
        checks.append(check(f"stain_angle_{name}", value, params.stain_angle_max, unusable))
        checks.append(check(f"concentration_ratio_{name}", ratio, params.concentration_ratio_max,
                            unusable if ratio is None else "!a maximum concentration is not positive"))
    for c, channel in enumerate("RGB"):
        if "intensity_histograms" in ref:
            value = psi(np.asarray(ref["intensity_histograms"][c]), np.asarray(new["intensity_histograms"][c]))
            checks.append(check(f"intensity_psi_{channel}", value, params.intensity_psi_max))
        else:
            checks.append(check(f"intensity_psi_{channel}", None, params.intensity_psi_max, reference_note))
    return checks


def drift_report(new_scores: np.ndarray, reference_scores: np.ndarray | None, images: list[np.ndarray],
                 reference_images: list[np.ndarray] | None, reference: dict[str, Any], stain: StainParams,
                 params: DriftParams, *, reference_note: str = "", scores_note: str = "") -> dict[str, Any]:
    """The report: the score and stain sections, every check, and the verdict (JSON-ready). Without
    reference scores (or patches) those checks are listed as not computed, with `scores_note`
    (`reference_note`) saying why."""
    scores = score_section(new_scores, reference_scores, params)
    stains = stain_section(images, reference_images, reference, stain, params)
    why = scores_note or "no internal test scores to compare with"
    checks = [check("score_psi", scores["psi"], params.score_psi_max, why),
              check("score_ks", scores["ks"], params.score_ks_max, why),
              *stain_checks(stains, params, reference_note or "the reference's fit patches are not at hand")]
    drifted = [c["name"] for c in checks if c["drift"]]
    return {"verdict": DRIFT if drifted else NO_DRIFT, "drifted": drifted, "checks": checks,
            "scores": scores, "stain": stains,
            "params": {k: getattr(params, k) for k in params.__dataclass_fields__}}
