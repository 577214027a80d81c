"""`pathtrail validate`: check a user's cohorts before anything is trained on them.

    pathtrail validate --internal A.csv [--external B.csv] [--data-root DIR] [--params params.yaml]
                       [--classes a,b] [--mode-policy convert|reject] [--size-policy reject|resize]
                       [--patch-size N] [--json] [--report FILE]

Classes and policies come from the `data` section of params.yaml in the working directory when it
exists (or of --params FILE), each overridable by an option; without a params file --classes is
required. The data root defaults to the folder of each manifest. Exit status: 0 when the data are
usable (warnings allowed), 1 when there is any error, 2 for a usage error (bad option or params).
Nothing is written unless --report FILE is given (then the JSON report, also on failure).
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from pathtrail.errors import PathTrailError
from pathtrail.io import canonical_json, write_json
from pathtrail.params import load_section
from pathtrail.validation import Cohort, Problem, Rules, validate_cohorts

WARNINGS_SHOWN_PER_RULE = 20


def format_problems(problems: list[dict[str, Any]], per_rule: int | None = None) -> list[str]:
    """One readable entry per problem; with `per_rule`, at most that many of each rule."""
    shown: Counter[str] = Counter()
    lines, hidden = [], Counter()
    for p in problems:
        shown[p["rule"]] += 1
        if per_rule is not None and shown[p["rule"]] > per_rule:
            hidden[p["rule"]] += 1
            continue
        lines.append("  " + Problem(**p).format())
    lines += [f"  ... and {n} more '{rule}' (all are in the JSON report: --json)"
              for rule, n in sorted(hidden.items())]
    return lines


def format_report(report: dict[str, Any]) -> str:
    """The readable form of a validation report (the JSON's content, warnings capped per rule)."""
    rules = report["rules"]
    status = "FAILED" if report["status"] == "failed" else "OK"
    size = rules["patch_size"]
    size_text = f"{size}x{size} ({rules['size_policy']})" if size else "one size for all"
    out = [
        (f"PathTrail data validation: {status} ({_count(report['n_errors'], 'error')}, "
        f"{_count(report['n_warnings'], 'warning')})"),
        "rules: classes " + ", ".join(f"{i}={c}" for i, c in enumerate(rules["classes"]))
        + f"; patch size {size_text}; mode {rules['mode_policy']}; tissue >= "
        f"{rules['min_tissue_fraction']} ({rules['tissue_policy']}); min_per_class "
        f"{rules['min_per_class']}",
    ]
    for name, c in report["cohorts"].items():
        out.append("")
        if c is None:
            out.append(f"{name}: not readable (see errors)")
            continue
        out.append(f"{name}: {c['manifest']} (data root {c['data_root']})")
        out.append(f"  {c['rows']} patches, {c['patients']} patients, {c['slides']} slides")
        out.append("  classes: " + ", ".join(f"{k} {v}" for k, v in c["classes"].items()))
        out += [f"  site {site}: " + ", ".join(f"{k} {v}" for k, v in row.items())
                for site, row in c["site_class"].items()]
        for col, d in c["extra_columns"].items():
            values = d.get("values")
            listed = ": " + ", ".join(f"{k} {v}" for k, v in values.items()) if values else ""
            out.append(f"  extra column '{col}' (kept): {d['distinct']} distinct{listed}")
        images = ", ".join(f"{k} {v}" for k, v in {**c["image_modes"], **c["image_sizes"]}.items())
        tissue = c["tissue_fraction"]
        if images:
            out.append(f"  images: {images}" + (f"; tissue fraction min {tissue['min']}, median "
                                                 f"{tissue['median']}" if tissue else ""))
    if report["errors"]:
        out += ["", f"ERRORS ({report['n_errors']}):", *format_problems(report["errors"])]
    if report["warnings"]:
        out += ["", f"WARNINGS ({report['n_warnings']}):",
                *format_problems(report["warnings"], WARNINGS_SHOWN_PER_RULE)]
    return "\n".join(out) + "\n"


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pathtrail validate", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
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
    p.add_argument("--workers", type=int, metavar="N", help="threads for the image checks")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--report", metavar="FILE",
                   help="also write the JSON report here (also on failure)")
    return p


def rules_from_args(args: argparse.Namespace) -> Rules:
    """params file (if any) first, then each option given on the command line."""
    from pathtrail.settings import DataParams

    params = Path(args.params or "params.yaml")
    if params.is_file():
        base: dict[str, Any] = Rules.from_params(load_section(params, "data", DataParams)).__dict__
    elif args.params:
        raise PathTrailError(f"params file '{args.params}' not found")
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
               "min_tissue_fraction": args.min_tissue_fraction, "min_per_class": args.min_per_class}
    base.update({k: v for k, v in options.items() if v is not None})
    for key in ("patch_size", "min_per_class", "workers"):
        value = base.get(key) if key != "workers" else args.workers
        if value is not None and value < 1:
            raise PathTrailError(f"--{key.replace('_', '-')} must be >= 1, got {value}")
    return Rules(**base)


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
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return 2
    cohorts = [Cohort(name, Path(path), Path(args.data_root or Path(path).parent))
               for name, path in (("internal", args.internal), ("external", args.external)) if path]
    result = validate_cohorts(cohorts, rules, workers=args.workers)
    sys.stdout.write(canonical_json(result.report) if args.json else format_report(result.report))
    if args.report:
        write_json(result.report, args.report)
    if not result.ok:
        print(f"validation failed: {len(result.errors)} error(s); nothing is usable until they are "
              "fixed", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(validate_command(None))
