"""store_merge: join the patch stores of sharded normalize runs into the one the unsharded stage writes.

Each shard is a folder under `--shards` holding what `python -m stages.normalize --shard k/n` wrote
there: `store/` (its `--out`) and `normalization.json` (its `--report`). The merge checks that the
shards are exactly 0..n-1 of one n, made with one reference and the params' stain settings, and that
every validated patch is in exactly one of them; then it rewrites the patches, in the unsharded
order, into a store of `stain.shard_size` patches per file, sums the reports and redraws the
before/after figure. The result is byte-identical to the unsharded stage's store, report and figure
(tests/e2e/test_sharded_normalize.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pathtrail.config.loading import parse_section
from pathtrail.config.sections import DataParams, StainParams
from pathtrail.core import figures
from pathtrail.core.errors import PathTrailError
from pathtrail.core.files import read_json, read_table, write_json
from pathtrail.data.shards import parse_shard
from pathtrail.data.store import INDEX, StoreWriter, load_rgb
from pathtrail.pipeline.normalize import COHORTS, batches, by_slide
from pathtrail.pipeline.stagekit import get_logger, path_option, staged_run

SHARD_STORE, SHARD_REPORT = "store", "normalization.json"
SETTINGS = ("enabled", "scope", "fallback", "reference_sha256")
COUNTS = ("patches", "fallback", "fallback_slide")
FIGURE_PATCHES = 6
CHUNK = 4096


@dataclass(frozen=True)
class Paths:
    shards: str = path_option("data/shards", "folder with one subfolder per shard (store/, normalization.json)")
    validated: str = path_option("data/validated", "folder with internal.csv / external.csv")
    out: str = path_option("data/store")
    report: str = path_option("reports/normalization.json")
    figure: str = path_option("reports/figures/stain_before_after.png")


def run(params: Mapping[str, Any], paths: Paths, *, trail: str | None = None) -> dict[str, Any]:
    """Write the merged store, report and figure; returns the report."""
    data, stain = parse_section(params, "data", DataParams), parse_section(params, "stain", StainParams)
    folders = shard_folders(Path(paths.shards))
    reports = {f: read_json(f / SHARD_REPORT) for f in folders}
    settings = check_shards(reports, stain)
    tables = {c: Path(paths.validated) / f"{c}.csv" for c in COHORTS if (Path(paths.validated) / f"{c}.csv").is_file()}
    ordered = {c: order(read_table(t), stain) for c, t in tables.items()}
    shown = {c: first_rows(t, stain) for c, t in ordered.items()}
    root = Path(data.data_root)
    pictures = [root / p for rows in shown.values() for p in rows.path]
    with staged_run("store_merge", inputs=[*tables.values(), *folders, *pictures],
                    outputs=[paths.out, paths.report, paths.figure],
                    params={"stain": params["stain"], "execution": params.get("execution")},
                    trail=trail) as (rec, out):
        where = locate(folders, ordered)
        shape = (data.patch_size, data.patch_size, 3)
        writer = StoreWriter(out(paths.out), stain.shard_size, shape)
        for cohort, table in ordered.items():
            for start in range(0, len(table), CHUNK):
                rows = table.iloc[start : start + CHUNK]
                writer.add(gather(folders, where[cohort].iloc[start : start + CHUNK]), rows.assign(cohort=cohort))
        writer.close()
        report = {**settings, "cohorts": {c: {k: sum(int(r["cohorts"].get(c, {}).get(k, 0)) for r in reports.values())
                                              for k in COUNTS} for c in ordered}}
        for cohort, table in ordered.items():
            if report["cohorts"][cohort]["patches"] != len(table):
                raise PathTrailError(f"{paths.shards}: the shards' reports count {report['cohorts'][cohort]['patches']} "
                                     f"{cohort} patches, the validated table has {len(table)}; rerun the shards")
        samples = []
        for cohort, rows in shown.items():
            if len(rows):
                raw = np.stack([load_rgb(root / p, data.patch_size) for p in rows.path])
                done = gather(folders, where[cohort].iloc[: len(rows)])
                samples += [(f"{cohort} before", raw), (f"{cohort} after", done)]
        figures.image_grid(samples, out(paths.figure))
        write_json(report, out(paths.report))
        rec.note(shards=len(folders), **{f"{c}_patches": v["patches"] for c, v in report["cohorts"].items()})
    get_logger().info("store_merge.done", shards=len(folders), **report["cohorts"])
    return report


def shard_folders(parent: Path) -> list[Path]:
    """The subfolders of `parent` that hold a shard report, sorted by name."""
    found = sorted(p for p in parent.iterdir() if (p / SHARD_REPORT).is_file()) if parent.is_dir() else []
    if not found:
        raise PathTrailError(f"{parent}: no shard outputs (subfolders holding {SHARD_REPORT}); run the "
                             "normalize shards first (python -m stages.normalize --shard k/n ...)")
    return found


def check_shards(reports: dict[Path, dict], stain: StainParams) -> dict[str, Any]:
    """The settings all shards share; an error unless they are exactly shards 0..n-1 of one n, made
    with one reference and with the stain settings of the params."""
    shards = {}
    for folder, report in reports.items():
        shard = parse_shard(report.get("shard")) if report.get("shard") else None
        if shard is None:
            raise PathTrailError(f"{folder / SHARD_REPORT}: not the report of a shard (no 'shard' key); "
                                 "write shards with python -m stages.normalize --shard k/n")
        if shard in shards.values():
            raise PathTrailError(f"{folder}: shard {report['shard']} also in {next(f for f, s in shards.items() if s == shard)}")
        shards[folder] = shard
    counts = {n for _, n in shards.values()}
    missing = sorted(set(range(max(counts))) - {k for k, _ in shards.values()})
    if len(counts) > 1 or missing:
        raise PathTrailError(f"shards found: {sorted(f'{k}/{n}' for k, n in shards.values())}; expected "
                             f"0/n .. n-1/n of one n (missing: {missing}); rerun the missing shards")
    expected = {"enabled": stain.enable_stain_norm, "scope": stain.scope, "fallback": stain.fallback}
    first = next(iter(reports.values()))
    for folder, report in reports.items():
        for key in SETTINGS:
            want = expected.get(key, first.get(key))
            if report.get(key) != want:
                raise PathTrailError(f"{folder / SHARD_REPORT}: {key} is {report.get(key)!r}, expected {want!r} "
                                     "(the params' stain section and the other shards); rerun the shards")
    return {key: first.get(key) for key in SETTINGS}


def order(table: pd.DataFrame, stain: StainParams) -> pd.DataFrame:
    """The rows in the order the unsharded normalize stage stores them."""
    return table.sort_values(["slide_id", "path"] if by_slide(stain) else ["path"], ignore_index=True)


def first_rows(table: pd.DataFrame, stain: StainParams) -> pd.DataFrame:
    """The rows the unsharded stage shows in its before/after figure: the start of its first batch."""
    first = next(batches(table, by_slide(stain)), table.iloc[:0])
    return first.iloc[:FIGURE_PATCHES]


def locate(folders: list[Path], ordered: dict[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    """Per cohort, aligned with its ordered table: (folder number, shard file, offset) of each patch."""
    parts = []
    for i, folder in enumerate(folders):
        index_file = folder / SHARD_STORE / INDEX
        if not index_file.is_file():
            raise PathTrailError(f"{folder / SHARD_STORE}: no patch store ({INDEX} missing); rerun this shard")
        if index_file.stat().st_size > 1:  # an empty shard writes an empty index
            index = read_table(index_file)[["cohort", "path", "shard", "offset"]]
            parts.append(index.assign(folder=i))
    found = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(
        columns=["cohort", "path", "shard", "offset", "folder"])
    where = {}
    for cohort, table in ordered.items():
        mine = found[found.cohort == cohort].set_index("path")
        if mine.index.has_duplicates:
            twice = mine.index[mine.index.duplicated()][0]
            raise PathTrailError(f"{cohort} patch {twice!r} is in more than one shard; rerun the shards with one n")
        aligned = mine.reindex(table.path)
        if aligned.folder.isna().any():
            lost = aligned.index[aligned.folder.isna()][0]
            raise PathTrailError(f"{cohort} patch {lost!r} is in no shard; rerun the shards")
        where[cohort] = aligned[["folder", "shard", "offset"]].astype("int64").reset_index(drop=True)
    return where


def gather(folders: list[Path], where: pd.DataFrame) -> np.ndarray:
    """The patches at `where` (rows of `locate`), in its order."""
    out: np.ndarray | None = None
    for (folder, shard), group in where.groupby(["folder", "shard"], sort=True):
        arr = np.load(folders[folder] / SHARD_STORE / f"shard_{shard:05d}.npy", mmap_mode="r")
        if out is None:
            out = np.empty((len(where), *arr.shape[1:]), dtype=arr.dtype)
        out[where.index.get_indexer(group.index)] = arr[group.offset.to_numpy()]
    return out if out is not None else np.empty((0,), dtype=np.uint8)
