"""tile: cut the slides of the slide tables into patches, with manifests, QC thumbnails, report.

Used in place of demo_data when the data are whole slides (`data=slides`; README, "Starting from
whole slides"): it writes `data/raw` (patches, `internal.csv`, `external.csv`: the manifests
validate reads), `reports/tiling.json` (per slide: level read, patches kept and rejected per
reason) and `reports/figures/tiling/` (one QC thumbnail per slide). Every slide is checked before
any is tiled; on any problem nothing is written and every problem is listed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pathtrail.config.loading import parse_section
from pathtrail.config.sections import DataParams, TileParams, runtime_of
from pathtrail.core.errors import PathTrailError
from pathtrail.core.files import write_json
from pathtrail.core.parallel import resolve_workers
from pathtrail.pipeline.stagekit import get_logger, path_option, staged_run
from pathtrail.wsi.tiling import TilingResult, tile_slide_table


@dataclass(frozen=True)
class Paths:
    out: str = path_option("data/raw", "folder for the patches and internal.csv / external.csv")
    report: str = path_option("reports/tiling.json", "tiling report")
    qc: str = path_option("reports/figures/tiling", "folder for the QC thumbnails")


def _check_targets(data: DataParams, tile: TileParams, out: Path) -> dict[str, str]:
    """{cohort: slide table}; the manifests must be where data_root / the manifests point."""
    tables = {"internal": tile.internal_slides}
    if tile.external_slides:
        tables["external"] = tile.external_slides
    expected = {"data.data_root": (data.data_root, out),
                "data.internal_manifest": (data.internal_manifest, out / "internal.csv")}
    if tile.external_slides:
        expected["data.external_manifest"] = (data.external_manifest or "", out / "external.csv")
    wrong = [f"{key} is '{value}' but the tile stage writes '{want.as_posix()}'"
             for key, (value, want) in expected.items() if Path(value) != want]
    if wrong:
        raise PathTrailError("the tile stage's outputs are not the data the pipeline reads: "
                             + "; ".join(wrong) + ". fix: use pipelines/data/slides.yaml "
                             "(data=slides), or point those params at the tile stage's --out")
    return tables


def run(params: Mapping[str, Any], paths: Paths, *, trail: str | None = None) -> TilingResult:
    """Tile the slide tables of `tile`; write the patches, manifests, thumbnails and report."""
    tile = parse_section(params, "tile", TileParams)
    data = parse_section(params, "data", DataParams)
    out = Path(paths.out)
    tables = _check_targets(data, tile, out)
    root = Path(tile.slide_root)
    inputs = [*tables.values(), *([root] if root.is_dir() else [])]
    workers = resolve_workers(runtime_of(params).num_workers)
    audit_params = {"tile": params["tile"], "data.classes": params["data"]["classes"],
                    "data.patch_size": data.patch_size, "execution": params.get("execution")}
    with staged_run("tile", inputs=inputs, outputs=[out, paths.report, paths.qc],
                    params=audit_params, trail=trail) as (rec, staged):
        folder, qc = staged(out), staged(paths.qc)
        folder.mkdir()
        qc.mkdir()
        result = tile_slide_table(tables, root, folder, tile, classes=data.classes,
                                  patch_size=data.patch_size, qc_dir=qc, workers=workers,
                                  max_table_bytes=data.max_manifest_bytes,
                                  max_table_rows=data.max_manifest_rows)
        write_json(result.report, staged(paths.report))
        totals = result.report["totals"]
        rec.note(**{f"{c}_patches": t["kept"] for c, t in totals.items()},
                 slides_with_assumed_mpp=len(result.report["slides_with_assumed_mpp"]))
    log = get_logger()
    for s in result.report["slides"]:
        log.info("tile.slide", cohort=s["cohort"], slide_id=s["slide_id"], level=s["level"],
                 kept=s["kept"], **{f"rejected_{k}": v for k, v in s["rejected"].items()})
    log.info("tile.done", **{c: t["kept"] for c, t in totals.items()})
    return result
