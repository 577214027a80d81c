"""`pathtrail validate`: check a user's cohorts before anything is trained on them.

    pathtrail validate --internal A.csv [--external B.csv] [--data-root DIR] [--params params.yaml]
                       [--classes a,b] [--mode-policy convert|reject] [--size-policy reject|resize]
                       [--patch-size N] [--max-image-pixels N] [--max-manifest-bytes N]
                       [--max-manifest-rows N] [--allow-shared-site] [--label-columns a,b] [--json]
                       [--report FILE]

Classes and policies come from the `data` section of params.yaml in the working directory when it
exists (or of --params FILE), each overridable by an option; without a params file --classes is
required. The data root defaults to the folder of each manifest. Exit status: 0 when the data are
usable (warnings allowed), 1 when there is any error, 2 for a usage error (bad option or params).
Nothing is written unless --report FILE is given (then the JSON report, also on failure).
Budgets (data.max_*): only regular files are opened, manifests and images over their limits are
refused before they are read or decoded, so one run stays under ~500 MB whatever the input
(tests/unit/test_validation_budgets.py).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from pathlib import Path
from typing import Any

from pathtrail.config.label_section import label_columns_of
from pathtrail.config.loading import load_section
from pathtrail.config.sections import DataParams
from pathtrail.core.errors import PathTrailError
from pathtrail.core.files import write_json
from pathtrail.core.hashing import canonical_json
from pathtrail.core.text import json_printable, printable
from pathtrail.data.access import explain_os_error
from pathtrail.data.report import format_report
from pathtrail.data.validation import Cohort, Rules, validate_cohorts

MAX_WORKERS = 64  # --workers: image-check threads; more only costs memory (a stack each)


def _parser() -> argparse.ArgumentParser:
    from pathtrail.cli.commands import epilog

    p = argparse.ArgumentParser(prog="pathtrail validate", description=__doc__.split("\n\n")[0],
                                epilog=epilog("validate"), formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--internal", required=True, metavar="CSV", help="internal cohort manifest")
    p.add_argument("--external", metavar="CSV", help="external cohort manifest (optional)")
    p.add_argument("--data-root", metavar="DIR",
                   help="folder the manifest paths start from (default: each manifest's folder)")
    p.add_argument("--params", metavar="FILE",
                   help="params file (default: params.yaml in the working directory, if any)")
    p.add_argument("--classes",
                   help="comma-separated class names, in index order (e.g. benign,tumour)")
    p.add_argument("--patch-size", type=int, metavar="N", help="expected width and height")
    p.add_argument("--mode-policy", choices=["convert", "reject"])
    p.add_argument("--size-policy", choices=["reject", "resize"])
    p.add_argument("--tissue-policy", choices=["warn", "reject"])
    p.add_argument("--min-tissue-fraction", type=float, metavar="F")
    p.add_argument("--min-per-class", type=int, metavar="N")
    p.add_argument("--duplicate-content", choices=["error", "merge"],
                   help="identical images under two patients: an error, or a warning with the "
                        "patients kept in one split")
    p.add_argument("--max-image-pixels", type=int, metavar="N",
                   help="images with more pixels are refused from their header, never decoded")
    p.add_argument("--max-manifest-bytes", type=int, metavar="N",
                   help="manifests larger than this are refused before they are read")
    p.add_argument("--max-manifest-rows", type=int, metavar="N",
                   help="manifests with more rows than this are refused")
    p.add_argument("--allow-shared-site", action="store_true", default=None,
                   help="let the external cohort share a site with the internal one")
    p.add_argument("--label-columns", metavar="A,B",
                   help="multi-label manifests: the 0/1 label columns to check (default: the params "
                        "file's data.label_columns when its data.label_mode is multilabel)")
    p.add_argument("--workers", type=int, metavar="N", help="threads for the image checks")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--report", metavar="FILE",
                   help="also write the JSON report here (also on failure)")
    return p


def rules_from_args(args: argparse.Namespace) -> Rules:
    """params file (if any) first, then each option given on the command line."""
    params = Path(args.params or "params.yaml")
    if params.is_file():
        base: dict[str, Any] = Rules.from_params(load_section(params, "data", DataParams)).__dict__
    elif args.params:
        raise PathTrailError(f"params file '{args.params}' " + (
            "is not a regular file" if params.exists() else "not found"))
    elif not args.classes:
        raise PathTrailError("no params.yaml in the working directory, so the classes are unknown: "
                             "pass --classes (e.g. --classes benign,tumour) or --params FILE")
    else:
        base = {"patch_size": None}
    if args.classes is not None:
        classes = tuple(c.strip() for c in args.classes.split(","))
        if len(classes) < 2 or "" in classes or len(set(classes)) != len(classes):
            raise PathTrailError(
                f"--classes needs two or more distinct names, got '{args.classes}'")
        base["classes"] = classes
    options = {"patch_size": args.patch_size, "mode_policy": args.mode_policy,
               "size_policy": args.size_policy, "tissue_policy": args.tissue_policy,
               "min_tissue_fraction": args.min_tissue_fraction, "min_per_class": args.min_per_class,
               "duplicate_content": args.duplicate_content,
               "max_image_pixels": args.max_image_pixels,
               "max_manifest_bytes": args.max_manifest_bytes,
               "max_manifest_rows": args.max_manifest_rows,
               "allow_shared_site": args.allow_shared_site}
    base.update({k: v for k, v in options.items() if v is not None})
    for key in ("patch_size", "min_per_class", "max_image_pixels", "max_manifest_bytes",
                "max_manifest_rows", "workers"):
        value = base.get(key) if key != "workers" else args.workers
        if value is not None and value < 1:
            raise PathTrailError(f"--{key.replace('_', '-')} must be >= 1, got {value}")
    if args.workers is not None and args.workers > MAX_WORKERS:
        raise PathTrailError(f"--workers must be <= {MAX_WORKERS}, got {args.workers} (threads "
                             "beyond a few per CPU only cost memory)")
    return Rules(**base)


def report_clash(report: str, cohorts: list[Cohort]) -> str | None:
    """Why `--report` must not be written: it is one of the manifests being validated."""
    where = Path(report).resolve()
    for c in cohorts:
        same = where == c.manifest.resolve()
        with contextlib.suppress(OSError):
            same = same or os.path.samefile(report, c.manifest)
        if same:
            return (f"is the {c.name} manifest being validated; writing the report there would "
                    "overwrite it: name another file")
    return None


def label_columns_from_args(args: argparse.Namespace) -> tuple[str, ...]:
    """--label-columns, else the params file's multi-label columns, else none (binary)."""
    if args.label_columns is not None:
        columns = tuple(c.strip() for c in args.label_columns.split(","))
        if "" in columns or len(set(columns)) != len(columns):
            raise PathTrailError(f"--label-columns needs distinct non-empty names, got '{args.label_columns}'")
        return columns
    params = Path(args.params or "params.yaml")
    return label_columns_of(load_section(params, "data", DataParams)) if params.is_file() else ()


def validate_command(argv: list[str] | None = None) -> int:
    """Run `pathtrail validate`; return the exit status (0 usable, 1 errors, 2 usage)."""
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help (0) or a usage error (2), already printed by argparse
        return int(exc.code or 0)
    try:
        rules = rules_from_args(args)
    except PathTrailError as exc:
        print(f"{parser.prog}: error: {printable(exc)}", file=sys.stderr)
        return 2
    cohorts = [Cohort(name, Path(path), Path(args.data_root or Path(path).parent))
               for name, path in (("internal", args.internal), ("external", args.external)) if path]
    clash = args.report and report_clash(args.report, cohorts)
    if clash:
        print(f"{parser.prog}: error: --report '{printable(args.report)}' {clash}", file=sys.stderr)
        return 2
    try:
        label_columns = label_columns_from_args(args)
    except PathTrailError as exc:
        print(f"{parser.prog}: error: {printable(exc)}", file=sys.stderr)
        return 2
    result = validate_cohorts(cohorts, rules, workers=args.workers, label_columns=label_columns)
    rest = (f"see the JSON report '{args.report}'" if args.report
            else "all are in the JSON report: rerun with --report FILE or --json")
    sys.stdout.write(json_printable(canonical_json(result.report)) if args.json
                     else format_report(result.report, rest))
    if args.report:
        try:
            write_json(result.report, args.report)
        except PathTrailError as exc:  # not a regular file (a folder, device, FIFO, link to one)
            print(f"{parser.prog}: error: cannot write the report: {printable(exc)}", file=sys.stderr)
            return 1
        except OSError as exc:
            reason, hint = explain_os_error(exc, writing=True)
            print(f"{parser.prog}: error: cannot write the report to '{printable(args.report)}': "
                  f"{reason} ({hint})", file=sys.stderr)
            return 1
    if not result.ok:
        print(f"validation failed: {len(result.errors)} error(s); nothing is usable until they are "
              "fixed", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(validate_command(None))
