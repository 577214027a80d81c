"""The drift statistics against independent oracles, and verdicts on shifted vs unshifted data."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from pathtrail.config.loading import from_dict
from pathtrail.config.sections import DriftParams, StainParams
from pathtrail.inference.drift import (
    DRIFT,
    NO_DRIFT,
    concentrations,
    drift_report,
    histogram,
    ks_statistic,
    psi,
)
from pathtrail.stain import MacenkoNormalizer

PARAMS = DriftParams(score_bins=10, score_psi_max=0.25, score_ks_max=0.2, stain_angle_max=5.0,
                     concentration_ratio_max=1.5, intensity_bins=32, intensity_psi_max=0.25, max_patches=64,
                     seed=1)
STAIN = StainParams(enable_stain_norm=True, io=240, alpha=1.0, beta=0.15, scope="patch", fallback="reference",
                    min_tissue_fraction=0.05, chunk_size=64, fit_max_patches=64, shard_size=64)


def test_ks_statistic_is_scipys():
    rng = np.random.default_rng(0)
    for a, b in [(rng.normal(size=50), rng.normal(0.3, size=70)), (rng.random(5), rng.random(9)),
                 (np.array([0.1, 0.1, 0.2]), np.array([0.1, 0.3]))]:
        assert ks_statistic(a, b) == pytest.approx(stats.ks_2samp(a, b).statistic, abs=1e-12)


def test_psi_is_the_textbook_sum_and_zero_for_the_same_histogram():
    e, a = np.array([0.5, 0.3, 0.2]), np.array([0.2, 0.3, 0.5])
    assert psi(e, e) == 0
    assert psi(e, a) == pytest.approx(sum((y - x) * math.log(y / x) for x, y in zip(e, a, strict=True)))
    assert psi(np.array([1.0, 0.0]), np.array([0.0, 1.0])) > 10  # empty bins are floored, not infinite


def test_histogram_fractions_sum_to_one_with_the_last_edge_closed():
    h = histogram(np.array([0.0, 0.5, 1.0, 1.0]), 2, 0.0, 1.0)
    assert h.tolist() == [0.25, 0.75]


def test_concentrations_match_a_least_squares_oracle():
    rng = np.random.default_rng(3)
    stains = np.array([[0.65, 0.07], [0.70, 0.99], [0.29, 0.11]])
    images = [rng.integers(30, 200, size=(8, 8, 3), dtype=np.uint8) for _ in range(3)]
    got = concentrations(images, stains, 240, 0.15)
    px = np.concatenate([i.reshape(-1, 3) for i in images]).astype(np.float64)
    od = -np.log((px + 1) / 240)
    od = od[(od >= 0.15).all(axis=1)]
    oracle = np.linalg.lstsq(stains, od.T, rcond=None)[0]
    assert got["tissue_pixels"] == len(od)
    assert got["H"]["50"] == pytest.approx(np.percentile(oracle[0], 50), rel=1e-9)
    assert got["E"]["99"] == pytest.approx(np.percentile(oracle[1], 99), rel=1e-9)


def he_patches(rng: np.random.Generator, n: int, stains: np.ndarray) -> list[np.ndarray]:
    """Synthetic H&E: two stains with random concentrations, rendered by Beer-Lambert."""
    out = []
    for _ in range(n):
        conc = rng.gamma(2.0, 0.3, size=(2, 16 * 16))
        od = stains @ conc
        out.append(np.clip(240 * np.exp(-od) - 1, 0, 255).T.reshape(16, 16, 3).astype(np.uint8))
    return out


def test_a_shifted_cohort_drifts_and_an_unshifted_one_does_not():
    rng = np.random.default_rng(7)
    stains = np.array([[0.65, 0.07], [0.70, 0.99], [0.29, 0.11]])
    stains /= np.linalg.norm(stains, axis=0)
    train = he_patches(rng, 40, stains)
    reference = MacenkoNormalizer().fit(train).to_dict()
    scores = rng.beta(2, 3, size=300)
    same = drift_report(rng.beta(2, 3, size=200), scores, he_patches(rng, 40, stains), train, reference, STAIN,
                        PARAMS)
    other = np.array([[0.3, 0.2], [0.9, 0.8], [0.3, 0.55]])
    other /= np.linalg.norm(other, axis=0)
    shifted = drift_report(rng.beta(5, 1.5, size=200), scores, he_patches(rng, 40, other), train, reference,
                           STAIN, PARAMS)
    assert same["verdict"] == NO_DRIFT, same["drifted"]
    assert shifted["verdict"] == DRIFT
    assert {"score_psi", "score_ks", "stain_angle_H", "stain_angle_E"} <= set(shifted["drifted"])
    names = [c["name"] for c in same["checks"]]
    assert names[:2] == ["score_psi", "score_ks"] and "intensity_psi_B" in names


def test_without_the_reference_patches_intensity_is_not_judged_but_said():
    rng = np.random.default_rng(1)
    stains = np.array([[0.65, 0.07], [0.70, 0.99], [0.29, 0.11]])
    train = he_patches(rng, 10, stains)
    reference = MacenkoNormalizer().fit(train).to_dict()
    report = drift_report(rng.random(20), rng.random(20), train, None, reference, STAIN, PARAMS,
                          reference_note="not here")
    check = next(c for c in report["checks"] if c["name"] == "intensity_psi_G")
    assert check["value"] is None and not check["drift"] and check["note"] == "not here"


def test_blank_patches_are_drift_not_a_crash():
    rng = np.random.default_rng(2)
    stains = np.array([[0.65, 0.07], [0.70, 0.99], [0.29, 0.11]])
    reference = MacenkoNormalizer().fit(he_patches(rng, 10, stains)).to_dict()
    blank = [np.full((16, 16, 3), 238, np.uint8)] * 4
    report = drift_report(rng.random(20), rng.random(20), blank, None, reference, STAIN, PARAMS)
    assert report["verdict"] == DRIFT and "stain_angle_H" in report["drifted"]
    assert "fit_problem" in report["stain"]["new"]


def test_drift_params_are_strict_and_checked():
    good = {k: getattr(PARAMS, k) for k in PARAMS.__dataclass_fields__}
    with pytest.raises(ValueError, match="drift.colour"):
        from_dict(DriftParams, {**good, "colour": 1}, "drift")
    with pytest.raises(ValueError, match="drift.concentration_ratio_max"):
        from_dict(DriftParams, {**good, "concentration_ratio_max": 0.5}, "drift")
