"""Stage split: patient-grouped, label-stratified train/val/test tables from the validated table."""

from __future__ import annotations

from pathlib import Path

from pathtrail import audit
from pathtrail.errors import PathTrailError
from pathtrail.io import atomic_dir, read_table, write_csv, write_json
from pathtrail.schemas import VALIDATED_COLUMNS, require_valid, validated_schema
from pathtrail.settings import DataParams
from pathtrail.splits import split_by_patient, split_summary
from pathtrail.stagekit import entrypoint, get_logger, load, raw_section, stage_parser


def parse_args(argv: list[str] | None):
    p = stage_parser("split", __doc__)
    p.add_argument("--table", default="data/validated/internal.csv",
                   help="validated table to split")
    p.add_argument("--out-dir", default="data/split",
                   help="folder for train.csv, val.csv, test.csv")
    p.add_argument("--report", default="reports/split.json")
    return p.parse_args(argv)


@entrypoint("split")
def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    data = load(args, "data", DataParams)
    params = data.split
    section = raw_section(args, "data")
    audit_params = {"data.split": section["split"], "data.classes": section["classes"]}
    with audit.stage("split", inputs=[args.table], params=audit_params, trail=args.trail) as rec:
        table = read_validated(Path(args.table), len(data.classes))
        splits = split_by_patient(table, params.val_fraction, params.test_fraction, params.seed,
                                  data.classes)
        summary = split_summary(splits, data.classes)
        with atomic_dir(args.out_dir) as tmp:
            for name, part in splits.items():
                write_csv(part, tmp / f"{name}.csv")
        write_json({"seed": params.seed, "val_fraction": params.val_fraction,
                    "test_fraction": params.test_fraction, "table": Path(args.table).as_posix(),
                    "splits": summary}, args.report)
        rec.note(**{f"{name}_patches": s["patches"] for name, s in summary.items()})
        rec.outputs(args.out_dir, args.report)
    get_logger().info("split.done", **{name: {k: s[k] for k in ("patches", "patients")}
                                       for name, s in summary.items()})


def read_validated(path: Path, n_classes: int):
    if not path.is_file():
        raise PathTrailError(
            f"{path}: not found; run the validate stage first (dvc repro validate)")
    table = read_table(path)
    extras = [c for c in table.columns if c not in VALIDATED_COLUMNS]
    return require_valid(validated_schema(n_classes, extras), table, str(path))


if __name__ == "__main__":
    main()
