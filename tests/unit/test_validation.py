"""`pathtrail validate` on a corpus of bad inputs: every problem found, located, explained;
nothing written.

Most cases call `validate_command` in-process (fast); a representative subset runs the CLI as a
subprocess to prove that users see no traceback and get the right exit status.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from conftest import write_params
from pathtrail.cli.validate import validate_command
from pathtrail.data.images import inspect_file, tissue_fraction
from pathtrail.data.validation import Cohort, Rules, validate_cohorts

COLUMNS = ["path", "label", "patient_id", "slide_id", "site"]
SIZE = 16
BASE_ARGS = ["--classes", "benign,tumour", "--patch-size", str(SIZE), "--min-per-class", "2"]


def png(path: Path, seed: int, mode: str = "RGB", size: int = SIZE) -> Path:
    """A small, unique, tissue-like (pinkish, far from white) patch."""
    rng = np.random.default_rng(seed)
    rgb = rng.integers(90, 200, (size, size, 3), dtype=np.uint8)
    img = Image.fromarray(rgb).convert(mode) if mode != "RGB" else Image.fromarray(rgb)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, format="PNG")
    return path


class Corpus:
    """Two clean cohorts (4 patients x 2 patches, two classes) under tmp/data; edit, then run."""

    def __init__(self, tmp: Path):
        self.tmp, self.root = tmp, tmp / "data"
        self.rows: dict[str, list[list[str]]] = {"internal": [], "external": []}
        for cohort, prefix, seed0 in (("internal", "i", 0), ("external", "e", 100)):
            for p in range(4):
                for k in range(2):
                    rel = f"{cohort}/{prefix}{p}_{k}.png"
                    png(self.root / rel, seed0 + 10 * p + k)
                    label = "benign" if p < 2 else "1"  # names and indices both accepted
                    self.rows[cohort].append([rel, label, f"{prefix}P{p}", f"{prefix}S{p}", cohort])

    def manifest(self, cohort: str, header=COLUMNS, rows=None) -> Path:
        rows = self.rows[cohort] if rows is None else rows
        path = self.root / f"{cohort}.csv"
        path.write_text("\n".join(",".join(r) for r in [header, *rows]) + "\n", encoding="utf-8")
        return path

    def args(self, external: bool = True) -> list[str]:
        out = ["--internal", str(self.manifest("internal"))]
        return out + (["--external", str(self.manifest("external"))] if external else [])


@pytest.fixture
def corpus(tmp_path, monkeypatch) -> Corpus:
    monkeypatch.chdir(tmp_path)  # no params.yaml here: options give classes and policies
    return Corpus(tmp_path)


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {p.relative_to(folder).as_posix(): (p.lstat().st_size, p.lstat().st_mtime_ns)
            for p in folder.rglob("*")}


def run(corpus: Corpus, capsys, *args: str, external: bool = True) -> tuple[int, dict]:
    """Run in-process with --json; assert no traceback and that nothing was written."""
    paths = corpus.args(external) if "--internal" not in args else []
    before = snapshot(corpus.tmp)
    rc = validate_command([*paths, *BASE_ARGS, *args, "--json"])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    assert snapshot(corpus.tmp) == before, "validation must not write anything"
    return rc, json.loads(out)


def find(report: dict, rule: str, severity: str = "error", **where) -> dict:
    hits = [p for p in report[severity + "s"] if p["rule"] == rule
            and all(p[k] == v for k, v in where.items())]
    assert hits, f"no {severity} {rule} at {where}; got {report[severity + 's']}"
    assert hits[0]["message"] and hits[0]["hint"]
    return hits[0]


def test_clean_corpus_is_usable(corpus, capsys):
    rc, report = run(corpus, capsys)
    assert rc == 0 and report["status"] == "ok" and report["n_errors"] == 0
    internal = report["cohorts"]["internal"]
    assert internal["rows"] == 8 and internal["patients"] == 4
    assert internal["classes"] == {"benign": 4, "tumour": 4}
    assert internal["site_class"] == {"internal": {"benign": 4, "tumour": 4}}


def test_human_report_names_line_column_file_rule_and_fix(corpus, capsys):
    corpus.rows["internal"][2][0] = "internal/missing.png"
    rc = validate_command([*corpus.args(), *BASE_ARGS])
    out, err = capsys.readouterr()
    assert rc == 1 and "FAILED" in out and "validation failed" in err
    entry = next(line for line in out.splitlines() if "[file_missing]" in line)
    assert "line 4" in entry and "column 'path'" in entry and "internal/missing.png" in entry
    assert "fix:" in out


@pytest.mark.parametrize("case, rule", [
    ("missing", "file_missing"),
    ("truncated", "image_decode"),
    ("not_an_image", "image_decode"),
    ("zero_bytes", "file_empty"),
    ("folder", "not_a_file"),
])
def test_broken_files(corpus, capsys, case, rule):
    target = corpus.root / "internal/i0_1.png"
    if case == "missing":
        target.unlink()
    elif case == "truncated":
        target.write_bytes(target.read_bytes()[: target.stat().st_size // 2])
    elif case == "not_an_image":
        target.write_text("path,label\nthis is a CSV, not a PNG\n")
    elif case == "zero_bytes":
        target.write_bytes(b"")
    else:
        target.unlink()
        target.mkdir()
    rc, report = run(corpus, capsys)
    assert rc == 1
    problem = find(report, rule, line=3, column="path", file="internal/i0_1.png",
                   manifest=corpus.manifest("internal").as_posix())
    if case == "not_an_image":
        assert "not an image" in problem["message"]


@pytest.mark.parametrize("mode", ["L", "RGBA"])
def test_non_rgb_images_follow_mode_policy(corpus, capsys, mode):
    png(corpus.root / "internal/i1_0.png", 7, mode=mode)
    rc, report = run(corpus, capsys, "--mode-policy", "convert")
    assert rc == 0
    find(report, "image_mode", "warning", line=4, file="internal/i1_0.png")
    assert report["cohorts"]["internal"]["image_modes"] == {"RGB": 7, mode: 1}
    rc, report = run(corpus, capsys, "--mode-policy", "reject")
    assert rc == 1
    assert mode in find(report, "image_mode", line=4, column="path")["message"]


def test_16_bit_images_are_rejected_under_any_policy(corpus, capsys):
    Image.fromarray(np.full((SIZE, SIZE), 30000, np.uint16)).save(corpus.root / "internal/i1_0.png")
    rc, report = run(corpus, capsys, "--mode-policy", "convert")
    assert rc == 1
    find(report, "image_mode_unsupported", line=4)


def test_wrong_size_follows_size_policy(corpus, capsys):
    png(corpus.root / "internal/i2_1.png", 5, size=SIZE * 2)
    rc, report = run(corpus, capsys)
    assert rc == 1
    assert "32x32, expected 16x16" in find(report, "image_size", line=7)["message"]
    rc, report = run(corpus, capsys, "--size-policy", "resize")
    assert rc == 0
    find(report, "image_size", "warning", line=7)


def test_mixed_sizes_without_a_patch_size(corpus, capsys):
    png(corpus.root / "internal/i2_1.png", 5, size=SIZE * 2)
    rc = validate_command([*corpus.args(), "--classes", "benign,tumour", "--min-per-class", "2",
                           "--json"])
    report = json.loads(capsys.readouterr().out)
    assert rc == 1
    assert "most are 16x16" in find(report, "image_size", line=7)["message"]


def test_low_tissue_follows_tissue_policy(corpus, capsys):
    Image.new("RGB", (SIZE, SIZE), (242, 240, 244)).save(corpus.root / "internal/i3_0.png")
    rc, report = run(corpus, capsys)
    assert rc == 0
    find(report, "low_tissue", "warning", line=8)
    rc, report = run(corpus, capsys, "--tissue-policy", "reject")
    assert rc == 1
    find(report, "low_tissue", line=8)


@pytest.mark.parametrize("text, rule", [
    ("", "manifest_empty"),
    ("path,label,patient_id,slide_id,site\n", "manifest_no_rows"),
    ("path,label,patient_id,slide_id,site\r\n\r\n", "manifest_no_rows"),
])
def test_empty_manifests(corpus, capsys, text, rule):
    (corpus.root / "internal.csv").write_text(text)
    rc, report = run(corpus, capsys, "--internal", str(corpus.root / "internal.csv"))
    assert rc == 1
    find(report, rule, cohort="internal")
    assert report["cohorts"]["internal"] is None


@pytest.mark.parametrize("content, rule", [
    (b"path;label;patient_id;slide_id;site\na.png;0;p;s;x\n", "manifest_separator"),
    (b"path,path,label,patient_id,slide_id,site\na,b,0,p,s,x\n", "column_duplicate"),
    (b"\x89PNG\r\n\x1a\n\x00\xff\xfe", "manifest_encoding"),
    (None, "manifest_unreadable"),
])
def test_unusable_manifests(corpus, capsys, content, rule):
    path = corpus.root / "internal.csv"
    if content is None:
        path.mkdir()
    else:
        path.write_bytes(content)
    rc, report = run(corpus, capsys, "--internal", str(path))
    assert rc == 1
    find(report, rule, cohort="internal")


def test_missing_manifest(corpus, capsys):
    rc, report = run(corpus, capsys, "--internal", "nowhere.csv")
    assert rc == 1
    find(report, "manifest_missing", manifest="nowhere.csv")


def test_missing_column_is_named_with_a_hint(corpus, capsys):
    rows = [r[:4] for r in corpus.rows["internal"]]
    header = ["path", "label", "patient_id", "Slide_ID"]
    path = corpus.manifest("internal", header=header, rows=rows)
    rc, report = run(corpus, capsys, "--internal", str(path))
    assert rc == 1
    find(report, "column_missing", line=1, column="site")
    assert "rename column 'Slide_ID'" in find(report, "column_missing", column="slide_id")["hint"]


def test_unknown_extra_column_is_kept_and_reported(corpus, capsys):
    rows = [[*r, f"scanner_{'ab'[i % 2]}"] for i, r in enumerate(corpus.rows["internal"])]
    corpus.manifest("internal", header=[*COLUMNS, "scanner"], rows=rows)
    rc, report = run(corpus, capsys, "--internal", str(corpus.root / "internal.csv"))
    assert rc == 0
    assert report["cohorts"]["internal"]["extra_columns"]["scanner"]["values"] == {
        "scanner_a": 4, "scanner_b": 4}
    result = validate_cohorts([Cohort("internal", corpus.root / "internal.csv", corpus.root)],
                              Rules(("benign", "tumour"), SIZE, min_per_class=2))
    table = result.tables["internal"]
    assert list(table.columns) == ["path", "label", "patient_id", "slide_id", "site", "sha256",
                                   "scanner"]
    assert table["label"].tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    assert table["path"].is_monotonic_increasing


@pytest.mark.parametrize("column, index, value, rule", [
    ("patient_id", 2, "", "empty_value"),
    ("patient_id", 2, "   ", "empty_value"),
    ("label", 1, "malignant", "label_unknown"),
    ("label", 1, "2", "label_unknown"),
    ("path", 0, "../outside.png", "path_escapes_root"),
    ("path", 0, "internal/../../outside.png", "path_escapes_root"),
    ("path", 0, "/etc/hostname", "path_absolute"),
    ("path", 0, "internal\\i0_0.png", "path_backslash"),
])
def test_bad_cells(corpus, capsys, column, index, value, rule):
    row = corpus.rows["internal"][3]
    row[COLUMNS.index(column)] = value
    rc, report = run(corpus, capsys)
    assert rc == 1
    problem = find(report, rule, line=5, column=column)
    assert value.strip() in problem["message"] or rule == "empty_value"


def test_duplicate_path_names_both_lines(corpus, capsys):
    corpus.rows["internal"][5][0] = corpus.rows["internal"][1][0]
    rc, report = run(corpus, capsys)
    assert rc == 1
    problem = find(report, "duplicate_path", line=7, column="path", file="internal/i0_1.png")
    assert "lines 3, 7" in problem["message"]
    corpus.rows["internal"][5][0] = "./internal//i0_1.png"  # the same file, spelled differently
    rc, report = run(corpus, capsys)
    find(report, "duplicate_path", line=7)


def test_symlink_out_of_the_root(corpus, capsys, tmp_path):
    outside = png(tmp_path / "elsewhere" / "secret.png", 99)
    link = corpus.root / "internal" / "link.png"
    link.symlink_to(outside)
    corpus.rows["internal"][0][0] = "internal/link.png"
    rc, report = run(corpus, capsys)
    assert rc == 1
    find(report, "path_outside_root", line=2, column="path", file="internal/link.png")


def test_symlink_inside_the_root_is_fine(corpus, capsys):
    (corpus.root / "internal" / "link.png").symlink_to(corpus.root / "internal" / "i0_1.png")
    corpus.rows["internal"][0][0] = "internal/link.png"
    rc, report = run(corpus, capsys)
    assert rc == 0
    find(report, "duplicate_content", "warning")  # the link and the file are one image, twice


def test_cohort_integrity(corpus, capsys):
    corpus.rows["external"][0][2] = "iP3"  # a patient in both cohorts
    corpus.rows["external"][1][3] = "iS1"  # a slide in both cohorts
    corpus.rows["internal"][7][3] = "iS0"  # one slide, two patients (iP0 and iP3)
    rel = corpus.rows["external"][2][0]
    (corpus.root / rel).write_bytes((corpus.root / "internal/i2_0.png").read_bytes())
    rc, report = run(corpus, capsys)
    assert rc == 1
    assert "iP3" in find(report, "patient_in_both_cohorts", line=8, column="patient_id")["message"]
    find(report, "slide_in_both_cohorts", line=4, column="slide_id")
    problem = find(report, "image_in_both_cohorts", line=6, file="internal/i2_0.png")
    assert rel in problem["message"] and "line 4" in problem["message"]
    problem = find(report, "slide_multiple_patients", cohort="internal", line=2, column="slide_id")
    assert "iP0, iP3" in problem["message"] and "first on lines 2, 9" in problem["message"]


def test_single_class_and_too_few_per_class(corpus, capsys):
    for row in corpus.rows["internal"]:
        row[1] = "0"
    rc, report = run(corpus, capsys)
    assert rc == 1
    assert "benign" in find(report, "too_few_classes", cohort="internal", column="label")["message"]
    corpus.rows["internal"][0][1] = "tumour"
    rc, report = run(corpus, capsys)
    problem = find(report, "too_few_per_class", cohort="internal")
    assert "'tumour' has 1 patches" in problem["message"]


def test_every_problem_at_once(corpus, capsys):
    rows = corpus.rows["internal"]
    rows[0][0] = "internal/nope.png"  # line 2
    rows[1][1] = "cat"  # line 3
    rows[2][2] = ""  # line 4
    rows[3][0] = "/abs.png"  # line 5
    (corpus.root / rows[4][0]).write_bytes(b"")  # line 6
    rc, report = run(corpus, capsys)
    assert rc == 1
    got = {(p["rule"], p["line"]) for p in report["errors"]}
    assert {("file_missing", 2), ("label_unknown", 3), ("empty_value", 4), ("path_absolute", 5),
            ("file_empty", 6)} <= got


def test_harmless_variation_gives_the_same_table(corpus, capsys):
    clean = validate_cohorts([Cohort("internal", corpus.manifest("internal"), corpus.root)],
                             Rules(("benign", "tumour"), SIZE, min_per_class=2))
    order = [3, 0, 4, 1, 2]
    lines = [", ".join(f"  {[*COLUMNS][i]} " for i in order)]
    # spaces around paths and headers are harmless; around labels and ids they are errors
    # (tests/unit/test_validation_messages.py)
    pad = {0: lambda v: f" {v}  "}
    lines += [",".join(pad.get(i, str)(r[i]) for i in order) for r in reversed(corpus.rows["internal"])]
    text = "\ufeff" + "\r\n".join(lines[:3] + [""] + lines[3:]) + "\r\n"
    (corpus.root / "messy.csv").write_bytes(text.encode("utf-8"))
    messy = validate_cohorts([Cohort("internal", corpus.root / "messy.csv", corpus.root)],
                             Rules(("benign", "tumour"), SIZE, min_per_class=2))
    assert messy.ok, messy.problems
    pd.testing.assert_frame_equal(messy.tables["internal"], clean.tables["internal"])


def test_ragged_rows_are_reported_by_line(corpus, capsys):
    path = corpus.manifest("internal")
    text = path.read_text().splitlines()
    text[3] += ",extra,cells"
    text[5] = text[5].rsplit(",", 1)[0]
    path.write_text("\n".join(text) + "\n")
    rc, report = run(corpus, capsys, "--internal", str(path))
    assert rc == 1
    assert "has 7 fields" in find(report, "field_count", line=4)["message"]
    find(report, "field_count", line=6)


def test_data_root_option_and_default(corpus, capsys, tmp_path):
    rows = [[f"data/{r[0]}", *r[1:]] for r in corpus.rows["internal"]]
    path = corpus.manifest("internal", rows=rows)
    moved = tmp_path / "elsewhere.csv"
    path.rename(moved)
    rc, report = run(corpus, capsys, "--internal", str(moved), "--data-root", str(tmp_path))
    assert rc == 0
    rc, report = run(corpus, capsys, "--internal", str(moved), "--data-root", "no/such/dir")
    assert rc == 1
    find(report, "data_root_missing")


def test_classes_come_from_params_or_options(corpus, capsys, tmp_path, repo_params):
    rc = validate_command(corpus.args())
    err = capsys.readouterr().err
    assert rc == 2 and "--classes" in err and "Traceback" not in err
    assert repo_params["data"]["classes"] == ["benign", "tumour"] and repo_params["data"]["patch_size"] == 64
    write_params(tmp_path, repo_params)  # the committed params, as a fresh clone has them
    rc = validate_command([*corpus.args(), "--min-per-class", "2", "--json"])
    report = json.loads(capsys.readouterr().out)
    assert rc == 1 and report["rules"]["patch_size"] == 64  # our 16 px patches: wrong size
    rc = validate_command([*corpus.args(), "--min-per-class", "2", "--patch-size", "16"])
    capsys.readouterr()
    assert rc == 0


def test_report_option_writes_only_there(corpus, capsys, tmp_path):
    corpus.rows["internal"][0][0] = "internal/nope.png"
    rc = validate_command([*corpus.args(), *BASE_ARGS, "--report", str(tmp_path / "r/fail.json")])
    capsys.readouterr()
    report = json.loads((tmp_path / "r/fail.json").read_text())
    assert rc == 1 and report["status"] == "failed" and report["n_errors"] == 1


def test_tissue_fraction_definition():
    img = np.full((4, 4, 3), 240, np.uint8)
    img[0, :] = (230, 230, 200)  # darkest channel 200 < 215: tissue
    img[1, :] = (216, 216, 216)  # mean 216 < 220: tissue
    img[2, :] = (216, 230, 230)  # darkest 216, mean 225: background
    assert tissue_fraction(img) == 0.5


def test_inspect_file_records_the_sha256(tmp_path):
    path = png(tmp_path / "a.png", 1)
    facts = inspect_file(os.path.realpath(tmp_path), "a.png")
    import hashlib
    assert facts.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert (facts.mode, facts.width, facts.height, facts.problem) == ("RGB", SIZE, SIZE, None)


# ------------------------------------------------------------------ the CLI as users run it
def cli(tmp: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, "-m", "pathtrail.cli.validate", *args], cwd=tmp,
                          capture_output=True, text=True, env=env, timeout=120, check=False)


def test_cli_subprocess_many_problems(corpus):
    rows = corpus.rows["internal"]
    rows[0][0] = "internal/nope.png"
    target = corpus.root / rows[1][0]
    target.write_bytes(target.read_bytes()[:60])  # truncated PNG
    (corpus.root / rows[2][0]).write_text("not an image")
    rows[3][0] = "../escape.png"
    (corpus.root / "internal/link.png").symlink_to(corpus.tmp / "elsewhere.png")
    png(corpus.tmp / "elsewhere.png", 3)
    rows[4][0] = "internal/link.png"
    rows[5][2] = ""
    rows[6][1] = "unknown"
    corpus.rows["external"][0][2] = "iP0"
    args = corpus.args()
    before = snapshot(corpus.tmp)
    proc = cli(corpus.tmp, *args, *BASE_ARGS)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert snapshot(corpus.tmp) == before
    expected = [("file_missing", 2, "internal/nope.png"), ("image_decode", 3, "internal/i0_1.png"),
                ("image_decode", 4, "internal/i1_0.png"), ("path_escapes_root", 5, "../escape.png"),
                ("path_outside_root", 6, "internal/link.png"), ("empty_value", 7, "patient_id"),
                ("label_unknown", 8, "label"), ("patient_in_both_cohorts", 2, "patient_id")]
    entries = [line for line in proc.stdout.splitlines() if line.startswith("  internal manifest")]
    for rule, line, name in expected:
        assert any(f"[{rule}]" in e and f"line {line}," in e and name in e for e in entries), rule


@pytest.mark.parametrize("setup, rc, needle", [
    ("empty", 1, "[manifest_empty]"),
    ("header_only", 1, "[manifest_no_rows]"),
    ("no_classes", 2, "--classes"),
    ("clean", 0, "OK (0 errors"),
])
def test_cli_subprocess_exit_status(corpus, setup, rc, needle):
    args = [*corpus.args(external=False), *BASE_ARGS]
    if setup == "empty":
        (corpus.root / "internal.csv").write_bytes(b"")
    elif setup == "header_only":
        (corpus.root / "internal.csv").write_text(",".join(COLUMNS) + "\n")
    elif setup == "no_classes":
        args = corpus.args(external=False)
    before = snapshot(corpus.tmp)
    proc = cli(corpus.tmp, *args)
    assert proc.returncode == rc, proc.stdout + proc.stderr
    assert needle in proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert snapshot(corpus.tmp) == before
