"""A default pipeline run prints no Python warning (each cause fixed, nothing silenced globally)."""

from __future__ import annotations

import re

import pytest

from tiny_repo import dvc, make_tiny_repo

pytestmark = pytest.mark.slow  # one real pipeline run (~90 s on 2 cores)

WARNING = re.compile(r"\b\w*Warning\b|\bwarnings\.warn\b|^\s*warn\(", re.MULTILINE)


def test_a_default_repro_log_has_no_python_warning(tmp_path):
    root = make_tiny_repo(tmp_path / "repo")
    done = dvc("repro", cwd=root)
    log = done.stdout + done.stderr
    assert "Running stage 'model_card'" in log
    found = sorted({m.group(0) for m in WARNING.finditer(log)})
    lines = [ln for ln in log.splitlines() if WARNING.search(ln)]
    assert not found, "\n".join(lines[:20])
