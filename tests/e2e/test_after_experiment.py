"""The README's "What to commit after an experiment", done for real on a small git + DVC + Hydra repo.

After `dvc exp run -S ...` the workspace holds the experiment (params.yaml, dvc.lock and outputs
changed). Keeping it: put the change into `pipelines/`, `make params` (here: `python -m
pathtrail.config`), and the regenerated params.yaml is the experiment's, so `dvc status` is clean
and a commit records it. Discarding it: `git checkout params.yaml dvc.lock && dvc checkout` brings
back the committed params and outputs.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tiny_repo import commit_all, dvc, git, run

pytestmark = pytest.mark.slow

STAGE = """stages:
  scale:
    cmd: python -c "import yaml; x = yaml.safe_load(open('params.yaml'))['work']['x']; open('out.txt', 'w').write(str(x * 10))"
    params:
      - work
    outs:
      - out.txt
"""


def _repo(root: Path) -> Path:
    (root / "pipelines").mkdir(parents=True)
    (root / "pipelines" / "config.yaml").write_text("work:\n  x: 1\n")
    (root / "dvc.yaml").write_text(STAGE)
    git("init", "-q", "-b", "main", cwd=root)
    dvc("init", "-q", cwd=root)
    dvc("config", "hydra.enabled", "true", cwd=root)
    dvc("config", "hydra.config_dir", "pipelines", cwd=root)
    run(sys.executable, "-m", "pathtrail.config", cwd=root)
    dvc("repro", cwd=root)
    commit_all(root, "baseline")
    return root


def _dirty(root: Path) -> list[str]:
    return sorted(line.split(maxsplit=1)[1] for line in git("status", "--porcelain", cwd=root).splitlines())


def test_an_experiment_is_kept_through_pipelines_or_discarded_with_checkout(tmp_path):
    root = _repo(tmp_path / "repo")
    dvc("exp", "run", "-S", "work.x=3", cwd=root)
    assert (root / "out.txt").read_text() == "30"
    assert {"params.yaml", "dvc.lock"} <= set(_dirty(root))  # what the user finds after the run
    experiment_params = (root / "params.yaml").read_text()

    # discard: the committed params and outputs come back
    git("checkout", "params.yaml", "dvc.lock", cwd=root)
    dvc("checkout", cwd=root)
    assert (root / "out.txt").read_text() == "10" and _dirty(root) == []

    # keep: re-run it (or `dvc exp apply`), then the change goes into pipelines/ and params.yaml is
    # regenerated from there: the same file the experiment had, nothing to re-run
    dvc("exp", "run", "-S", "work.x=3", cwd=root)
    (root / "pipelines" / "config.yaml").write_text("work:\n  x: 3\n")
    run(sys.executable, "-m", "pathtrail.config", cwd=root)
    assert (root / "params.yaml").read_text() == experiment_params
    assert "up to date" in dvc("status", cwd=root).stdout.lower()
    commit_all(root, "adopt x=3")
    assert _dirty(root) == [] and (root / "out.txt").read_text() == "30"

    # the one-stage rebuild the README gives for the card: only that stage runs again
    forced = dvc("repro", "--force", "--single-item", "scale", cwd=root).stdout
    assert "Running stage 'scale'" in forced and (root / "out.txt").read_text() == "30"
