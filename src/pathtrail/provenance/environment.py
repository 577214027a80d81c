"""Where a result came from: git state, environment, versions. Read-only helpers."""

from __future__ import annotations

import getpass
import importlib.metadata
import os
import platform
import socket
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

# Files a pipeline run rewrites by design; their changes do not make the source tree "dirty".
ALWAYS_GENERATED = ("audit/", "dvc.lock", "logs/")


@dataclass(frozen=True)
class GitState:
    commit: str | None
    branch: str | None
    remote_url: str | None
    dirty: bool
    modified: list[str] = field(default_factory=list)
    commit_date: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "git_commit": self.commit,
            "git_branch": self.branch,
            "git_remote_url": self.remote_url,
            "git_dirty": self.dirty,
            "git_modified": self.modified,
            "git_commit_date": self.commit_date,
        }


def pipeline_outputs(dvc_yaml: str | Path = "dvc.yaml") -> list[str]:
    """Every out, metric and plot path declared in dvc.yaml (templated names left as patterns)."""
    p = Path(dvc_yaml)
    if not p.is_file():
        return []
    doc = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    outs: list[str] = []
    for stage in (doc.get("stages") or {}).values():
        for kind in ("outs", "metrics", "plots"):
            for item in stage.get(kind) or []:
                outs.append(next(iter(item)) if isinstance(item, dict) else str(item))
    return outs


def git_errors() -> tuple[type[BaseException], ...]:
    """The exceptions GitPython raises for "no repository here" (and a missing git binary)."""
    try:
        import git
    except ImportError:
        return (OSError,)
    return (git.exc.InvalidGitRepositoryError, git.exc.NoSuchPathError, git.exc.GitError, OSError)


def git_state(repo_dir: str | Path = ".") -> GitState:
    """Commit, branch, remote and dirty flag; pipeline outputs and the audit trail do not count as dirty."""
    try:
        import git

        repo = git.Repo(repo_dir, search_parent_directories=True)
    except (ImportError, *git_errors()):  # not a git checkout (or no git): record the absence
        return GitState(None, None, None, True, ["<not a git repository>"])
    try:
        head = repo.head.commit
        commit, date = head.hexsha, head.committed_datetime.isoformat()
    except ValueError:
        commit, date = None, None
    try:
        branch = repo.active_branch.name
    except TypeError:
        branch = None
    remote = next((r.url for r in repo.remotes), None) if repo.remotes else None
    declared = pipeline_outputs(Path(repo.working_tree_dir) / "dvc.yaml")
    generated = [*ALWAYS_GENERATED, *(o.split("${")[0] for o in declared)]
    changed = {d.a_path for d in repo.index.diff(None)}
    if commit:
        changed |= {d.a_path for d in repo.index.diff("HEAD")}
    changed |= set(repo.untracked_files)
    modified = sorted(p for p in changed if not _is_generated(p, generated))
    return GitState(commit, branch, remote, bool(modified) or commit is None, modified, date)


def _is_generated(path: str, generated: list[str]) -> bool:
    for g in generated:
        stem = g.rstrip("/")
        if path == stem or path.startswith(stem + "/") or (g.endswith("/") and path.startswith(g)):
            return True
    return False


def actor() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry for the uid (containers)
        user = os.environ.get("USER", "unknown")
    return f"{user}@{socket.gethostname()}"


def versions() -> dict[str, str]:
    import torch

    import pathtrail

    return {
        "python": platform.python_version(),
        "torch": str(torch.__version__),
        "pathtrail": pathtrail.__version__,
    }


def environment() -> dict[str, Any]:
    """Everything a reviewer needs to rebuild the software environment."""
    import torch

    cuda = torch.cuda.is_available()
    return {
        "python_version": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "torch_version": str(torch.__version__),
        "torch_git_version": getattr(torch.version, "git_version", None),
        "cuda_version": torch.version.cuda,
        "cudnn_version": torch.backends.cudnn.version() if cuda else None,
        "os": platform.platform(),
        "machine": platform.machine(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "gpu": torch.cuda.get_device_name(0) if cuda else None,
        "packages": {
            d.metadata["Name"].lower(): d.version
            for d in sorted(importlib.metadata.distributions(), key=lambda d: d.metadata["Name"].lower())
            if d.metadata["Name"]
        },
        "executable_prefix_is_venv": sys.prefix != sys.base_prefix,
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"
