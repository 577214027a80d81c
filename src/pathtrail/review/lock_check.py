"""The dvc.lock part of `pathtrail verify`: dvc.lock against the workspace.

Our own comparison of params (key by key) and file md5s, plus `dvc status --json` for everything
else (directories, missing outputs), each change reported once with the stages that use it.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pathtrail.card.values import flatten, get
from pathtrail.config.loading import ParamsError, read_params
from pathtrail.review.release import load_lock

ENSEMBLE_DVC_YAML = "ensemble/dvc.yaml"  # the optional second pipeline (README, "Stacking ensemble")


def dvc_findings(root: Path) -> tuple[list[str], list[str]]:
    """(problems, notes): dvc.lock against the workspace."""
    check = _Findings()
    lock_path = root / "dvc.lock"
    if not lock_path.is_file():
        return ["dvc.lock: not found; run `dvc repro`"], []
    lock, malformed = load_lock(lock_path)
    if malformed:
        check.problems.append(malformed)
    own = lock_problems(lock, root)
    special = special_files(root, lock)
    check.problems += special
    if special:
        check.notes.append("dvc status not run: it would block on the files named above")
    elif (root / ".dvc").is_dir():
        status, error = dvc_status(root)
        if error:
            check.problems.append(error)
        own |= {k: v for k, v in parse_dvc_status(status).items() if not _covered(k, own)}
    else:
        check.notes.append("no .dvc/ folder: directories were not compared (only files and params)")
    check.problems += list(own.values())
    check.notes.append(f"{len(lock.get('stages') or {})} stages in dvc.lock")
    return check.problems, check.notes


@dataclass
class _Findings:
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def special_files(root: Path, lock: dict[str, Any]) -> list[str]:
    """dvc.yaml, params files and every dep/out dvc.lock names that is a FIFO, socket or device:
    `dvc status` would open them (and block on a FIFO), so it is not run."""
    names = {"dvc.yaml", "params.yaml"}
    for body in lock["stages"].values():
        names |= {i["path"] for k in ("deps", "outs") for i in body[k]} | {str(f) for f in body["params"]}
    out = []
    for name in sorted(names):
        try:
            mode = os.stat(root / name).st_mode
        except (OSError, ValueError):
            continue
        if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
            out.append(f"{name}: not a regular file or folder (a FIFO or device?); replace it with the real file")
    return out


def lock_problems(lock: dict[str, Any], root: Path) -> dict[tuple[str, ...], str]:
    """Params (key by key) and file md5s recorded in dvc.lock vs the workspace, keyed for de-duplication.

    Directories (md5 ending in `.dir`) are left to `dvc status`; a changed param or file used by
    several stages is reported once, naming the stages."""
    param_changes: dict[tuple[str, str], dict[str, Any]] = {}
    file_changes: dict[str, dict[str, Any]] = {}
    cache: dict[str, Any] = {}
    for stage, body in sorted((lock.get("stages") or {}).items()):
        for pfile, sections in sorted((body.get("params") or {}).items()):
            current = _params(root / pfile, cache)
            for section, recorded in sorted((sections or {}).items()):
                now = get(current, section, _ABSENT) if isinstance(current, dict) else _ABSENT
                was_flat, now_flat = (
                    flatten(recorded, section),
                    flatten(now, section) if now is not _ABSENT else {},
                )
                for key in sorted(set(was_flat) | set(now_flat)):
                    if was_flat.get(key, _ABSENT) != now_flat.get(key, _ABSENT):
                        change = param_changes.setdefault(
                            (pfile, key),
                            {
                                "was": was_flat.get(key, _ABSENT),
                                "now": now_flat.get(key, _ABSENT),
                                "stages": [],
                            },
                        )
                        change["stages"].append(stage)
        for kind in ("deps", "outs"):
            for item in body.get(kind) or []:
                md5, rel = str(item.get("md5") or ""), str(item.get("path"))
                path = root / rel
                if not md5 or md5.endswith(".dir") or not path.is_file():
                    continue
                if (now_md5 := _md5(path)) != md5:
                    change = file_changes.setdefault(rel, {"was": md5, "now": now_md5, "uses": []})
                    change["uses"].append(f"{kind[:-1]} of {stage}")
    out: dict[tuple[str, ...], str] = {}
    for (pfile, key), c in sorted(param_changes.items()):
        out[("param", pfile, key)] = (
            f"{pfile} changed since the run: {key} (dvc.lock {_show(c['was'])}, now "
            f"{_show(c['now'])}; stages {', '.join(c['stages'])})"
        )
    for rel, c in sorted(file_changes.items()):
        out[("file", rel)] = (
            f"{rel}: md5 {c['now']} but dvc.lock has {c['was']} ({', '.join(c['uses'])})"
        )
    return out


class _Absent:
    def __repr__(self) -> str:
        return "<absent>"


_ABSENT = _Absent()


def _show(value: Any) -> str:
    return "<absent>" if value is _ABSENT else json.dumps(value, ensure_ascii=False)


def _params(path: Path, cache: dict[str, Any]) -> Any:
    key = path.as_posix()
    if key not in cache:
        try:
            cache[key] = read_params(path)
        except ParamsError:
            cache[key] = None
    return cache[key]


def _md5(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def dvc_status(root: Path) -> tuple[dict[str, Any], str | None]:
    """`dvc status --json` in `root` (analytics off): (status, None) or ({}, problem)."""
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    # the root pipeline, and the optional ensemble pipeline once it has run (its dvc.lock exists):
    # a plain `dvc status` would report every stage of a pipeline never run as changed
    targets = ["dvc.yaml", *([ENSEMBLE_DVC_YAML] if (root / ENSEMBLE_DVC_YAML).with_name("dvc.lock").is_file()
                             and (root / ENSEMBLE_DVC_YAML).is_file() else [])]
    try:
        done = subprocess.run(
            [sys.executable, "-m", "dvc", "status", "--json", *targets],
            cwd=root,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return {}, f"dvc status could not run: {exc}"
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("{")]
    if done.returncode != 0 or not lines:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return {}, f"dvc status failed (exit {done.returncode}): {tail}"
    return json.loads(lines[-1]), None


def parse_dvc_status(status: dict[str, Any]) -> dict[tuple[str, ...], str]:
    """One sentence per changed dep/out/param (grouped across stages) or other stage change."""
    grouped: dict[tuple[str, ...], tuple[str, list[str]]] = {}
    for stage, changes in sorted(status.items()):
        for change in changes if isinstance(changes, list) else [changes]:
            if isinstance(change, str):
                grouped.setdefault(
                    ("stage", stage, change), (f"stage {stage}: {change} since dvc.lock", [])
                )
                continue
            for kind, items in sorted(change.items()):
                role = "dep" if "dep" in kind else "out" if "out" in kind else kind
                for path, state in sorted((items or {}).items()):
                    if isinstance(state, dict):  # a params file: {section or key: state}
                        for key, st in sorted(state.items()):
                            grouped.setdefault(
                                ("param", path, key),
                                (f"{path} changed since the run: {key} {st}", []),
                            )[1].append(stage)
                    else:
                        grouped.setdefault(("file", path), (f"{path}: {state} since dvc.lock", []))[
                            1
                        ].append(f"{role} of {stage}")
    return {k: f"{msg} ({', '.join(uses)})" if uses else msg for k, (msg, uses) in grouped.items()}


def _covered(key: tuple[str, ...], own: dict[tuple[str, ...], str]) -> bool:
    """Whether our own, more precise comparison already reported this dvc status finding."""
    if key[0] == "file":
        return key in own
    if key[0] == "param":
        return any(
            k[0] == "param" and k[1] == key[1] and (k[2] == key[2] or k[2].startswith(key[2] + "."))
            for k in own
        )
    return False
