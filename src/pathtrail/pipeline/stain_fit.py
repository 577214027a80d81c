"""stain_fit: fit the Macenko reference on training patches only (never val/test/external)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pathtrail.config.loading import parse_section
from pathtrail.config.sections import DataParams, StainParams
from pathtrail.core.files import read_table, write_json
from pathtrail.data.store import load_rgb
from pathtrail.pipeline.stagekit import get_logger, path_option, staged_run
from pathtrail.stain import MacenkoNormalizer

FIT_KEY = 0x57A1


@dataclass(frozen=True)
class Paths:
    train: str = path_option("data/split/train.csv")
    out: str = path_option("models/stain_reference.json")


def pick_reference_rows(n: int, k: int, seed: int) -> np.ndarray:
    """A seeded, sorted sample of at most k training rows."""
    if n <= k:
        return np.arange(n)
    return np.sort(np.random.default_rng([seed, FIT_KEY]).choice(n, size=k, replace=False))


def run(params: Mapping[str, Any], paths: Paths, *, trail: str | None = None) -> dict[str, Any]:
    """Fit and write the stain reference; returns it (as written)."""
    data, stain = parse_section(params, "data", DataParams), parse_section(params, "stain", StainParams)
    root = Path(data.data_root)
    with staged_run("stain_fit", inputs=[paths.train, root], outputs=[paths.out],
                    params={"stain": params["stain"], "execution": params.get("execution")}, trail=trail) as (_, out):
        table = read_table(paths.train).sort_values("path", ignore_index=True)
        rows = pick_reference_rows(len(table), stain.fit_max_patches, data.split.seed)
        images = [load_rgb(root / table.path[i], data.patch_size) for i in rows]
        normalizer = MacenkoNormalizer(io=stain.io, alpha=stain.alpha, beta=stain.beta,
                                       min_tissue_fraction=stain.min_tissue_fraction,
                                       fallback=stain.fallback, chunk_size=stain.chunk_size).fit(images)
        reference = normalizer.to_dict()
        reference["fit_paths"] = [str(table.path[i]) for i in rows]
        write_json(reference, out(paths.out))
    get_logger().info("stain_fit.done", patches=len(rows), out=paths.out)
    return reference
