"""Where a stage and an atomic write may write (pathtrail.core.output_paths, core.files, core.staging):
an output that is the repository, above it, outside it or an input is refused before any work; a
write never replaces a device, FIFO, folder or a link to one; cleanup removes only what the
pipeline made; a failed run's removal never reaches an input and never fails silently.
(Each test runs with tmp_path as the working directory: conftest._isolated_trail.)"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from pathtrail.cli.validate import validate_command
from pathtrail.core.errors import PathTrailError
from pathtrail.core.files import remove_outputs, write_bytes, write_json
from pathtrail.core.staging import Staging, recover
from pathtrail.pipeline.stagekit import staged_run


@pytest.fixture
def repo(tmp_path):
    """A repository as the working directory: .git, an input folder of images, a manifest."""
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git/HEAD").write_text("ref: refs/heads/main\n")
    (tmp_path / "data/my").mkdir(parents=True)
    (tmp_path / "data/my/a.png").write_bytes(b"image")
    (tmp_path / "data/my.csv").write_text("path\na.png\n")
    return tmp_path


def untouched(repo):
    return ((repo / ".git/HEAD").is_file() and (repo / "data/my/a.png").read_bytes() == b"image"
            and (repo / "data/my.csv").is_file())


@pytest.mark.parametrize(("output", "why"), [
    (".", "the working directory"), ("", "the working directory"), ("data/..", "the working directory"),
    ("..", "above the working directory"), ("/", "root"), ("/tmp/pathtrail-elsewhere", "outside"),
    ("data/my.csv", "also an input"), ("data", "holds an input"), ("data/my/out", "inside an input"),
])
def test_an_unsafe_output_is_refused_before_any_work(repo, output, why):
    ran = []
    with pytest.raises(PathTrailError, match=why), \
            staged_run("demo", inputs=["data/my.csv", "data/my"], outputs=[output, "reports/r.json"]) as (_, out):
        ran.append(out)
    assert ran == [] and untouched(repo)
    assert not (repo / "audit/trail.jsonl").exists()  # not even a start entry
    assert not Path("/tmp/pathtrail-elsewhere").exists()


def test_staging_alone_refuses_the_repository_and_what_lies_above_it(repo):
    for output in (".", "..", "/"):
        with pytest.raises(PathTrailError, match="nothing was written"), Staging([output]):
            pass
    assert untouched(repo)


def test_overlapping_outputs_are_refused(repo):
    with pytest.raises(PathTrailError, match="overlaps another output"), \
            staged_run("demo", inputs=[], outputs=["out", "out/table.csv"]):
        pass


def test_an_output_that_is_a_link_to_elsewhere_is_allowed_and_only_the_link_is_replaced(repo, tmp_path_factory):
    elsewhere = tmp_path_factory.mktemp("big_disk")
    (elsewhere / "old.csv").write_text("old")
    Path("data/validated").symlink_to(elsewhere, target_is_directory=True)
    with staged_run("demo", inputs=["data/my"], outputs=["data/validated"]) as (_, out):
        out("data/validated").mkdir()
        (out("data/validated") / "new.csv").write_text("new")
    assert not Path("data/validated").is_symlink() and Path("data/validated/new.csv").read_text() == "new"
    assert (elsewhere / "old.csv").read_text() == "old"


# --- atomic writes never replace what is not a regular file --------------------------------------

def test_a_write_refuses_fifos_folders_and_links_to_devices(repo):
    os.mkfifo("fifo")
    Path("folder").mkdir()
    Path("null").symlink_to("/dev/null")
    Path("to_fifo").symlink_to("fifo")
    for target, kind in (("fifo", "named pipe"), ("folder", "a folder"), ("null", "link to a character device"),
                         ("to_fifo", "link to a named pipe")):
        with pytest.raises(PathTrailError, match=kind):
            write_bytes(b"x", target)
    assert stat.S_ISFIFO(os.lstat("fifo").st_mode) and Path("folder").is_dir()
    assert Path("null").is_symlink() and Path("to_fifo").is_symlink()
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)
    assert sorted(os.listdir(".")) == sorted([".git", "data", "fifo", "folder", "null", "to_fifo"])  # no temp file


def test_a_link_to_a_regular_file_is_replaced_and_its_target_kept(repo):
    Path("cache_copy").write_text("cached")
    Path("report.json").symlink_to("cache_copy")
    Path("dangling").symlink_to("nowhere")
    write_bytes(b"new", "report.json")
    write_bytes(b"new", "dangling")
    assert not Path("report.json").is_symlink() and Path("report.json").read_text() == "new"
    assert Path("cache_copy").read_text() == "cached" and not Path("nowhere").exists()


# --- cleanup removes only what the pipeline made -------------------------------------------------

def test_a_users_staging_named_folder_and_tmp_files_are_never_removed(repo):
    Path("out").mkdir()
    Path("out/eval.json").write_text("results")
    Path("out/.eval.json.mybackup.tmp").write_text("my backup")
    Path("out/.table.staging").mkdir()
    Path("out/.table.staging/COMMITTING").write_text("my notes")
    Path("out/table").mkdir()
    Path("out/table/a.csv").write_text("a")
    recover(["out/eval.json"])
    assert Path("out/.eval.json.mybackup.tmp").read_text() == "my backup"
    with pytest.raises(PathTrailError, match=r"\.table\.staging' exists but was not made by this pipeline"), \
            Staging(["out/table", "out/eval.json"]):
        pass
    assert Path("out/.table.staging/COMMITTING").read_text() == "my notes"
    assert Path("out/table/a.csv").read_text() == "a" and Path("out/eval.json").read_text() == "results"


def test_a_killed_writes_temporary_file_is_still_cleaned(repo):
    Path("out").mkdir()
    Path("out/.eval.json.pathtrail-k3_9ab0x.tmp").write_text("half")
    assert recover(["out/eval.json"]) == [Path("out/.eval.json.pathtrail-k3_9ab0x.tmp")]


# --- removal after a failed run ------------------------------------------------------------------

def test_removing_a_failed_runs_outputs_never_reaches_an_input(repo):
    for unsafe in ("data", ".", ".."):
        with pytest.raises(PathTrailError):
            remove_outputs(unsafe, "reports/r.json", inputs=["data/my", "data/my.csv"])
    assert untouched(repo)


def test_an_output_folder_that_is_a_link_is_removed_as_a_link(repo, tmp_path_factory):
    elsewhere = tmp_path_factory.mktemp("big_disk")
    (elsewhere / "internal.csv").write_text("stale")
    Path("data/validated").symlink_to(elsewhere, target_is_directory=True)
    remove_outputs("data/validated")
    assert not Path("data/validated").exists() and not Path("data/validated").is_symlink()
    assert (elsewhere / "internal.csv").read_text() == "stale"  # another place's files are left alone


# --- pathtrail validate --report -----------------------------------------------------------------

def cli(*args):
    return validate_command(["--internal", "data/my.csv", "--classes", "a,b", "--data-root", "data/my", *args])


def test_validate_refuses_a_report_over_its_manifest(repo, capsys):
    before = Path("data/my.csv").read_bytes()
    assert cli("--report", "data/my.csv") == 2
    assert "is the internal manifest being validated" in capsys.readouterr().err
    assert Path("data/my.csv").read_bytes() == before
    Path("same.csv").symlink_to("data/my.csv")
    assert cli("--report", "same.csv") == 2 and Path("data/my.csv").read_bytes() == before


def test_validate_report_on_a_fifo_link_or_folder_is_refused_with_a_writing_hint(repo, capsys):
    os.mkfifo("pipe")
    Path("stdout").symlink_to("pipe")
    Path("reports").mkdir()
    for target in ("stdout", "reports"):
        assert cli("--report", target) == 1
        err = capsys.readouterr().err
        assert "cannot write the report" in err and "to write" in err and "readable" not in err
    assert Path("stdout").is_symlink() and stat.S_ISFIFO(os.lstat("pipe").st_mode) and Path("reports").is_dir()
    assert cli("--report", "reports/ok.json") == 1  # the data have errors; the report is still written
    assert "cohorts" in json.loads(Path("reports/ok.json").read_text())
    write_json({}, "reports/ok.json")  # a regular file is still replaced


def test_git_ignores_the_pipelines_leftovers_and_not_a_users_files():
    import subprocess

    from conftest import REPO

    def ignored(path):
        return subprocess.run(["git", "check-ignore", "-q", "--no-index", path], cwd=REPO, check=False).returncode == 0

    assert ignored("reports/.validation.json.pathtrail-k3_9ab0x.tmp") and ignored("data/.validated.staging/x")
    assert not ignored("reports/.eval.json.mybackup.tmp")


def test_atomic_dir_replaces_a_link_as_a_link_and_refuses_a_fifo(repo, tmp_path_factory):
    from pathtrail.core.files import atomic_dir

    elsewhere = tmp_path_factory.mktemp("big_disk")
    (elsewhere / "old.png").write_text("old")
    Path("figures").symlink_to(elsewhere, target_is_directory=True)
    with atomic_dir("figures") as tmp:
        (tmp / "new.png").write_text("new")
    assert not Path("figures").is_symlink() and os.listdir("figures") == ["new.png"]
    assert (elsewhere / "old.png").read_text() == "old"
    os.mkfifo("pipe")
    with pytest.raises(PathTrailError, match="named pipe"), atomic_dir("pipe"):
        pass
    assert stat.S_ISFIFO(os.lstat("pipe").st_mode) and not [p for p in os.listdir(".") if p.endswith(".tmp")]
