"""Stage validate under hostile input: the error summary, the shared-site rule and its param,
escaped user strings; on failure nothing is written."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from stages.validate import main
from test_validate_stage import setup

from conftest import REPO

HOSTILE = "site_a\n\x1b[31mvalidate.done errors=0\u202e"


def edit_manifest(name: str, **columns) -> None:
    path = Path("raw") / f"{name}.csv"
    frame = pd.read_csv(path, dtype=str)
    for column, value in columns.items():
        frame[column] = value
    frame.to_csv(path, index=False)


def fails(args: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as info:
        main(args)
    assert info.value.code == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert not Path("data/validated").exists() and not Path("reports/validation.json").exists()
    return err


def test_external_from_an_internal_site_fails_unless_allowed(tmp_path, monkeypatch, capsys):
    args = setup(tmp_path, monkeypatch)
    edit_manifest("external", site="site_b")
    err = fails(args, capsys)
    entry = next(line for line in err.splitlines() if "[site_in_both_cohorts]" in line)
    assert "internal manifest 'raw/internal.csv'" in entry and "column 'site'" in entry
    assert "site 'site_b' is also in the external manifest 'raw/external.csv'" in entry
    assert "data.allow_shared_site" in err
    args = setup(tmp_path, monkeypatch, **{"data.allow_shared_site": True})
    edit_manifest("external", site="site_b")
    main(args)
    report = json.loads(Path("reports/validation.json").read_text())
    assert report["status"] == "ok" and report["rules"]["allow_shared_site"] is True


def test_a_wrong_data_root_is_summarised(tmp_path, monkeypatch, capsys):
    (tmp_path / "empty").mkdir()
    args = setup(tmp_path, monkeypatch, **{"data.data_root": "empty"})
    err = fails(args, capsys)
    assert "internal: 24 files (of 24) missing under the data root 'empty' - is --data-root " \
           "(data.data_root) right?" in err
    assert "external: 12 files (of 12) missing" in err
    plain = [line for line in err.splitlines() if not line.startswith("{")]  # not the JSON log
    assert sum("[file_missing]" in line for line in plain) == 10
    assert "  ... and 26 more 'file_missing' (see the JSON report)" in plain


def test_user_strings_are_escaped_in_the_stage_output(tmp_path, monkeypatch, capsys):
    args = setup(tmp_path, monkeypatch)
    edit_manifest("internal", site=HOSTILE, label=" benign")
    err = fails(args, capsys)
    assert "\x1b" not in err and "\u202e" not in err
    assert not any(line.startswith("validate.done") for line in err.splitlines())
    assert "[value_whitespace]" in err and "column 'label'" in err


@pytest.mark.parametrize("manifest, kind", [("fifo.csv", "a named pipe (FIFO)"),
                                            ("/dev/zero", "a character device")])
def test_special_manifests_fail_the_stage_at_once(tmp_path, monkeypatch, manifest, kind):
    """Run as DVC runs it (a subprocess, with a timeout): a FIFO would block an open, /dev/zero
    never ends; both are refused from their stat, by validation and by the audit's hashing."""
    args = setup(tmp_path, monkeypatch, **{"data.internal_manifest": manifest})
    os.mkfifo(tmp_path / "fifo.csv")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO)])}
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "stages.validate", *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 1 and time.monotonic() - t0 < 60
    assert "Traceback" not in proc.stderr
    assert f"internal manifest '{manifest}': [manifest_unreadable]" in proc.stderr
    assert f"it is {kind}, not a file" in proc.stderr
    assert not (tmp_path / "data/validated").exists()
    assert not (tmp_path / "reports/validation.json").exists()
