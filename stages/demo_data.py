"""Stage demo_data: write the built-in synthetic H&E cohorts as PNGs plus CSV manifests."""

from __future__ import annotations

from pathlib import Path

from pathtrail import audit
from pathtrail.demo import DemoParams, generate_cohorts, write_cohorts
from pathtrail.io import atomic_dir, write_csv
from pathtrail.params import from_dict
from pathtrail.stagekit import entrypoint, get_logger, raw_section, stage_parser


def parse_args(argv: list[str] | None):
    p = stage_parser("demo_data", __doc__)
    p.add_argument("--out", default="data/raw", help="folder for PNGs and internal.csv / external.csv")
    return p.parse_args(argv)


@entrypoint("demo_data")
def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    section = raw_section(args, "data")["demo"]
    params = from_dict(DemoParams, section, prefix="data.demo")
    out = Path(args.out)
    with audit.stage("demo_data", inputs=[], params={"data.demo": section}, trail=args.trail) as rec:
        cohorts = generate_cohorts(params)
        with atomic_dir(out) as tmp:
            manifests = write_cohorts(cohorts, tmp)
            for cohort, table in manifests.items():
                write_csv(table, tmp / f"{cohort}.csv")
        rec.note(**{f"{c}_patches": len(t) for c, t in manifests.items()})
        rec.outputs(out)
    get_logger().info("demo_data.done", **{c: len(t) for c, t in manifests.items()})


if __name__ == "__main__":
    main()
