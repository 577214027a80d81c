"""Tiling a slide table: patches, their manifest, a QC thumbnail per slide and the tiling report.

`tile_slide_table(...)` is the one entry point (the tile stage and `pathtrail predict --slides`
call it). Every slide is checked before any is tiled (missing, not a file, not a slide, no
resolution, a target finer than the scan), and every problem is listed at once. Slides are then
tiled in parallel, each by the batch (`tile.batch_size` patches in memory per slide at a time,
whatever the slide's size), and the results are gathered in table order: the same slides and
params give the same bytes (tests/unit/test_wsi_tiling.py). Per slide: the grid, the patches
rejected per reason (outside_regions, background, pen, blur), the patches kept.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pathtrail.config.sections import TileParams
from pathtrail.core.files import write_csv
from pathtrail.core.parallel import ordered_map
from pathtrail.core.progress import bar
from pathtrail.core.text import printable
from pathtrail.data.manifests import DEFAULT_MAX_MANIFEST_BYTES, DEFAULT_MAX_MANIFEST_ROWS
from pathtrail.wsi.grid import ReadPlan, grid_origins, read_overview, read_plan, resample
from pathtrail.wsi.qc import qc_thumbnail, save_png
from pathtrail.wsi.reader import SlideError, open_slide
from pathtrail.wsi.slide_table import SlideRow, check_tables, read_slide_table
from pathtrail.wsi.tissue import box_fractions, sharpness, summed_area, tissue_masks

REASONS = ("outside_regions", "background", "pen", "blur")
MANIFEST_COLUMNS = ("path", "label", "patient_id", "slide_id", "site", "x", "y", "level", "mpp",
                    "mpp_source")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True)
class TilingResult:
    """What `tile_slide_table` wrote: one manifest per cohort (as written to `<out>/<cohort>.csv`),
    and the tiling report (per slide: geometry, level read, kept and rejected per reason)."""

    manifests: dict[str, pd.DataFrame]
    report: dict[str, Any]


def slide_folder(slide_id: str) -> str:
    """A folder name for a slide: its id made file-safe, plus a hash of the id (ids differing only
    in unsafe characters stay apart; '../x' or 'a/b' cannot leave the output folder)."""
    safe = _UNSAFE.sub("_", slide_id).strip("._")[:48] or "slide"
    return f"{safe}-{hashlib.sha256(slide_id.encode('utf-8')).hexdigest()[:8]}"


def slide_file(root: Path, row: SlideRow) -> str:
    """The slide's file under `root`; a symlink that leads outside the root is refused."""
    path = root / row.path
    real, real_root = os.path.realpath(path), os.path.realpath(root)
    if os.path.lexists(path) and os.path.commonpath([real, real_root]) != real_root:
        raise SlideError(f"slide '{printable(path.as_posix())}' (slide table line {row.line}): "
                         "resolves outside tile.slide_root; fix: copy the slide under the slide root")
    return path.as_posix()


def _preflight(rows: list[SlideRow], root: Path, params: TileParams, patch_size: int) -> list[str]:
    problems = []
    for row in rows:
        try:
            with open_slide(slide_file(root, row), params.backend, params.assume_mpp) as slide:
                read_plan(slide, params.mpp, patch_size, params.mpp_tolerance)
        except SlideError as exc:
            problems.append(f"{row.cohort} slide table line {row.line}, slide_id "
                            f"'{printable(row.slide_id)}': {printable(str(exc))}")
    return problems


def tile_slide_table(tables: Mapping[str, str | Path], slide_root: str | Path, out: str | Path,
                     params: TileParams, *, classes: tuple[str, ...] | list[str], patch_size: int,
                     qc_dir: str | Path | None = None, workers: int = 0,
                     max_table_bytes: int = DEFAULT_MAX_MANIFEST_BYTES,
                     max_table_rows: int = DEFAULT_MAX_MANIFEST_ROWS) -> TilingResult:
    """Tile the slides of `tables` ({cohort: slide table CSV}) into the folder `out`.

    Writes `<out>/<cohort>/<slide folder>/<x>_<y>.png` and `<out>/<cohort>.csv` (the manifest
    format of the pipeline: path relative to `out`, label, patient_id, slide_id, site, then x, y
    (level-0 corner), level (read), mpp (of the patch), mpp_source, then the slide table's extra
    columns), and, with `qc_dir`, `<qc_dir>/<cohort>/<slide folder>.png`. `out` (and `qc_dir`)
    must exist. Raises SlideTableError / PathTrailError listing every problem before any work.
    """
    root, out = Path(slide_root), Path(out)
    read = [read_slide_table(cohort, Path(t), root, tuple(classes), max_table_bytes, max_table_rows)
            for cohort, t in tables.items()]
    rows = check_tables(read)
    problems = _preflight(rows, root, params, patch_size)
    if problems:
        raise SlideError(f"{len(problems)} slide(s) cannot be tiled; nothing was tiled.\n"
                         + "\n".join(f"  - {p}" for p in problems))
    for cohort in tables:
        (out / cohort).mkdir(parents=True, exist_ok=True)
        if qc_dir is not None:
            (Path(qc_dir) / cohort).mkdir(parents=True, exist_ok=True)

    def work(row: SlideRow) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        return tile_slide(row, slide_file(root, row), out, params, patch_size,
                          None if qc_dir is None else Path(qc_dir))

    results: dict[str, list[dict[str, Any]]] = {c: [] for c in tables}
    slides = []
    with bar(len(rows), "tile", unit="slide") as progress:
        for row, (patches, summary) in zip(rows, ordered_map(work, rows, workers, in_flight=workers),
                                           strict=True):
            results[row.cohort].extend(patches)
            slides.append(summary)
            progress.update(1)
    manifests = {}
    for cohort, patches in results.items():
        extra = [c for c, _ in next((r.extra for r in rows if r.cohort == cohort), ())]
        manifests[cohort] = pd.DataFrame(patches, columns=[*MANIFEST_COLUMNS, *extra])
        write_csv(manifests[cohort], out / f"{cohort}.csv")
    return TilingResult(manifests, tiling_report(slides, params, patch_size))


def tiling_report(slides: list[dict[str, Any]], params: TileParams, patch_size: int) -> dict[str, Any]:
    totals: dict[str, Any] = {}
    for s in slides:
        t = totals.setdefault(s["cohort"], {"slides": 0, "grid": 0, "kept": 0, "not_sampled": 0,
                                            "rejected": dict.fromkeys(REASONS, 0)})
        t["slides"] += 1
        for key in ("grid", "kept", "not_sampled"):
            t[key] += s[key]
        for reason in REASONS:
            t["rejected"][reason] += s["rejected"][reason]
    assumed = sorted(s["slide_id"] for s in slides if s["mpp_source"] == "assumed")
    return {"patch_size": patch_size, "mpp": params.mpp, "assume_mpp": params.assume_mpp,
            "slides_with_assumed_mpp": assumed, "reasons": list(REASONS), "totals": totals,
            "slides": slides}


def _candidates(row: SlideRow, shape: tuple[int, int], plan: ReadPlan, overview: np.ndarray,
                scale: tuple[float, float], params: TileParams) -> tuple[np.ndarray, dict[str, np.ndarray], Any]:
    """(corners (n, 2) passing the mask filters, rejected corners per reason, masks)."""
    xs, ys = grid_origins(shape[0], shape[1], plan.footprint)
    masks = tissue_masks(overview)
    fp, (sx, sy) = plan.footprint, scale
    bx0, by0 = np.floor(xs / sx).astype(np.int64), np.floor(ys / sy).astype(np.int64)
    bx1, by1 = np.ceil((xs + fp) / sx).astype(np.int64), np.ceil((ys + fp) / sy).astype(np.int64)
    tissue = box_fractions(summed_area(masks.tissue), bx0, by0, bx1, by1)
    pen = box_fractions(summed_area(masks.pen), bx0, by0, bx1, by1)
    reason = np.full(xs.shape, -1, dtype=np.int64)
    if row.regions:
        cx, cy = xs + fp / 2, ys + fp / 2
        inside = np.zeros(xs.shape, dtype=bool)
        for x, y, w, h in row.regions:
            inside |= (cx >= x) & (cx < x + w) & (cy >= y) & (cy < y + h)
        reason[~inside] = 0
    reason[(reason < 0) & (tissue < params.min_tissue_fraction)] = 1
    reason[(reason < 0) & (pen > params.max_pen_fraction)] = 2
    corners = np.stack([xs, ys], axis=1)
    rejected = {REASONS[k]: corners[reason == k] for k in range(3)}
    return corners[reason < 0], rejected, masks


def _sample(corners: np.ndarray, limit: int) -> np.ndarray:
    if limit <= 0 or len(corners) <= limit:
        return corners
    picks = np.unique(np.floor(np.arange(limit) * (len(corners) / limit)).astype(np.int64))
    return corners[picks]


def tile_slide(row: SlideRow, path: str, out: Path, params: TileParams, patch_size: int,
               qc_dir: Path | None) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Tile one slide: (manifest rows of its kept patches, its summary for the report)."""
    folder = slide_folder(row.slide_id)
    with open_slide(path, params.backend, params.assume_mpp) as slide:
        plan = read_plan(slide, params.mpp, patch_size, params.mpp_tolerance)
        overview, scale = read_overview(slide, params.mask_max_size)
        shape = slide.dimensions[0]
        passing, rejected, masks = _candidates(row, shape, plan, overview, scale, params)
        chosen = _sample(passing, params.max_patches_per_slide)
        (out / row.cohort / folder).mkdir(parents=True, exist_ok=True)
        kept, blurred, records = [], [], []
        extra = dict(row.extra)
        for start in range(0, len(chosen), params.batch_size):
            batch = chosen[start:start + params.batch_size]
            regions = [slide.read(x, y, plan.level, plan.read_size, plan.read_size) for x, y in batch]
            for (x, y), region in zip(batch, regions, strict=True):
                patch = resample(region, patch_size)
                if sharpness(patch) < params.min_sharpness:
                    blurred.append((x, y))
                    continue
                rel = f"{row.cohort}/{folder}/{int(x)}_{int(y)}.png"
                save_png(patch, out / rel)
                kept.append((x, y))
                records.append({"path": rel, "label": row.label, "patient_id": row.patient_id,
                                "slide_id": row.slide_id, "site": row.site, "x": int(x), "y": int(y),
                                "level": plan.level, "mpp": params.mpp, "mpp_source": slide.mpp_source,
                                **extra})
        mpp, source = slide.mpp, slide.mpp_source
    rejected["blur"] = np.array(blurred, dtype=np.int64).reshape(-1, 2)
    qc_rel = None
    if qc_dir is not None:
        boxes = {"kept": np.array(kept, dtype=np.int64).reshape(-1, 2), "blur": rejected["blur"],
                 "pen": rejected["pen"]}
        image = qc_thumbnail(overview, masks, boxes, scale, plan.footprint, params.thumbnail_size)
        qc_rel = f"{row.cohort}/{folder}.png"
        save_png(image, qc_dir / qc_rel)
    grid = len(passing) + sum(len(v) for k, v in rejected.items() if k != "blur")
    summary = {
        "cohort": row.cohort, "slide_id": row.slide_id, "path": row.path, "folder": folder,
        "width": int(shape[0]), "height": int(shape[1]), "slide_mpp": mpp, "mpp_source": source,
        "level": plan.level, "level_mpp": plan.level_mpp, "read_size": plan.read_size,
        "footprint": plan.footprint, "grid": grid, "kept": len(kept),
        "not_sampled": len(passing) - len(chosen),
        "rejected": {reason: len(rejected[reason]) for reason in REASONS},
        "tissue_fraction": float(masks.tissue.mean()), "qc": qc_rel,
    }
    assert summary["kept"] + summary["not_sampled"] + sum(summary["rejected"].values()) == grid
    if not math.isfinite(summary["tissue_fraction"]):
        summary["tissue_fraction"] = 0.0
    return records, summary
