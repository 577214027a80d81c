"""validate: check the cohorts' manifests and images; write the validated tables and report.

On any error nothing is written (stale outputs of an earlier run are removed, as `dvc repro` does),
every problem is listed and the stage fails. `--failure-report FILE` keeps the JSON report of a failed
run, for review; it is never written by default.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from pathtrail.config.label_section import label_columns_of
from pathtrail.config.loading import parse_section
from pathtrail.config.sections import DataParams
from pathtrail.core.errors import PathTrailError
from pathtrail.core.files import remove_outputs, write_csv, write_json
from pathtrail.data.access import is_regular_within
from pathtrail.data.report import ERRORS_SHOWN_PER_RULE, format_problems, format_report
from pathtrail.data.validation import Cohort, Rules, ValidationResult, validate_cohorts
from pathtrail.pipeline.stagekit import check_paths, get_logger, path_option, staged_run


@dataclass(frozen=True)
class Paths:
    out_dir: str = path_option("data/validated", "folder for internal.csv and external.csv")
    report: str = path_option("reports/validation.json")
    failure_report: str | None = path_option(None, "where to keep the report of a failed run (default: nowhere)")


def run(params: Mapping[str, Any], paths: Paths, *, trail: str | None = None) -> ValidationResult:
    """Validate the cohorts `data` names; write the tables and report, or fail listing every error."""
    data = parse_section(params, "data", DataParams)
    root = Path(data.data_root)
    manifests = {"internal": data.internal_manifest, "external": data.external_manifest}
    cohorts = [Cohort(name, Path(path), root) for name, path in manifests.items() if path]
    rules = Rules.from_params(data)
    # a manifest that is no regular file within budget (a FIFO, /dev/zero) is not hashed either:
    # validation reports it and the stage fails
    inputs = [c.manifest for c in cohorts if is_regular_within(c.manifest, rules.max_manifest_bytes)]
    inputs += [root] if root.is_dir() else []
    if paths.failure_report:  # written outside the staging: never over an input, wherever it lies
        check_paths([paths.failure_report], [*[c.manifest for c in cohorts], root], within=False)
    with staged_run("validate", inputs=inputs, outputs=[paths.out_dir, paths.report],
                    params={"data": params["data"], "execution": params.get("execution")}, trail=trail) as (rec, out):
        result = validate_cohorts(cohorts, rules, label_columns=label_columns_of(data))
        log_summary(result)
        rec.note(errors=len(result.errors), warnings=len(result.warnings),
                 **{f"{name}_patches": len(t) for name, t in result.tables.items()})
        if not result.ok:
            fail(result, paths, inputs=[*[c.manifest for c in cohorts], root])
        for name, table in result.tables.items():
            write_csv(table, out(paths.out_dir) / f"{name}.csv")
        write_json(result.report, out(paths.report))
    return result


def fail(result: ValidationResult, paths: Paths, inputs: Iterable[str | Path] = ()) -> NoReturn:
    """Leave no outputs (not even stale ones), keep the report only if asked, list every error.
    `remove_outputs` refuses first any output that is unsafe to remove (one holding an input
    included), so a failed run never deletes the user's data."""
    remove_outputs(paths.out_dir, paths.report, inputs=inputs)
    if paths.failure_report:
        write_json(result.report, paths.failure_report)
    head = f"{len(result.errors)} error(s) in the data; nothing was written."
    report = result.report
    listed = format_problems(report["errors"], ERRORS_SHOWN_PER_RULE, report["cohorts"],
                             report["omitted"]["errors"])
    raise PathTrailError("\n".join([head, *listed]))


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
