"""normalize: Macenko-normalize every validated patch into the sharded patch store."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from pathtrail.config.loading import parse_section
from pathtrail.config.sections import DataParams, StainParams, runtime_of
from pathtrail.core import figures
from pathtrail.core.files import read_json, read_table, write_json
from pathtrail.core.parallel import PerThread, ordered_map, resolve_workers
from pathtrail.core.progress import bar as progress_bar
from pathtrail.data.shards import parse_shard, select_shard, shard_name
from pathtrail.data.store import StoreWriter, load_rgb
from pathtrail.pipeline.stagekit import get_logger, path_option, staged_run
from pathtrail.stain import MacenkoNormalizer

COHORTS = ("internal", "external")
CHUNK = 512


@dataclass(frozen=True)
class Paths:
    validated: str = path_option("data/validated", "folder with internal.csv / external.csv")
    reference: str = path_option("models/stain_reference.json")
    out: str = path_option("data/store")
    report: str = path_option("reports/normalization.json")
    figure: str = path_option("reports/figures/stain_before_after.png")
    # scale-out: only the slides of shard k of n (pathtrail.data.shards); stages.store_merge joins them
    shard: str | None = path_option(None, "k/n: normalize only the slides of shard k of n (default: all)")


def by_slide(stain: StainParams) -> bool:
    """Whether patches are normalized slide by slide: per-slide scope, or the "slide" fallback (a
    patch that falls back uses its whole slide's estimate, so a slide must never be split)."""
    return stain.scope == "slide" or stain.fallback == "slide"


def batches(table: pd.DataFrame, slides: bool) -> Iterator[pd.DataFrame]:
    """Row groups to normalize together: one group per slide, or fixed-size chunks."""
    if slides:
        for _, group in table.groupby("slide_id", sort=True):
            yield group
    else:
        for start in range(0, len(table), CHUNK):
            yield table.iloc[start : start + CHUNK]


def normalize_device() -> torch.device:
    """CUDA when present (as training uses it), else the CPU. CUDA bits differ from the CPU's
    (README, "GPU users"): a store normalized on a GPU is another store."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def run(params: Mapping[str, Any], paths: Paths, *, trail: str | None = None) -> dict[str, Any]:
    """Write the patch store, the normalization report and the before/after figure; returns the report."""
    data, stain = parse_section(params, "data", DataParams), parse_section(params, "stain", StainParams)
    root = Path(data.data_root)
    parse_shard(paths.shard)  # a malformed --shard fails before any work
    candidates = {c: Path(paths.validated) / f"{c}.csv" for c in COHORTS}
    tables = {c: path for c, path in candidates.items() if path.is_file()}
    with staged_run("normalize", inputs=[*tables.values(), paths.reference, root],
                    outputs=[paths.out, paths.report, paths.figure],
                    params={"stain": params["stain"], "execution": params.get("execution")}, trail=trail) as (rec, out):
        # stain.fallback decides the batching below, so the normalizer follows it too (stain_fit
        # stores the same value in the reference; this keeps both in step under `-S` overrides).
        normalizer = MacenkoNormalizer.from_dict(read_json(paths.reference), fallback=stain.fallback)
        staged = replace(paths, out=str(out(paths.out)), report=str(out(paths.report)),
                         figure=str(out(paths.figure)))
        workers, device = resolve_workers(runtime_of(params).num_workers), normalize_device()
        report = normalize_cohorts(tables, normalizer, data, stain, staged, workers=workers, device=device)
        rec.note(device=device.type, workers=workers,
                 **{f"{c}_{key}": v[key] for c, v in report["cohorts"].items()
                    for key in ("fallback", "fallback_slide")})
    get_logger().info("normalize.done", **{c: v for c, v in report["cohorts"].items()})
    return report


def normalize_group(group: pd.DataFrame, normalizers: PerThread[MacenkoNormalizer], root: Path,
                    data: DataParams, stain: StainParams, device: torch.device
                    ) -> tuple[pd.DataFrame, np.ndarray, np.ndarray, dict[str, int]]:
    """Decode and normalize one row group: (group, raw, normalized, fallback counts)."""
    raw = np.stack([load_rgb(root / p, data.patch_size) for p in group.path])
    if not stain.enable_stain_norm:
        return group, raw, raw, {}
    normalizer = normalizers.get()  # one per thread: a normalizer holds scratch memory
    batch = torch.from_numpy(raw).to(device) if device.type != "cpu" else raw
    out = (normalizer.normalize_slide(batch) if stain.scope == "slide"
           else normalizer.normalize(batch, slide_ids=group.slide_id.tolist()))
    out = out.cpu().numpy() if isinstance(out, torch.Tensor) else out
    return group, raw, out, dict(normalizer.last_stats)


def normalize_cohorts(tables: dict[str, Path], normalizer: MacenkoNormalizer, data: DataParams,
                      stain: StainParams, paths: Paths, *, workers: int = 0,
                      device: torch.device | None = None) -> dict[str, Any]:
    """Normalize every cohort into one store. Row groups are decoded and normalized on `workers`
    threads (0: this one), a bounded number in flight, and written in table order, so the store's
    bytes do not depend on `workers` (tests/stages/test_normalize_stage.py)."""
    root, shard = Path(data.data_root), parse_shard(paths.shard)
    device = device or torch.device("cpu")
    report: dict = {"enabled": stain.enable_stain_norm, "scope": stain.scope, "fallback": stain.fallback,
                    "reference_sha256": normalizer.to_dict().get("reference_sha256"), "cohorts": {},
                    **({"shard": shard_name(shard)} if shard else {})}
    samples: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    shape = (data.patch_size, data.patch_size, 3)
    writer = StoreWriter(paths.out, stain.shard_size, shape)
    normalizers = PerThread(normalizer)
    for cohort, path in tables.items():
        table = select_shard(read_table(path), shard)
        table = table.sort_values(["slide_id", "path"] if by_slide(stain) else ["path"],
                                  ignore_index=True)
        counts = {"patches": 0, "fallback": 0, "fallback_slide": 0}
        bar = progress_bar(len(table), f"normalize {cohort}", unit="patch")

        def work(group: pd.DataFrame):
            return normalize_group(group, normalizers, root, data, stain, device)

        for group, raw, out, stats in ordered_map(work, batches(table, by_slide(stain)), workers):
            for key in ("fallback", "fallback_slide"):
                counts[key] += int(stats.get(key, 0))
            counts["patches"] += len(raw)
            writer.add(out, group.assign(cohort=cohort))
            if cohort not in samples:
                samples[cohort] = (raw[:6], out[:6])
            bar.update(len(raw))
        bar.close()
        report["cohorts"][cohort] = counts
    writer.close()
    figure_rows = [(f"{c} {kind}", imgs[i]) for c, imgs in samples.items()
                   for i, kind in enumerate(("before", "after"))]
    figures.image_grid(figure_rows, paths.figure)
    write_json(report, paths.report)
    return report
