"""A real PathTrail repository in a temporary folder: this checkout's code, tiny params, real git.

`make_tiny_repo(dest)` copies the repository's code files (what git tracks, or would track, under
the code folders, plus dvc.yaml and the DVC config) into `dest`, writes params.yaml from the
committed `pipelines/` shrunk to a seconds-long run (data paths relative, as in the real repo), and
commits it. `dvc_repro(root)` then runs the real pipeline there with this environment's Python.
Nothing of the workspace's params.yaml, artifacts, trail or DVC cache is used.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from fake_pipeline import committed_params

REPO = Path(__file__).resolve().parents[1]
CODE = ("src/", "stages/", "pipelines/", ".dvc/config", ".dvc/.gitignore", ".dvc/offline_plots/")
TOP = ("dvc.yaml", ".dvcignore", ".gitignore", "pyproject.toml", "requirements.lock", "Makefile")
GIT_ENV = {
    "GIT_AUTHOR_NAME": "Test", "GIT_AUTHOR_EMAIL": "t@example.org",
    "GIT_COMMITTER_NAME": "Test", "GIT_COMMITTER_EMAIL": "t@example.org",
}


def env() -> dict[str, str]:
    """This interpreter's bin folder first (dvc.yaml's `python` and `dvc` are ours), no analytics,
    a fixed git identity, and no audit-trail override (stages write the tree's own trail)."""
    out = {**os.environ, **GIT_ENV, "DVC_NO_ANALYTICS": "1"}
    out["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{out.get('PATH', '')}"
    out.pop("PATHTRAIL_AUDIT_TRAIL", None)
    return out


def run(*cmd: str, cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run(cmd, cwd=cwd, env=env(), capture_output=True, text=True, check=False)
    if check and done.returncode:
        raise AssertionError(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return done


def git(*args: str, cwd: Path) -> str:
    return run("git", *args, cwd=cwd).stdout.strip()


def dvc(*args: str, cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    return run(sys.executable, "-m", "dvc", *args, cwd=cwd, check=check)


def tiny_params() -> dict:
    p = committed_params()
    d = p["data"]
    d["demo"].update(patients_per_site=8, external_patients=8, patches_per_patient=6,
                     max_slides_per_patient=2)
    p["runtime"]["num_workers"] = 0
    d["min_per_class"] = 2
    p["train"].update(epochs=1, batch_size=16)
    p["eval"]["n_bootstrap"] = 100
    p["compile_check"]["enabled"] = False
    p["compile_check"]["n_bootstrap"] = 100
    p["stain"]["fit_max_patches"] = 16
    p["card"]["name"] = "tiny"
    return p


def code_files() -> list[str]:
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            cwd=REPO, capture_output=True, text=True, check=True).stdout
    return sorted(f for f in listed.split("\0")
                  if f and (f.startswith(CODE) or f in TOP) and (REPO / f).is_file())


def make_tiny_repo(dest: Path, params: dict | None = None) -> Path:
    """`dest` as a git repository (branch main) with one commit: code and tiny params."""
    dest.mkdir(parents=True, exist_ok=True)
    for rel in code_files():
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / rel, dest / rel)
    (dest / "params.yaml").write_text(yaml.safe_dump(params or tiny_params(), sort_keys=False))
    git("init", "-q", "-b", "main", cwd=dest)
    git("add", "-A", cwd=dest)
    git("commit", "-q", "-m", "tiny pipeline", cwd=dest)
    return dest


def dvc_repro(root: Path, *args: str) -> None:
    dvc("repro", *args, cwd=root)


def commit_all(root: Path, message: str) -> str:
    git("add", "-A", cwd=root)
    git("commit", "-q", "-m", message, cwd=root)
    return git("rev-parse", "HEAD", cwd=root)
