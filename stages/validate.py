"""Stage validate: check the cohorts' manifests and images; write the validated tables and report.

On any error nothing is written (stale outputs of an earlier run are removed, as `dvc repro` does),
every problem is listed and the stage exits 1. `--failure-report FILE` keeps the JSON report of a
failed run at FILE, for review; it is never written by default.
"""

from __future__ import annotations

from pathlib import Path
from typing import NoReturn

from pathtrail import audit
from pathtrail.errors import PathTrailError
from pathtrail.io import atomic_dir, remove_outputs, write_csv, write_json
from pathtrail.settings import DataParams
from pathtrail.stagekit import entrypoint, get_logger, load, raw_section, stage_parser
from pathtrail.validation import Cohort, Rules, ValidationResult, validate_cohorts
from pathtrail.validation_cli import format_problems, format_report


def parse_args(argv: list[str] | None):
    p = stage_parser("validate", __doc__)
    p.add_argument("--out-dir", default="data/validated",
                   help="folder for internal.csv and external.csv")
    p.add_argument("--report", default="reports/validation.json")
    p.add_argument("--failure-report", default=None,
                   help="where to keep the report of a failed run (default: nowhere)")
    return p.parse_args(argv)


@entrypoint("validate")
def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    data = load(args, "data", DataParams)
    root = Path(data.data_root)
    manifests = {"internal": data.internal_manifest, "external": data.external_manifest}
    cohorts = [Cohort(name, Path(path), root) for name, path in manifests.items() if path]
    inputs = [c.manifest for c in cohorts] + [root]
    with audit.stage("validate", inputs=inputs, params={"data": raw_section(args, "data")},
                     trail=args.trail) as rec:
        result = validate_cohorts(cohorts, Rules.from_params(data))
        log_summary(result)
        rec.note(errors=len(result.errors), warnings=len(result.warnings),
                 **{f"{name}_patches": len(t) for name, t in result.tables.items()})
        if not result.ok:
            fail(result, args)
        with atomic_dir(args.out_dir) as tmp:
            for name, table in result.tables.items():
                write_csv(table, tmp / f"{name}.csv")
        write_json(result.report, args.report)
        rec.outputs(args.out_dir, args.report)


def fail(result: ValidationResult, args) -> NoReturn:
    """Leave no outputs (not even stale ones), keep the report only if asked, list every error."""
    remove_outputs(args.out_dir, args.report)
    if args.failure_report:
        write_json(result.report, args.failure_report)
    head = f"{len(result.errors)} error(s) in the data; nothing was written."
    raise PathTrailError("\n".join([head, *format_problems(result.report["errors"])]))


def log_summary(result: ValidationResult) -> None:
    """The readable summary, one log event per line, plus one structured event per cohort."""
    log = get_logger()
    for name, summary in result.report["cohorts"].items():
        if summary:
            log.info("validate.cohort", cohort=name, patches=summary["rows"],
                     patients=summary["patients"], slides=summary["slides"],
                     classes=summary["classes"], sites=summary["sites"],
                     extra_columns=sorted(summary["extra_columns"]))
    for line in format_report(result.report).splitlines():
        if line.strip():
            log.info("validate.summary", line=line)
    log.info("validate.done", errors=len(result.errors), warnings=len(result.warnings),
             seconds=round(result.seconds, 2))


if __name__ == "__main__":
    main()
