"""Where a result came from: git state, environment, versions. Read-only helpers."""

from __future__ import annotations

import getpass
import importlib.metadata
import os
import platform
import re
import socket
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pathtrail.config.loading import RUNTIME_SECTION
from pathtrail.core.staging import SUFFIX as STAGING

# Files a pipeline run rewrites by design; their changes do not make the source tree "dirty".
ALWAYS_GENERATED = ("audit/", "dvc.lock", "logs/")


# Untracked files count as source only under these (code and config); data dropped elsewhere does not.
SOURCE_ROOTS = ("src/", "stages/", "pipelines/", "tests/", "dvc.yaml", "pyproject.toml", "requirements.lock",
                "Makefile", ".dvc/config")
MAX_LISTED = 50


@dataclass(frozen=True)
class GitState:
    commit: str | None
    branch: str | None
    remote_url: str | None
    dirty: bool                                         # source differs from the commit
    modified: list[str] = field(default_factory=list)   # the source paths that differ
    commit_date: str | None = None
    changed: list[str] = field(default_factory=list)    # every path git reports (first MAX_LISTED)
    n_changed: int = 0
    params_changed: list[str] = field(default_factory=list)  # dotted params keys vs HEAD:params.yaml

    def as_dict(self) -> dict[str, Any]:
        return {
            "git_commit": self.commit,
            "git_branch": self.branch,
            "git_remote_url": self.remote_url,
            "git_dirty": self.dirty,
            "git_modified": self.modified,
            "git_commit_date": self.commit_date,
            "git_changed": self.changed,
            "git_n_changed": self.n_changed,
            "params_changed": self.params_changed,
        }


def public_remote(url: str | None) -> str | None:
    """A remote URL fit to publish: no user, password, token, query or fragment; None for a local
    path or file:// remote (a local folder name says nothing to a reader and may reveal a user)."""
    if not url:
        return None
    from urllib.parse import urlsplit, urlunsplit

    text = url.strip()
    if "://" not in text:
        scp = re.match(r"^(?:[^@/]+@)?([A-Za-z0-9.-]+):(?!/)(.+)$", text)  # git@host:org/repo.git
        return f"{scp.group(1)}:{scp.group(2)}" if scp else None
    try:
        parts = urlsplit(text)
        host = parts.netloc.rsplit("@", 1)[-1]  # userinfo gone; [IPv6] brackets and port kept
    except ValueError:
        return None
    if parts.scheme.lower() == "file" or not parts.hostname:
        return None
    path = parts.path.split(";", 1)[0]  # `;password=...` path parameters
    return urlunsplit((parts.scheme.lower(), host, path, "", ""))


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
    """Commit, branch, public remote, and what changed: source (dirty), params, and everything git reports."""
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
    top = Path(repo.working_tree_dir or ".")
    declared = pipeline_outputs(top / "dvc.yaml")
    generated = [*ALWAYS_GENERATED, *(o.split("${")[0] for o in declared)]
    tracked = {d.a_path for d in repo.index.diff(None)}
    if commit:
        tracked |= {d.a_path for d in repo.index.diff("HEAD")}
    # a running stage's staging folders (pathtrail.core.staging) are its outputs in the making, gone
    # when it ends; git ignores them through .gitignore, this for trees whose .gitignore does not
    untracked = {p for p in repo.untracked_files if not any(part.endswith(STAGING) for part in p.split("/"))}
    changed = sorted(tracked | untracked)
    source = {p for p in tracked if p != "params.yaml" and not _is_generated(p, generated)}
    source |= {p for p in untracked if _is_generated(p, list(SOURCE_ROOTS)) and not _is_generated(p, generated)}
    params = _params_changed(repo, top) if commit and "params.yaml" in changed else []
    if "params.yaml" in untracked:
        source.add("params.yaml")
    modified = sorted(source)
    return GitState(commit, branch, public_remote(remote), bool(modified) or commit is None, modified, date,
                    changed[:MAX_LISTED], len(changed), params)


def _params_changed(repo: Any, top: Path) -> list[str]:
    """Dotted keys whose value differs between HEAD:params.yaml and the working copy."""
    try:
        old = yaml.safe_load(repo.git.show("HEAD:params.yaml")) or {}
        new = yaml.safe_load((top / "params.yaml").read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError, *git_errors()):
        return ["params.yaml (not comparable with its committed version)"]
    a, b = _flat(old), _flat(new)
    return sorted(k for k in set(a) | set(b) if a.get(k, "<absent>") != b.get(k, "<absent>")
                  and k.split(".")[0] != RUNTIME_SECTION)  # runtime knobs change no result


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(tree, dict) or not tree:
        return {prefix: tree}
    out: dict[str, Any] = {}
    for k, v in tree.items():
        out |= _flat(v, f"{prefix}.{k}" if prefix else str(k))
    return out


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
