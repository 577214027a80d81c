"""Every figure the pipeline draws is rendered and checked: no title, label or legend text is cut off."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pytest

from pathtrail.core import figures


@pytest.fixture
def cut_texts(monkeypatch):
    """Render each figure as it is saved; collect the texts that do not fit, by file name."""
    found: dict[str, list[str]] = {}
    save = figures.save

    def checking_save(fig, path):
        found[path.name] = figures.texts_outside(fig)
        return save(fig, path)

    monkeypatch.setattr(figures, "save", checking_save)
    return found


def _patches(n: int) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 255, (n, 64, 64, 3), dtype=np.uint8)


def test_the_check_sees_a_cut_label():
    fig, ax = plt.subplots(figsize=(1.5, 1.0))
    ax.set_ylabel("a label far too long to fit along one inch of axis height at all")
    try:
        assert figures.texts_outside(fig)
    finally:
        plt.close(fig)


@pytest.mark.parametrize("cohort", ["internal_test", "external", "site_held_out_long_name"])
def test_failure_strip_row_labels_fit(tmp_path, cut_texts, cohort):
    titles = [f"p={p:.2f} y=tumour" for p in np.linspace(0.01, 0.99, 8)]
    figures.image_grid([(f"{cohort}: most confident errors", _patches(8))], tmp_path / "f.png", titles)
    assert cut_texts == {"f.png": []}


def test_stain_before_after_grid_fits(tmp_path, cut_texts):
    rows = [(f"{c} {kind}", _patches(6)) for c in ("internal", "external") for kind in ("before", "after")]
    figures.image_grid(rows, tmp_path / "s.png")
    assert cut_texts == {"s.png": []}


def test_line_plots_fit(tmp_path, cut_texts):
    x = list(np.linspace(0, 1, 20))
    figures.line_plot({"eager": (x, x), "compiled": (x, x)}, tmp_path / "c.png",
                      title="Training loss per step: eager vs compiled (fallback_random)",
                      xlabel="step", ylabel="loss")
    figures.line_plot({"internal_test — AUROC 0.876 (95% CI 0.842–0.905)": (x, x)}, tmp_path / "r.png",
                      title="ROC: internal_test", xlabel="false positive rate", ylabel="true positive rate",
                      diagonal=True, points=[(0.2, 0.7, "threshold 0.43 (sens 0.70, spec 0.80)")])
    assert cut_texts == {"c.png": [], "r.png": []}
