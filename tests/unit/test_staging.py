"""Staged outputs (pathtrail.core.staging): published together on success only; a failure, a SIGTERM
or a SIGKILL at any moment leaves no output of the run, and the next start cleans what was left."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from conftest import REPO
from pathtrail.core.errors import PathTrailError
from pathtrail.core.staging import (
    COMMITTING,
    MARKER,
    MARKER_TEXT,
    PAUSE_ENV,
    Staging,
    recover,
    staging_dir,
)
from pathtrail.pipeline.stagekit import staged_run
from pathtrail.provenance.audit import read_entries


def tree(root):
    return {p.relative_to(root).as_posix(): (p.read_bytes() if p.is_file() else None)
            for p in sorted(root.rglob("*"))}


@pytest.fixture
def old(tmp_path):
    """An earlier run's outputs: a file, a folder and a file the next run will not write."""
    (tmp_path / "out/table").mkdir(parents=True)
    (tmp_path / "out/table/a.csv").write_text("old a\n")
    (tmp_path / "out/report.json").write_text("{}")
    (tmp_path / "out/gone.txt").write_text("old")
    return tmp_path / "out"


def outputs(out):
    return [out / "table", out / "report.json", out / "gone.txt"]


def test_a_commit_publishes_exactly_what_the_run_wrote(old):
    with Staging(outputs(old)) as s:
        assert s(old / "table") == old / ".table.staging/table"
        s(old / "table").mkdir()
        (s(old / "table") / "b.csv").write_text("new b\n")
        s(old / "report.json").write_text('{"new": 1}')
        assert (old / "table/a.csv").read_text() == "old a\n"  # nothing moves before the end
    assert tree(old) == {"table": None, "table/b.csv": b"new b\n", "report.json": b'{"new": 1}'}


def test_an_exception_leaves_the_earlier_outputs_untouched(old):
    before = tree(old)
    with pytest.raises(RuntimeError), Staging(outputs(old)) as s:
        s(old / "report.json").write_text("partial")
        raise RuntimeError("boom")
    assert tree(old) == before


def test_only_declared_outputs_can_be_staged(old):
    with Staging(outputs(old)) as s, pytest.raises(ValueError, match="not a declared output"):
        s(old / "other.txt")


def leftover_staging(output):
    """A staging folder as a killed run leaves it (marked as the pipeline's own)."""
    staging_dir(output).mkdir()
    (staging_dir(output) / MARKER).write_bytes(MARKER_TEXT)
    return staging_dir(output)


def test_recover_removes_a_killed_runs_staging_and_tmp_files_but_keeps_the_outputs(old):
    before = tree(old)
    (leftover_staging(old / "table") / "table").mkdir()
    (old / ".report.json.pathtrail-abc123_z.tmp").write_text("half")
    removed = recover(outputs(old))
    assert {p.name for p in removed} == {".table.staging", ".report.json.pathtrail-abc123_z.tmp"}
    assert tree(old) == before


def test_recover_after_an_interrupted_commit_removes_that_commits_outputs(old):
    for p in outputs(old):
        (leftover_staging(p) / COMMITTING).touch()
    recover(outputs(old))
    assert tree(old) == {}


SCRIPT = textwrap.dedent("""
    import signal, sys
    sys.path[:0] = [{src!r}]
    from pathlib import Path
    from pathtrail.core.staging import Staging

    def stop(signum, frame):
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, stop)
    out = Path({out!r})
    try:
        with Staging([out / "table", out / "report.json", out / "gone.txt"]) as s:
            s(out / "table").mkdir()
            (s(out / "table") / "b.csv").write_text("new b\\n")
            s(out / "report.json").write_text("new")
        print("committed", flush=True)
    except KeyboardInterrupt:
        sys.exit(130)
""")


def run_paused(old, point, signum):
    """Run SCRIPT, paused at `point`; send `signum` there; returns (exit code, stdout)."""
    marker = old.parent / "paused"
    env = {**os.environ, PAUSE_ENV: f"{point}:{marker}"}
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT.format(src=str(REPO / "src"), out=str(old))],
                            env=env, stdout=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while not marker.exists():
        assert proc.poll() is None and time.monotonic() < deadline, "never reached the pause"
        time.sleep(0.02)
    proc.send_signal(signum)
    marker.unlink()
    return proc.wait(timeout=30), proc.stdout.read()


def test_sigterm_during_the_commit_is_held_until_the_commit_is_complete(old):
    code, out = run_paused(old, "mid_commit", signal.SIGTERM)
    assert code == 130 and "committed" not in out  # the stop was honoured, after the commit
    assert tree(old) == {"table": None, "table/b.csv": b"new b\n", "report.json": b"new"}


def test_sigkill_during_the_commit_is_undone_at_the_next_start(old):
    code, _ = run_paused(old, "mid_commit", signal.SIGKILL)
    assert code == -signal.SIGKILL
    assert (old / "table/b.csv").is_file() and (old / "report.json").read_text() == "{}"  # half of each
    with Staging(outputs(old)):
        assert {p for p in tree(old) if not p.startswith(".")} == set()  # no mix of two runs
    assert tree(old) == {}


def test_staged_run_checks_its_inputs_before_publishing(tmp_path):
    src = tmp_path / "in.txt"
    src.write_text("input")
    out = tmp_path / "out.txt"
    with pytest.raises(PathTrailError, match="in.txt changed while the stage ran"), \
            staged_run("demo", inputs=[src], outputs=[out]) as (_, staged):
        staged(out).write_text("result")
        src.write_text("edited")
    assert not out.exists() and not staging_dir(out).exists()
    entries = read_entries(tmp_path / "audit/trail.jsonl")
    assert [(e["action"], e["outcome"]) for e in entries] == [("start", "running"), ("end", "failed")]
