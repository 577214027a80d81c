"""Figures for the model card (matplotlib, Agg backend, deterministic PNG metadata)."""

from __future__ import annotations

import io
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

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
        axes[r][0].set_ylabel(_fit_row_label(label, row_inches=1.4, fontsize=7), fontsize=7)
    fig.tight_layout()
    return save(fig, path)


def _fit_row_label(label: str, row_inches: float, fontsize: float) -> str:
    """Wrap a (vertical) row label so that each line fits the row's height."""
    char_inches = 0.62 * fontsize / 72  # a generous average glyph width of the default font
    return "\n".join(textwrap.wrap(label, max(8, int(0.9 * row_inches / char_inches)))) or label


def texts_outside(fig: plt.Figure) -> list[str]:
    """The texts of `fig` that are drawn but do not lie wholly inside the figure (cut off).

    Titles, axis labels and legends are checked one by one; tick labels through the drawn
    content's bounding box (matplotlib keeps undrawn labels for ticks beyond the axis limits)."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    box = fig.bbox
    ticks = {id(t) for ax in fig.axes for axis in (ax.xaxis, ax.yaxis)
             for t in axis.get_ticklabels(minor=False) + axis.get_ticklabels(minor=True)}

    def outside(ext: Any) -> bool:  # a matplotlib Bbox, in display pixels
        return ext.x0 < box.x0 - 0.5 or ext.y0 < box.y0 - 0.5 or ext.x1 > box.x1 + 0.5 or ext.y1 > box.y1 + 0.5

    cut = [t.get_text() for t in fig.findobj(matplotlib.text.Text)
           if id(t) not in ticks and t.get_visible() and t.get_text().strip()
           and outside(t.get_window_extent(renderer))]
    drawn = fig.get_tightbbox(renderer).transformed(fig.dpi_scale_trans)
    if not cut and outside(drawn):
        cut.append("<tick labels>")
    return cut


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
