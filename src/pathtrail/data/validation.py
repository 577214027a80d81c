"""Validate users' cohorts: every problem at once, each with its line, column, file, rule and fix.

`validate_cohorts` is the one implementation behind both the `validate` stage and the
`pathtrail validate` command. It reads each manifest (CSV with at least the columns path, label,
patient_id, slide_id, site; extra columns are kept and reported) and checks it against the schema
(`pathtrail.data.manifests`, `pathtrail.data.schemas`), checks every file (`pathtrail.data.images`), then the
cohorts as a whole, and returns the validated tables, every problem and a JSON-ready report. It
writes nothing.

Harmless variation is accepted: a UTF-8 BOM, CRLF line endings, any column order, blank lines,
surrounding whitespace in headers, paths and extra cells, trailing empty columns. Spaces
around a label, patient_id, slide_id or site are an error (they read as another class or id). A `label` is the class index
(0..K-1) or the class name from `data.classes`; validated tables store the index.

Policies (params `data.*`, or CLI options): `mode_policy=convert` accepts grayscale/RGBA/palette
images, which the pipeline's readers convert to RGB, and reports each as a warning (`reject`: an
error); `size_policy=resize` accepts other sizes, which the readers resize, as warnings (`reject`:
errors); `tissue_policy=warn|reject` for patches whose tissue fraction (`pathtrail.data.images`) is below
`min_tissue_fraction`. Line numbers are those of the CSV file, the header being line 1.

Budgets (`data.max_image_pixels`, `max_manifest_bytes`, `max_manifest_rows`): only regular files
are opened, and manifests and images over their limits are refused from their `stat` or header,
never read or decoded, so a run stays under ~500 MB whatever the input
(tests/unit/test_validation_budgets.py). The external cohort must not share patients, slides,
image content or (unless `data.allow_shared_site`) sites with the internal one.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Any

import pandas as pd

from pathtrail.data import lookalikes
from pathtrail.data.images import DEFAULT_MAX_PIXELS, default_workers, inspect_files, judge_file
from pathtrail.data.label_columns import label_column_problems, labels_report
from pathtrail.data.manifests import (
    DEFAULT_MAX_MANIFEST_BYTES,
    DEFAULT_MAX_MANIFEST_ROWS,
    Cohort,
    Problem,
    Scope,
    list_lines,
    read_manifest,
    schema_problems,
)
from pathtrail.data.schemas import REQUIRED_COLUMNS, is_safe_path, label_tokens, validated_schema

__all__ = ["Cohort", "Problem", "Rules", "ValidationResult", "validate_cohorts"]


@dataclass(frozen=True)
class Rules:
    """What is checked and which policy applies (defaults = the pipeline's default params)."""

    classes: tuple[str, ...]
    patch_size: int | None = 64  # None: no expected size, but all images must share one size
    mode_policy: str = "convert"
    size_policy: str = "reject"
    min_tissue_fraction: float = 0.05
    tissue_policy: str = "warn"
    min_per_class: int = 5
    duplicate_content: str = "error"  # identical images under two patients: error, or merge
    max_image_pixels: int = DEFAULT_MAX_PIXELS  # larger images are refused from their header
    max_manifest_bytes: int = DEFAULT_MAX_MANIFEST_BYTES  # larger manifests are not read
    max_manifest_rows: int = DEFAULT_MAX_MANIFEST_ROWS  # longer manifests are not checked
    allow_shared_site: bool = False  # may the external cohort come from an internal site?

    @classmethod
    def from_params(cls, data: Any) -> Rules:
        """From the `data` params section (`pathtrail.config.sections.DataParams`)."""
        return cls(tuple(data.classes), data.patch_size, data.mode_policy, data.size_policy,
                   data.min_tissue_fraction, data.tissue_policy, data.min_per_class,
                   data.duplicate_content,
                   data.max_image_pixels, data.max_manifest_bytes, data.max_manifest_rows,
                   data.allow_shared_site)


@dataclass
class ValidationResult:
    tables: dict[str, pd.DataFrame]  # validated tables by cohort; empty when there are errors
    problems: list[Problem]
    report: dict[str, Any]  # JSON-ready, deterministic (no times, no absolute paths added)
    seconds: float = 0.0

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "warning"]

    @property
    def ok(self) -> bool:
        return not self.errors


# -------------------------------------------------------------------------------- file problems
def file_problems(frame: pd.DataFrame, scope: Scope, rules: Rules, workers: int) -> pd.DataFrame:
    """Check every file; return per-row facts (sha256, mode, width, height, tissue) by line."""
    root = scope.cohort.data_root
    facts_frame = pd.DataFrame(index=frame.index, columns=["sha256", "mode", "width", "height",
                                                           "tissue"], dtype=object)
    if not root.is_dir():
        scope.add("error", "data_root_missing",
                  f"the data root '{root.as_posix()}' is not a folder",
                  "pass --data-root (CLI) or set data.data_root to the folder the paths start from")
        return facts_frame
    safe = is_safe_path(frame["path"])
    rels, lines = frame["path"][safe].tolist(), frame.index[safe]
    facts = inspect_files(os.path.realpath(root), rels, workers, rules.max_image_pixels)
    root_text = root.as_posix()
    for line, rel, fact in zip(lines, rels, facts, strict=True):
        for severity, rule, message, hint in judge_file(fact, rules, root_text):
            scope.add(severity, rule, message, hint, line, "path", rel)
    if facts:
        facts_frame.loc[lines] = [[f.sha256, f.mode, f.width, f.height, f.tissue_fraction]
                                  for f in facts]
    if rules.patch_size is None:
        _check_uniform_size(facts_frame, frame, scope)
    return facts_frame


def _check_uniform_size(facts: pd.DataFrame, frame: pd.DataFrame, scope: Scope) -> None:
    decoded = facts["width"].notna()
    sizes = (facts["width"].astype(str) + "x" + facts["height"].astype(str))[decoded]
    if sizes.nunique() > 1:
        common = sizes.value_counts().index[0]
        for line in sizes.index[sizes != common]:
            scope.add("error", "image_size", f"the image is {sizes[line]}, but most are {common}",
                      "export all patches at one size, or give --patch-size", line, "path",
                      frame.at[line, "path"])


def checksum_problems(frame: pd.DataFrame, actual: pd.Series, scope: Scope) -> None:
    """A manifest may carry its own sha256 column: each given value must match the file."""
    given = frame["sha256"].str.lower()
    bad = given.notna() & actual.notna() & (given != actual)
    for line in frame.index[bad]:
        scope.add("error", "sha256_mismatch", f"the file's sha256 is {actual[line]}, the manifest "
                  f"says {frame.at[line, 'sha256']}", "the file changed since the manifest was "
                  "written: restore it, or update the checksum", line, "sha256",
                  frame.at[line, "path"])


# ------------------------------------------------------------------------------ cohort problems
def cohort_problems(frame: pd.DataFrame, labels: pd.Series, scope: Scope, rules: Rules) -> None:
    """Class balance and slide/patient consistency within one cohort."""
    counts = labels.dropna().astype(int).value_counts()
    present = [rules.classes[i] for i in sorted(counts.index)]
    if len(present) < 2:
        scope.add("error", "too_few_classes", f"the cohort has {len(present)} class(es) "
                  f"({', '.join(present) or 'none'}); at least two are needed", "add patches of "
                  "the other classes, or check the label column", column="label")
    for i, name in enumerate(rules.classes):
        n = int(counts.get(i, 0))
        if 0 < n < rules.min_per_class:
            scope.add("error", "too_few_per_class", f"class '{name}' has {n} patches; "
                      f"min_per_class is {rules.min_per_class}", "add patches of this class, or "
                      "lower data.min_per_class", column="label")
        elif n == 0 and len(present) >= 2:
            scope.add("warning", "class_absent", f"class '{name}' has no patches in this cohort",
                      "metrics for this class will be undefined on this cohort", column="label")
    pairs = frame[["slide_id", "patient_id"]].dropna().drop_duplicates()
    shared = pairs["slide_id"][pairs["slide_id"].duplicated()].unique()  # not a loop over slides
    pairs = pairs[pairs["slide_id"].isin(shared)]
    for slide, group in pairs.groupby("slide_id", sort=True):
        if len(group) > 1:
            scope.add("error", "slide_multiple_patients", f"slide '{slide}' is listed under "
                      f"patients {', '.join(sorted(group['patient_id']))} (first on lines "
                      f"{list_lines(group.index)})", "a slide belongs to one patient: fix the "
                      "patient_id or make slide ids unique (e.g. prefix them with the patient id)",
                      line=group.index.min(), column="slide_id")
    duplicate_content_problems(frame, labels, scope, rules)


_SHOW_COPIES = 5


def duplicate_content_problems(frame: pd.DataFrame, labels: pd.Series, scope: Scope,
                               rules: Rules) -> None:
    """Identical bytes (sha256) on several lines: one image, so one label and one patient.

    Different labels: an error. Different patients: an error, or with `duplicate_content=merge` a
    warning (the split keeps every patient, slide and image linked this way in one split, see
    `pathtrail.data.splits.split_groups`). Copies within one patient and label: a warning.
    Tested in tests/unit/test_content_identity.py.
    """
    sha = frame["sha256"].dropna()
    for _, group in sha.groupby(sha, sort=True):
        if len(group) < 2:
            continue
        lines = sorted(group.index)
        first = lines[0]
        names = [rules.classes[int(labels[i])] if pd.notna(labels[i]) else str(frame.at[i, "label"])
                 for i in lines]
        patients = sorted(set(frame.loc[lines, "patient_id"].dropna()))
        copies = "; ".join(f"line {i} '{frame.at[i, 'path']}' ({name}, patient "
                           f"'{frame.at[i, 'patient_id']}')"
                           for i, name in list(zip(lines, names))[:_SHOW_COPIES])
        copies += f"; ... ({len(lines)} in all)" if len(lines) > _SHOW_COPIES else ""
        where = {"line": first, "column": "path", "file": frame.at[first, "path"]}
        valid = sorted({rules.classes[int(labels[i])] for i in lines if pd.notna(labels[i])})
        if len(valid) > 1:  # an invalid label has its own error
            scope.add("error", "duplicate_content_labels", "identical image content with "
                      f"different labels ({', '.join(valid)}): {copies}", "one image "
                      "has one label: correct the wrong label, or remove the copy that was filed "
                      "under the wrong patient or class", column="label",
                      **{k: v for k, v in where.items() if k != "column"})
        elif len(patients) > 1 and rules.duplicate_content == "error":
            scope.add("error", "duplicate_content_patients", "identical image content under "
                      f"{len(patients)} patients: {copies}", "remove the copy filed under the "
                      "wrong patient, or fix its patient_id; if the patients really share these "
                      "images, set data.duplicate_content: merge to keep them in one split",
                      **where)
        elif len(patients) > 1:
            scope.add("warning", "duplicate_content_patients", "identical image content under "
                      f"{len(patients)} patients, which the split keeps together "
                      f"(data.duplicate_content: merge): {copies}", "remove the copies, or fix "
                      "the patient_id of the misfiled ones", **where)
        else:
            scope.add("warning", "duplicate_content", f"identical image content on lines "
                      f"{list_lines(group.index)}", "remove the copies; identical patches can leak "
                      "between train and test", **where)


def cross_cohort_problems(frames: dict[str, pd.DataFrame], scopes: dict[str, Scope],
                          allow_shared_site: bool = False) -> None:
    """Internal and external must be disjoint: patients, slides, image content, and (unless
    `allow_shared_site`) sites: an external test set comes from another site."""
    if not {"internal", "external"} <= frames.keys():
        return
    internal, external = frames["internal"], frames["external"]
    what = {"patient_id": ("patient_in_both_cohorts", "patient"),
            "slide_id": ("slide_in_both_cohorts", "slide"),
            "sha256": ("image_in_both_cohorts", "identical image content")}
    if not allow_shared_site:
        what["site"] = ("site_in_both_cohorts", "site")
    other = scopes["external"].cohort.manifest.as_posix()
    for column, (rule, noun) in what.items():
        if column not in internal or column not in external:
            continue
        first_ext = external[column].dropna().reset_index().groupby(column)["line"].min()
        first_int = internal[column].dropna().reset_index().groupby(column)["line"].min()
        for value in sorted(set(first_int.index) & set(first_ext.index)):
            line, ext_line = first_int[value], first_ext[value]
            shown = f"{noun} '{value}'" if column != "sha256" else noun
            extra = f" ('{external.at[ext_line, 'path']}')" if column == "sha256" else ""
            hint = ("take the external cohort from another site (an external test measures how "
                    "the model transfers), or set data.allow_shared_site / --allow-shared-site"
                    if column == "site" else "remove it from one cohort: an external test set "
                    "must not share patients, slides or images")
            scopes["internal"].add(
                "error", rule, f"{shown} is also in the external manifest '{other}' (line "
                f"{ext_line}{extra}); the external cohort must be independent", hint,
                line, column if column != "sha256" else "path", internal.at[line, "path"])


# ------------------------------------------------------------------------------------ the report
def cohort_summary(frame: pd.DataFrame, labels: pd.Series, facts: pd.DataFrame,
                   cohort: Cohort, classes: tuple[str, ...]) -> dict[str, Any]:
    names = pd.Series([classes[int(i)] if pd.notna(i) else "(invalid)" for i in labels],
                      index=labels.index, dtype="str")
    site = frame["site"].fillna("(empty)")
    extras = [c for c in frame.columns if c not in (*REQUIRED_COLUMNS, "sha256")]
    decoded = facts[facts["mode"].notna()]
    tissue = pd.to_numeric(decoded["tissue"], errors="coerce").dropna()
    return {
        "manifest": cohort.manifest.as_posix(),
        "data_root": cohort.data_root.as_posix(),
        "rows": len(frame),
        "patients": int(frame["patient_id"].nunique()),
        "slides": int(frame["slide_id"].nunique()),
        "classes": {c: int((names == c).sum()) for c in classes},
        "sites": {s: int(n) for s, n in site.value_counts().sort_index().items()},
        "site_class": {s: {c: int(((site == s) & (names == c)).sum()) for c in classes}
                       for s in sorted(site.unique())},
        "extra_columns": {c: _describe_column(frame[c]) for c in extras},
        "image_modes": dict(sorted(Counter(decoded["mode"]).items())),
        "image_sizes": dict(sorted(Counter(f"{w}x{h}" for w, h in
                                           zip(decoded["width"], decoded["height"])).items())),
        "tissue_fraction": {"min": round(float(tissue.min()), 4),
                            "median": round(float(tissue.median()), 4)} if len(tissue) else None,
    }


def _describe_column(values: pd.Series) -> dict[str, Any]:
    counts = values.value_counts()
    out: dict[str, Any] = {"distinct": len(counts), "empty": int(values.isna().sum())}
    if len(counts) <= 20:
        out["values"] = {str(k): int(v) for k, v in counts.sort_index().items()}
    return out


REPORT_ENTRIES_PER_RULE = 1000  # per cohort; the rest are counted (a bounded report, and memory)


def _listed(problems: list[Problem], severity: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The first REPORT_ENTRIES_PER_RULE entries of each (cohort, rule), and how many were left out."""
    seen: Counter[tuple[Any, str]] = Counter()
    listed, omitted = [], {}
    for p in problems:
        if p.severity != severity:
            continue
        seen[p.cohort, p.rule] += 1
        if seen[p.cohort, p.rule] <= REPORT_ENTRIES_PER_RULE:
            listed.append(p.to_dict())
        else:
            omitted.setdefault(str(p.cohort), {})[p.rule] = seen[p.cohort, p.rule] - REPORT_ENTRIES_PER_RULE
    return listed, omitted


def build_report(result_problems: list[Problem], summaries: dict[str, Any],
                 rules: Rules) -> dict[str, Any]:
    errors, errors_omitted = _listed(result_problems, "error")
    warnings, warnings_omitted = _listed(result_problems, "warning")
    counts = {s: Counter(p.rule for p in result_problems if p.severity == s) for s in ("error", "warning")}
    return {
        "status": "failed" if errors else "ok",
        "rules": {**asdict(rules), "classes": list(rules.classes)},
        "tissue_definition": "a pixel is tissue when its darkest RGB channel is < 215 or its "
                             "channel mean is < 220",
        "cohorts": summaries,
        "n_errors": sum(counts["error"].values()),
        "n_warnings": sum(counts["warning"].values()),
        "error_counts": dict(sorted(counts["error"].items())),
        "warning_counts": dict(sorted(counts["warning"].items())),
        "errors": errors,
        "warnings": warnings,
        "omitted": {"per_rule_listed": REPORT_ENTRIES_PER_RULE, "errors": errors_omitted,
                    "warnings": warnings_omitted},
    }


# ------------------------------------------------------------------------------ the whole check
def validate_cohorts(cohorts: list[Cohort], rules: Rules, workers: int | None = None,
                     label_columns: tuple[str, ...] = ()) -> ValidationResult:
    """Check every cohort (manifest, files, classes) and the cohorts against each other.

    Returns the validated tables (only when there is no error), every problem, and the report.
    """
    t0 = time.monotonic()
    workers = workers or default_workers()
    tokens = label_tokens(rules.classes)
    scopes = {c.name: Scope(c) for c in cohorts}
    frames, labels, summaries = {}, {}, {}
    for cohort in cohorts:
        scope = scopes[cohort.name]
        frame = read_manifest(scope, rules.max_manifest_bytes, rules.max_manifest_rows)
        if frame is None:
            summaries[cohort.name] = None
            continue
        schema_problems(frame, scope, rules.classes)
        label_column_problems(frame, scope, label_columns)  # multilabel: the 0/1 columns
        lookalikes.text_problems(frame, scope)
        if not set(REQUIRED_COLUMNS) <= set(frame.columns):
            summaries[cohort.name] = None
            continue
        facts = file_problems(frame, scope, rules, workers)
        if "sha256" in frame:
            checksum_problems(frame, facts["sha256"], scope)
        frame["sha256"] = facts["sha256"]
        labels[cohort.name] = frame["label"].map(tokens).astype("Int64")
        cohort_problems(frame, labels[cohort.name], scope, rules)
        lookalikes.within_cohort_problems(frame, scope)
        frames[cohort.name] = frame
        summaries[cohort.name] = cohort_summary(frame, labels[cohort.name], facts, cohort,
                                                rules.classes)
    cross_cohort_problems(frames, scopes, rules.allow_shared_site)
    lookalikes.across_cohort_problems(frames, scopes, rules.allow_shared_site)
    problems = [p for s in scopes.values()  # by cohort, then by line (file-level first)
                for p in sorted(s.problems, key=lambda p: (p.line is not None, p.line or 0))]
    report = build_report(problems, summaries, rules) | labels_report(label_columns)
    tables = {}
    if not report["n_errors"]:
        tables = {name: validated_table(frame, labels[name], len(rules.classes))
                  for name, frame in frames.items()}
    return ValidationResult(tables, problems, report, time.monotonic() - t0)


def validated_table(frame: pd.DataFrame, labels: pd.Series, n_classes: int) -> pd.DataFrame:
    """path, label (index), patient_id, slide_id, site, sha256, extra columns; sorted by path."""
    extras = [c for c in frame.columns if c not in (*REQUIRED_COLUMNS, "sha256")]
    table = frame.assign(label=labels.astype("int64"))[[*REQUIRED_COLUMNS, "sha256", *extras]]
    table = table.astype({"sha256": "str"}).sort_values("path").reset_index(drop=True)
    return validated_schema(n_classes, extras).validate(table)
