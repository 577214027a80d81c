"""Shared by the tiling tests: slide params composed from `pipelines/` (data=slides), shrunk."""

from __future__ import annotations

import copy
import functools
from pathlib import Path

import yaml

from pathtrail.config.compose import compose_params
from pathtrail.config.loading import from_dict
from pathtrail.config.sections import TileParams

REPO = Path(__file__).resolve().parents[1]


@functools.cache
def _slides_params() -> str:
    return compose_params(REPO / "pipelines", ["data=slides"])


def slide_params() -> dict:
    """The whole params of `data=slides`, as `pipelines/` composes them."""
    return copy.deepcopy(yaml.safe_load(_slides_params()))


def tile_params(**overrides) -> TileParams:
    """`tile` of `data=slides` at a coarse target (1 µm/px) with `overrides`."""
    section = {**slide_params()["tile"], "mpp": 1.0, **overrides}
    return from_dict(TileParams, section, "tile")


def write_table(path: Path, rows: list[dict], columns: list[str] | None = None) -> Path:
    import csv

    columns = columns or ["path", "label", "patient_id", "slide_id", "site"]
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(columns)
        for r in rows:
            w.writerow([r.get(c, "") for c in columns])
    return path
