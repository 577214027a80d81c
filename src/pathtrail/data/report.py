"""The readable form of a validation report (what `pathtrail validate` and the validate stage print)."""

from __future__ import annotations

from collections import Counter
from typing import Any

from pathtrail.core.text import printable
from pathtrail.data.manifests import Problem

WARNINGS_SHOWN_PER_RULE = 20
ERRORS_SHOWN_PER_RULE = 10  # more of one rule are counted, not listed (all are in the JSON report)


def format_problems(problems: list[dict[str, Any]], per_rule: int | None = None,
                    cohorts: dict[str, Any] | None = None,
                    omitted: dict[str, dict[str, int]] | None = None,
                    rest: str = "see the JSON report") -> list[str]:
    """One readable entry per problem; with `per_rule`, at most that many of each rule, after a
    summary line for each rule that repeats more often (test_validation_messages). `omitted`:
    entries the report left out, by cohort and rule (counted in the summary). `rest`: where the
    unlisted ones are (the JSON report's path, or how to get one)."""
    shown: Counter[str] = Counter()
    lines, hidden = [], Counter()
    for by_rule in (omitted or {}).values():
        hidden.update(by_rule)
    for p in problems:
        shown[p["rule"]] += 1
        if per_rule is not None and shown[p["rule"]] > per_rule:
            hidden[p["rule"]] += 1
            continue
        lines += ("  " + Problem(**p).format()).split("\n")  # its only raw newline: before "fix:"
    lines += [f"  ... and {n} more '{rule}' ({rest})"
              for rule, n in sorted(hidden.items())]
    return repeated_summary(problems, per_rule, cohorts or {}, omitted or {}) + lines


def repeated_summary(problems: list[dict[str, Any]], per_rule: int | None,
                     cohorts: dict[str, Any], omitted: dict[str, dict[str, int]]) -> list[str]:
    """One line per (cohort, rule) that repeats: "792 files missing under the data root ...".

    Many missing files usually mean one wrong data root, so that case asks about it.
    """
    counts = Counter((p["cohort"], p["rule"]) for p in problems)
    for cohort, by_rule in omitted.items():
        for rule, n in by_rule.items():
            counts[cohort, rule] += n
    out = []
    for (cohort, rule), n in counts.items():  # in the report's order: by cohort, then by line
        summary = cohorts.get(cohort) or {}
        if rule == "file_missing" and (n > (per_rule or 0) or n == summary.get("rows", 0) > 1):
            of = f" (of {summary['rows']})" if "rows" in summary else ""
            out.append(f"  {cohort}: {n} files{of} missing under the data root "
                       f"'{summary.get('data_root', '?')}' - is --data-root (data.data_root) right?")
        elif per_rule is not None and n > per_rule:
            out.append(f"  {cohort}: {n} x [{rule}] (the first {per_rule} are listed)")
    return out


def format_report(report: dict[str, Any], rest: str = "see the JSON report") -> str:
    """The readable form of a validation report (the JSON's content, warnings capped per rule);
    `rest` says where the problems not listed are (`format_problems`)."""
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
        out += ["", f"ERRORS ({report['n_errors']}):",
                *format_problems(report["errors"], ERRORS_SHOWN_PER_RULE, report["cohorts"],
                                 report["omitted"]["errors"], rest)]
    if report["warnings"]:
        out += ["", f"WARNINGS ({report['n_warnings']}):",
                *format_problems(report["warnings"], WARNINGS_SHOWN_PER_RULE, report["cohorts"],
                                 report["omitted"]["warnings"], rest)]
    return "\n".join(printable(line) for line in out) + "\n"  # user strings cannot forge lines or colours


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")
