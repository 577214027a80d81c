"""demo_data: write the built-in synthetic H&E cohorts as PNGs plus CSV manifests."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pathtrail.config.loading import from_dict
from pathtrail.config.sections import DemoParams
from pathtrail.core.files import atomic_dir, write_csv
from pathtrail.data.demo import generate_cohorts, write_cohorts
from pathtrail.pipeline.stagekit import get_logger, path_option
from pathtrail.provenance import audit


@dataclass(frozen=True)
class Paths:
    out: str = path_option("data/raw", "folder for PNGs and internal.csv / external.csv")


def run(params: Mapping[str, Any], paths: Paths, *, trail: str | None = None) -> dict[str, int]:
    """Generate the cohorts of `data.demo`; returns the number of patches per cohort."""
    section = params["data"]["demo"]
    demo = from_dict(DemoParams, section, prefix="data.demo")
    out = Path(paths.out)
    with audit.stage("demo_data", inputs=[], params={"data.demo": section, "execution": params.get("execution")}, trail=trail) as rec:
        cohorts = generate_cohorts(demo)
        with atomic_dir(out) as tmp:
            manifests = write_cohorts(cohorts, tmp)
            for cohort, table in manifests.items():
                write_csv(table, tmp / f"{cohort}.csv")
        rec.note(**{f"{c}_patches": len(t) for c, t in manifests.items()})
        rec.outputs(out)
    counts = {c: len(t) for c, t in manifests.items()}
    get_logger().info("demo_data.done", **counts)
    return counts
