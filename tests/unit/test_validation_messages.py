"""`pathtrail validate`'s messages: printable, right about encodings and errnos, summarised when
repeated; spaces around labels and ids and an external cohort from an internal site are errors."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys

import pytest
from test_validation import BASE_ARGS, COLUMNS, Corpus, find, png, run, snapshot

from pathtrail.cli.validate import validate_command
from pathtrail.data.access import explain_os_error
from pathtrail.data.report import ERRORS_SHOWN_PER_RULE


@pytest.fixture
def corpus(tmp_path, monkeypatch) -> Corpus:
    monkeypatch.chdir(tmp_path)
    return Corpus(tmp_path)


def human(corpus: Corpus, capsys, *args: str) -> tuple[int, str, str]:
    """In-process, readable report; asserts no traceback and nothing written."""
    paths = corpus.args() if "--internal" not in args else []
    before = snapshot(corpus.tmp)
    rc = validate_command([*paths, *BASE_ARGS, *args])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    assert snapshot(corpus.tmp) == before
    return rc, out, err


HOSTILE = "evil\n\x1b[31mERRORS (0):\r\u202e\x07"  # a forged line, a colour, a bidi override, BEL


def assert_inert(text: str) -> None:
    for raw in ("\x1b", "\r", "\u202e", "\x07"):
        assert raw not in text, repr(raw)
    assert not any(line.startswith(("\x1b", "ERRORS (0)"))
                   for line in text.splitlines())


def test_control_characters_in_sites_paths_and_labels_are_escaped(corpus, capsys):
    rows = corpus.rows["internal"]
    for r in rows[:4]:
        r[4] = f'"{HOSTILE}"'  # a quoted CSV cell may hold any character
    rows[5][0] = f'"internal/{HOSTILE}.png"'  # missing, named in the error
    rows[6][1] = f'"{HOSTILE}"'  # an unknown label
    rc, out, err = human(corpus, capsys)
    assert rc == 1
    assert_inert(out + err)
    assert "evil\\x0a\\x1b[31mERRORS (0):\\x0d\\u202e\\x07" in out
    entry = next(line for line in out.splitlines() if "[file_missing]" in line)
    # CSV lines as an editor counts them: each hostile cell spans three (\n and \r inside)
    assert "line 15," in entry and "internal/evil\\x0a" in entry
    assert any("[label_unknown]" in line and "line 18," in line for line in out.splitlines())
    # every entry's fix is on the next line, not glued to it with an escaped newline
    assert "\\x0a      fix:" not in out and out.count("\n      fix: ") >= 2


def test_json_output_is_printable_and_exact(corpus, capsys):
    site = "x\u202e\x9b31m\x1b[0m\u2028y"
    for r in corpus.rows["internal"]:
        r[4] = site
    rc, report = run(corpus, capsys)  # parses the JSON printed
    assert rc == 1 and list(report["cohorts"]["internal"]["sites"]) == [site]
    assert report["error_counts"] == {"value_invisible_character": 8}  # the site itself is one
    validate_command([*corpus.args(), *BASE_ARGS, "--json"])
    out = capsys.readouterr().out
    assert_inert(out)
    assert "\x9b" not in out and "\u2028" not in out and "\\u202e" in out


def test_a_hostile_column_name_in_a_hint_is_escaped(corpus, capsys):
    header = ["path", "label", "patient_id", f'"Slide_ID{HOSTILE}"', "site"]
    path = corpus.manifest("internal", header=header)
    rc, out, _ = human(corpus, capsys, "--internal", str(path))
    assert rc == 1 and "[column_missing]" in out
    assert_inert(out)


@pytest.mark.parametrize("codec, bom, name", [
    ("utf-16-le", b"", "UTF-16 (little-endian) without a BOM"),
    ("utf-16-be", b"", "UTF-16 (big-endian) without a BOM"),
    ("utf-16-le", b"\xff\xfe", "UTF-16 (little-endian) with a BOM"),
    ("utf-16-be", b"\xfe\xff", "UTF-16 (big-endian) with a BOM"),
    ("utf-32-le", b"", "UTF-32 (little-endian) without a BOM"),
    ("utf-32-be", b"", "UTF-32 (big-endian) without a BOM"),
    ("utf-32-le", b"\xff\xfe\x00\x00", "UTF-32 (little-endian) with a BOM"),
    ("utf-32-be", b"\x00\x00\xfe\xff", "UTF-32 (big-endian) with a BOM"),
])
def test_wide_encodings_are_named(corpus, capsys, codec, bom, name):
    path = corpus.manifest("internal")
    path.write_bytes(bom + path.read_text(encoding="utf-8").encode(codec))
    rc, report = run(corpus, capsys, "--internal", str(path))
    assert rc == 1 and report["n_errors"] == 1, report["errors"]
    problem = find(report, "manifest_encoding", cohort="internal", manifest=path.as_posix())
    assert problem["message"] == f"the manifest is {name}, not UTF-8"
    assert "UTF-8" in problem["hint"] and "\x00" not in json.dumps(report)
    rc, out, _ = human(corpus, capsys, "--internal", str(path))
    assert f"internal manifest '{path.as_posix()}': [manifest_encoding] the manifest is {name}" in out
    assert "column_missing" not in out and "\\x00" not in out


def test_nul_bytes_in_utf8_text(corpus, capsys):
    path = corpus.manifest("internal")
    text = path.read_bytes().split(b"\n")
    text[3] = text[3].replace(b",", b"\x00,", 1)
    path.write_bytes(b"\n".join(text))
    rc, report = run(corpus, capsys, "--internal", str(path))
    assert rc == 1
    assert "NUL bytes" in find(report, "manifest_encoding", line=4)["message"]


def test_file_name_too_long_is_not_a_permissions_problem(corpus, capsys):
    rows = corpus.rows["internal"]
    rows[2][0] = "internal/" + "x" * 300 + ".png"
    rc, report = run(corpus, capsys)
    assert rc == 1
    problem = find(report, "file_unreadable", line=4, column="path", file=rows[2][0])
    assert "file name too long" in problem["message"]
    assert "shorten" in problem["hint"] and "permission" not in problem["hint"]


def test_manifest_name_too_long(corpus, capsys):
    long = corpus.tmp / ("m" * 300 + ".csv")
    rc, report = run(corpus, capsys, "--internal", str(long))
    assert rc == 1
    problem = find(report, "manifest_unreadable", manifest=long.as_posix())
    assert "file name too long" in problem["message"] and "shorten" in problem["hint"]


def test_symbolic_link_loop(corpus, capsys):
    a, b = corpus.root / "internal/loop_a.png", corpus.root / "internal/loop_b.png"
    a.symlink_to(b)
    b.symlink_to(a)
    corpus.rows["internal"][1][0] = "internal/loop_a.png"
    rc, report = run(corpus, capsys)
    assert rc == 1
    problem = find(report, "file_unreadable", line=3, file="internal/loop_a.png")
    assert "symbolic links" in problem["message"] and "link" in problem["hint"]


def test_errno_hints():
    for code, reason, hint in [(errno.EACCES, "permission denied", "readable by this user"),
                               (errno.ENAMETOOLONG, "file name too long", "shorten"),
                               (errno.ELOOP, "symbolic links", "symbolic link"),
                               (errno.EIO, "input/output error", "storage")]:
        got = explain_os_error(OSError(code, os.strerror(code)))
        assert reason in got[0] and hint in got[1], (code, got)
    got = explain_os_error(OSError(errno.EXDEV, os.strerror(errno.EXDEV)))
    assert "EXDEV" in got[0]


def test_a_wrong_data_root_is_one_summary_line(corpus, capsys, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    for i in range(30):
        corpus.rows["internal"].append([f"internal/extra{i}.png", "0", "iP0", "iS0", "internal"])
    rc, out, _ = human(corpus, capsys, "--data-root", str(elsewhere))
    assert rc == 1
    summary = [line for line in out.splitlines() if "is --data-root" in line]
    assert summary == [(f"  internal: 38 files (of 38) missing under the data root "
                       f"'{elsewhere.as_posix()}' - is --data-root (data.data_root) right?"),
                       (f"  external: 8 files (of 8) missing under the data root "
                       f"'{elsewhere.as_posix()}' - is --data-root (data.data_root) right?")]
    assert out.count("[file_missing]") == ERRORS_SHOWN_PER_RULE
    assert f"... and {38 + 8 - ERRORS_SHOWN_PER_RULE} more 'file_missing'" in out
    rc, report = run(corpus, capsys, "--data-root", str(elsewhere))
    assert report["error_counts"]["file_missing"] == 46  # the JSON keeps every entry


def test_a_few_missing_files_are_listed_without_a_summary(corpus, capsys):
    (corpus.root / corpus.rows["internal"][0][0]).unlink()
    rc, out, _ = human(corpus, capsys)
    assert rc == 1 and out.count("[file_missing]") == 1 and "is --data-root" not in out


@pytest.mark.parametrize("column, cell", [("label", '" tumour"'), ("label", "tumour "),
                                          ("patient_id", " iP3"), ("site", '"internal "'),
                                          ("slide_id", "iS3\t")])
def test_spaces_around_labels_and_ids_are_errors(corpus, capsys, column, cell):
    corpus.rows["internal"][6][COLUMNS.index(column)] = cell
    rc, report = run(corpus, capsys)
    assert rc == 1
    problem = find(report, "value_whitespace", line=8, column=column)
    assert "leading or trailing spaces" in problem["message"] and column in problem["hint"]


def test_spaces_are_reported_once_per_column(corpus, capsys):
    for row in corpus.rows["internal"]:
        row[1] = f" {row[1]}"
    rc, report = run(corpus, capsys)
    assert rc == 1 and report["error_counts"] == {"value_whitespace": 1}
    assert "8 value(s)" in find(report, "value_whitespace", line=2, column="label")["message"]


def test_external_cohort_from_an_internal_site(corpus, capsys):
    corpus.rows["external"][3][4] = "internal"
    rc, report = run(corpus, capsys)
    assert rc == 1 and report["rules"]["allow_shared_site"] is False
    problem = find(report, "site_in_both_cohorts", line=2, column="site", cohort="internal")
    assert "site 'internal'" in problem["message"] and "line 5" in problem["message"]
    assert "data.allow_shared_site" in problem["hint"]
    rc, report = run(corpus, capsys, "--allow-shared-site")
    assert rc == 0 and report["rules"]["allow_shared_site"] is True


def cli(corpus: Corpus, *args: str) -> subprocess.CompletedProcess:
    """`pathtrail validate ...` as the console script runs it (`pathtrail.cli.main`)."""
    return subprocess.run([sys.executable, "-m", "pathtrail.cli", "validate", *args], cwd=corpus.tmp,
                          capture_output=True, text=True, timeout=120, check=False)


@pytest.mark.parametrize("case", ["ok", "errors", "json", "usage", "report"])
def test_every_output_ends_with_a_newline(corpus, case):
    args = [*corpus.args(), *BASE_ARGS]
    if case == "errors":
        png(corpus.root / corpus.rows["internal"][0][0], 1, size=8)
    elif case == "json":
        args.append("--json")
    elif case == "usage":
        args = corpus.args()  # no --classes and no params.yaml
    elif case == "report":
        args += ["--report", "/proc/no/such/report.json"]  # cannot be written
    proc = cli(corpus, *args)
    assert proc.returncode == {"ok": 0, "errors": 1, "json": 0, "usage": 2, "report": 1}[case]
    assert "Traceback" not in proc.stdout + proc.stderr
    assert proc.stdout or proc.stderr
    for stream in (proc.stdout, proc.stderr):
        assert not stream or stream.endswith("\n"), repr(stream[-80:])
