"""Figures for the model card (matplotlib, Agg backend, deterministic PNG metadata)."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from pathtrail.core.files import write_bytes

_METADATA = {"Software": None}  # no matplotlib version or dates inside the PNG


def save(fig: plt.Figure, path: str | Path) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, metadata=_METADATA)
    plt.close(fig)
    return write_bytes(buf.getvalue(), path)


def image_grid(rows: Sequence[tuple[str, np.ndarray]], path: str | Path, titles: Sequence[str] = ()) -> Path:
    """One labelled row of patches per (label, images[N,H,W,3])."""
    ncols = max(len(imgs) for _, imgs in rows)
    fig, axes = plt.subplots(len(rows), ncols, figsize=(1.3 * ncols + 1, 1.4 * len(rows)), squeeze=False)
    for r, (label, imgs) in enumerate(rows):
        for c in range(ncols):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c < len(imgs):
                ax.imshow(imgs[c])
                if r == 0 and c < len(titles):
                    ax.set_title(titles[c], fontsize=6)
            else:
                ax.axis("off")
        axes[r][0].set_ylabel(label, fontsize=7)
    fig.tight_layout()
    return save(fig, path)


def line_plot(series: dict[str, tuple[Sequence[float], Sequence[float]]], path: str | Path, *,
              title: str, xlabel: str, ylabel: str, diagonal: bool = False,
              points: Sequence[tuple[float, float, str]] = ()) -> Path:
    """One line per series; each of `points` (x, y, legend label) is marked on top."""
    fig, ax = plt.subplots(figsize=(4.5, 3.5))
    for name, (x, y) in series.items():
        ax.plot(x, y, label=name, linewidth=1.2)
    for x, y, label in points:
        ax.plot([x], [y], "o", color="black", markersize=5, label=label, zorder=3)
    if diagonal:
        ax.plot([0, 1], [0, 1], "k:", linewidth=0.8)
    ax.set_title(title, fontsize=9)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return save(fig, path)
