"""demo_data: write the built-in synthetic H&E cohorts as PNGs plus CSV manifests."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pathtrail.config.loading import from_dict
from pathtrail.config.sections import DemoParams
from pathtrail.core.files import write_csv
from pathtrail.data.demo import generate_cohorts, write_cohorts
from pathtrail.pipeline.stagekit import get_logger, path_option, staged_run


@dataclass(frozen=True)
class Paths:
    out: str = path_option("data/raw", "folder for PNGs and internal.csv / external.csv")


def run(params: Mapping[str, Any], paths: Paths, *, trail: str | None = None) -> dict[str, int]:
    """Generate the cohorts of `data.demo`; returns the number of patches per cohort."""
    section = params["data"]["demo"]
    demo = from_dict(DemoParams, section, prefix="data.demo")
    out = Path(paths.out)
    with staged_run("demo_data", inputs=[], outputs=[out],
                    params={"data.demo": section, "execution": params.get("execution")}, trail=trail) as (rec, staged):
        cohorts = generate_cohorts(demo)
        folder = staged(out)
        folder.mkdir()
        manifests = write_cohorts(cohorts, folder, demo.findings)
        for cohort, table in manifests.items():
            write_csv(table, folder / f"{cohort}.csv")
        rec.note(**{f"{c}_patches": len(t) for c, t in manifests.items()})
    counts = {c: len(t) for c, t in manifests.items()}
    get_logger().info("demo_data.done", **counts)
    return counts
