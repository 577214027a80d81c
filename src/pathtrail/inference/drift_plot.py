"""The drift figure: scores, RGB intensities and stain concentrations, new cohort vs reference."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from pathtrail.core import figures
from pathtrail.inference.drift import PERCENTILES


def _centres(edges: list[float]) -> np.ndarray:
    e = np.asarray(edges)
    return (e[:-1] + e[1:]) / 2


def drift_figure(report: dict[str, Any], path: str | Path) -> Path:
    """Three panels (deterministic PNG, `core.figures.save`); the title gives the verdict and the
    checks over their limits. Nothing of the user's strings is drawn."""
    plt = figures.plt
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    scores = report["scores"]
    x = _centres(scores["bins"])
    width = x[1] - x[0] if len(x) > 1 else 1.0
    if scores["reference_histogram"] is not None:
        axes[0].step(x, scores["reference_histogram"], where="mid",
                     label=f"internal test (n={scores['n_reference']})")
    axes[0].step(x, scores["new_histogram"], where="mid", label=f"new cohort (n={scores['n_new']})")
    shift = (f"PSI {scores['psi']:.3f}, KS {scores['ks']:.3f}" if scores["psi"] is not None
             else "no internal test scores")
    axes[0].set(title=f"scores: {shift}", xlabel="score", ylabel="fraction", xlim=(0 - width / 2, 1 + width / 2))
    axes[0].legend(fontsize=7)
    stain = report["stain"]
    new_hist = stain["new"]["intensity_histograms"]
    ref_hist = stain["reference"].get("intensity_histograms")
    bins = np.linspace(0, 256, len(new_hist[0]) + 1)
    for c, colour in enumerate(("tab:red", "tab:green", "tab:blue")):
        axes[1].plot(_centres(bins.tolist()), new_hist[c], color=colour, label=f"{'RGB'[c]} new")
        if ref_hist:
            axes[1].plot(_centres(bins.tolist()), ref_hist[c], color=colour, linestyle="--",
                         label=f"{'RGB'[c]} reference")
    axes[1].set(title="RGB intensities" + ("" if ref_hist else " (reference patches not at hand)"),
                xlabel="value", ylabel="fraction")
    axes[1].legend(fontsize=6, ncol=2)
    for side, marker in (("reference", "o"), ("new", "x")):
        conc = stain[side].get("concentrations") or {}
        for k, colour in (("H", "tab:purple"), ("E", "tab:pink")):
            if conc.get(k):
                axes[2].plot(PERCENTILES, [conc[k][str(p)] for p in PERCENTILES], marker=marker, color=colour,
                             linestyle="-" if side == "new" else "--", label=f"{k} {side}")
    axes[2].set(title="stain concentrations (reference vectors)", xlabel="percentile", ylabel="concentration")
    axes[2].legend(fontsize=7)
    shown = ", ".join(report["drifted"][:6]) + (" ..." if len(report["drifted"]) > 6 else "")
    fig.suptitle(f"{report['verdict']}" + (f": {shown}" if shown else ""), fontsize=11)
    fig.tight_layout()
    return figures.save(fig, path)
