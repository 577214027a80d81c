"""Queued DVC experiments run the library of their own snapshot, not the workspace's (issue 17, item 6).

The hazard: `make setup` installs the project editable, so `import pathtrail` anywhere resolves to the
workspace's `src/`. `dvc exp run --queue` snapshots the workspace, and `--run-all` later runs the
snapshot in a temporary copy; an edit made in between would run inside the queued experiment while
its dvc.lock records the snapshot's code hashes. `stages/__init__.py` puts its own checkout's `src/`
first, so the copy runs its own library. This test builds a small git + DVC repository with the real
`stages/__init__.py` and `src/pathtrail`, one probe stage, and the workspace's `src/` on PYTHONPATH
the way the editable install's .pth puts it on the path, queues an experiment, edits the workspace's
library, runs the queue, and reads what the experiment computed. The probe also relaunches itself
under torchrun (`pathtrail.train.distributed.relaunch`, as the train stage does), so the rule is
checked for DDP workers too.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO

TIMEOUT = 300

PROBE_LIBRARY = '''def value():
    return "snapshot"
'''

PROBE_STAGE = '''"""Probe stage: what the library that this process imports computes, here and in 2 torchrun workers."""

import json
import os
import sys
import tempfile
from pathlib import Path

import yaml

import pathtrail
from pathtrail.probe import value


def seen() -> dict:
    return {"value": value(), "library": pathtrail.__file__}


if "LOCAL_RANK" in os.environ:  # a torchrun worker
    Path(sys.argv[1], f"rank{os.environ['RANK']}.json").write_text(json.dumps(seen()))
else:
    from pathtrail.train.distributed import relaunch

    workers = tempfile.mkdtemp()
    if relaunch("stages.probe", [workers], 2) != 0:
        sys.exit("torchrun failed")
    result = {**seen(), "n": yaml.safe_load(Path("params.yaml").read_text())["probe"]["n"],
              "workers": [json.loads(Path(workers, f"rank{r}.json").read_text()) for r in range(2)]}
    Path("out").mkdir(exist_ok=True)
    Path("out/probe.json").write_text(json.dumps(result))
'''

DVC_YAML = """stages:
  probe:
    cmd: python -m stages.probe
    deps: [stages, src/pathtrail]
    params: [probe]
    metrics:
      - out/probe.json:
          cache: false
"""


def run(*cmd: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=TIMEOUT, check=False)
    assert done.returncode == 0, f"{' '.join(cmd)}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


def build_repo(repo: Path, env: dict[str, str]) -> None:
    """One commit: the real stages/__init__.py and library, a probe module and stage, params, dvc.yaml."""
    (repo / "stages").mkdir(parents=True)
    shutil.copy2(REPO / "stages/__init__.py", repo / "stages/__init__.py")
    shutil.copytree(REPO / "src/pathtrail", repo / "src/pathtrail", ignore=shutil.ignore_patterns("__pycache__"))
    (repo / "src/pathtrail/probe.py").write_text(PROBE_LIBRARY)
    (repo / "stages/probe.py").write_text(PROBE_STAGE)
    (repo / "params.yaml").write_text("probe:\n  n: 1\n")
    (repo / "dvc.yaml").write_text(DVC_YAML)
    (repo / ".gitignore").write_text("__pycache__/\n")
    run("git", "init", "-q", "-b", "main", cwd=repo, env=env)
    run(sys.executable, "-m", "dvc", "init", "-q", cwd=repo, env=env)
    run("git", "add", "-A", cwd=repo, env=env)
    run("git", "commit", "-q", "-m", "probe pipeline", cwd=repo, env=env)


@pytest.mark.slow
def test_queued_experiment_runs_its_snapshot_library_after_a_workspace_edit(tmp_path):
    """About 40 s: a celery queue worker, two stage processes and a 2-process torchrun."""
    repo = tmp_path / "repo"
    env = {**os.environ, "DVC_NO_ANALYTICS": "1",
           "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
           "PYTHONPATH": str(repo / "src"),  # the workspace's library, as the editable install's .pth
           "GIT_AUTHOR_NAME": "Test", "GIT_AUTHOR_EMAIL": "t@example.org",
           "GIT_COMMITTER_NAME": "Test", "GIT_COMMITTER_EMAIL": "t@example.org"}
    env.pop("LOCAL_RANK", None)
    env.pop("WORLD_SIZE", None)
    dvc = (sys.executable, "-m", "dvc")
    build_repo(repo, env)
    run(*dvc, "exp", "run", "--queue", "-S", "probe.n=2", cwd=repo, env=env)
    library = repo / "src/pathtrail/probe.py"
    library.write_text(PROBE_LIBRARY.replace('"snapshot"', '"edited"'))  # after queueing: not in the snapshot
    try:
        run(*dvc, "exp", "run", "--run-all", cwd=repo, env=env)
        status = run(*dvc, "queue", "status", cwd=repo, env=env).stdout
    finally:
        subprocess.run([*dvc, "queue", "stop", "--kill"], cwd=repo, env=env, capture_output=True,
                       timeout=TIMEOUT, check=False)
    assert "Success" in status and "Failed" not in status, status

    refs = run("git", "for-each-ref", "--format=%(refname)", "refs/exps", cwd=repo, env=env).stdout.split()
    assert len(refs) == 1, refs
    out = json.loads(run("git", "show", f"{refs[0]}:out/probe.json", cwd=repo, env=env).stdout)
    assert out["n"] == 2  # the queued experiment's params
    for process in (out, *out["workers"]):  # the stage and both torchrun workers
        assert process["value"] == "snapshot", process
        imported = Path(process["library"])
        assert imported.parts[-3:] == ("src", "pathtrail", "__init__.py")
        assert not imported.is_relative_to(repo / "src"), f"{imported} is the workspace's library"
    assert len(out["workers"]) == 2

    # The hazard is real: with the same environment, `import pathtrail` outside the stage package
    # gets the workspace's edited library.
    workspace = run(sys.executable, "-c", "import pathtrail, pathtrail.probe as p; print(p.value(), pathtrail.__file__)",
                    cwd=tmp_path, env=env).stdout.split()
    assert workspace == ["edited", str(repo / "src/pathtrail/__init__.py")]
