"""split: patient-grouped, label-stratified train/val/test tables from the validated table.

The report's `grouping.crossing_splits` counts, per patient_id, slide_id and sha256, the values
found in more than one of the written tables; the stage writes nothing unless all are 0
(tests/unit/test_content_identity.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from pathtrail.config.loading import parse_section
from pathtrail.config.sections import DataParams
from pathtrail.core.errors import PathTrailError
from pathtrail.core.files import read_table, write_csv, write_json
from pathtrail.data.schemas import VALIDATED_COLUMNS, require_valid, validated_schema
from pathtrail.data.splits import (
    grouping_summary,
    require_disjoint,
    split_by_patient,
    split_summary,
)
from pathtrail.pipeline.stagekit import get_logger, path_option, staged_run


@dataclass(frozen=True)
class Paths:
    table: str = path_option("data/validated/internal.csv", "validated table to split")
    out_dir: str = path_option("data/split", "folder for train.csv, val.csv, test.csv")
    report: str = path_option("reports/split.json")


def run(params: Mapping[str, Any], paths: Paths, *, trail: str | None = None) -> dict[str, Any]:
    """Write the three split tables and the split report; returns the per-split summary."""
    data = parse_section(params, "data", DataParams)
    split = data.split
    section = params["data"]
    audit_params = {"data.split": section["split"], "data.classes": section["classes"]}
    with staged_run("split", inputs=[paths.table], outputs=[paths.out_dir, paths.report], params=audit_params,
                    trail=trail) as (rec, out):
        table = read_validated(Path(paths.table), len(data.classes))
        splits = split_by_patient(table, split.val_fraction, split.test_fraction, split.seed, data.classes)
        require_disjoint(splits)
        summary = split_summary(splits, data.classes)
        for name, part in splits.items():
            write_csv(part, out(paths.out_dir) / f"{name}.csv")
        write_json({"seed": split.seed, "val_fraction": split.val_fraction,
                    "test_fraction": split.test_fraction, "table": Path(paths.table).as_posix(),
                    "grouping": grouping_summary(table, splits), "splits": summary}, out(paths.report))
        rec.note(**{f"{name}_patches": s["patches"] for name, s in summary.items()})
    get_logger().info("split.done", **{name: {k: s[k] for k in ("patches", "patients")}
                                       for name, s in summary.items()})
    return summary


def read_validated(path: Path, n_classes: int) -> pd.DataFrame:
    if not path.is_file():
        raise PathTrailError(
            f"{path}: not found; run the validate stage first (dvc repro validate)")
    table = read_table(path)
    extras = [c for c in table.columns if c not in VALIDATED_COLUMNS]
    return require_valid(validated_schema(n_classes, extras), table, str(path))
