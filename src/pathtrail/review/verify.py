"""`pathtrail verify`: recompute everything and report where trail, artifacts, card and dvc.lock disagree.

Five checks, each a list of problems (one sentence naming the file and the field) plus notes:

* `audit`     the hash chain of `audit/trail.jsonl` (edited, deleted, reordered entries; torn
              lines repaired by a recovery entry are notes), and that the latest evaluate run
              locked its threshold (a `threshold_locked` entry) before it recorded any result;
* `artifacts` every output of each stage's latest successful run, re-hashed against the trail;
* `card`      each `model_cards/*.json` against the model, metrics, params, git, trail and its
              own Markdown (see `pathtrail.review.card_checks`);
* `dvc`       dvc.lock against the workspace: our own comparison of params (key by key) and file
              md5s, plus `dvc status --json` for everything else (directories, missing outputs);
* `signature` each card's `model_cards/NAME.sig.json` (see `pathtrail.review.release`): VALID,
              INVALID or UNSIGNED. With `release=True` a card passes only with a valid signature by
              a trusted key whose subjects all match, and no entry recorded after the signed head.

Every path read from a card, the trail or a signature must resolve inside the repository
(`core.files.repo_path`); anything else is a problem, never a file opened. Exit status 0 only when
every check passes.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
import sys
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from pathtrail.card.values import flatten, get
from pathtrail.config.loading import ParamsError, read_params
from pathtrail.core.files import repo_path
from pathtrail.core.hashing import sha256_path
from pathtrail.core.text import printable
from pathtrail.provenance import audit
from pathtrail.review.card_checks import card_problems
from pathtrail.review.ordering import threshold_order_problems
from pathtrail.review.release import card_files, check_signature, load_lock, trusted_keys

CHECKS = ("audit", "artifacts", "card", "dvc", "signature")
TITLES = {"audit": "audit trail", "artifacts": "artifacts", "card": "model card", "dvc": "dvc.lock",
          "signature": "signature"}
log = structlog.get_logger(__name__)


@dataclass
class Check:
    name: str
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def add(self, problems: list[str], notes: list[str]) -> None:
        self.problems += problems
        self.notes += notes


@dataclass
class Report:
    root: str
    checks: list[Check]

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    @property
    def problems(self) -> list[str]:
        return [p for c in self.checks for p in c.problems]


def verify(
    repo_root: str | Path = ".",
    checks: Collection[str] = CHECKS,
    trail: str | Path = audit.DEFAULT_TRAIL,
    *,
    release: bool = False,
    trusted_keys: list[str] | None = None,
) -> Report:
    root = Path(repo_root)
    unknown = set(checks) - set(CHECKS)
    if unknown:
        raise ValueError(f"unknown check(s) {sorted(unknown)}; known: {', '.join(CHECKS)}")
    trail_file, refused = repo_path(root, Path(trail).as_posix(), "audit trail")
    entries = audit.read_entries(trail_file) if trail_file is not None and not refused else []
    runners = {
        "audit": lambda c: audit_check(c, entries, Path(trail), refused),
        "artifacts": lambda c: artifact_check(c, root, entries),
        "card": lambda c: c.add(*card_problems(root, entries)),
        "dvc": lambda c: dvc_check(c, root),
        "signature": lambda c: signature_check(c, root, entries, release, trusted_keys),
    }
    report = Report(str(repo_root), [])
    for name in (n for n in CHECKS if n in checks):
        check = Check(name)
        runners[name](check)
        report.checks.append(check)
        log.info("verify.check", check=name, ok=check.ok, problems=len(check.problems))
    return report


# ---------------------------------------------------------------------------------------- audit
def audit_check(check: Check, entries: list[dict[str, Any]], trail: Path, refused: str | None = None) -> None:
    if refused:
        check.problems.append(refused)
        return
    if not entries:
        check.problems.append(f"{trail.as_posix()}: no audit trail (missing or empty)")
        return
    problems, notes = audit.chain_report(entries)
    check.problems += [f"{trail.as_posix()}: {p}" for p in problems]
    check.problems += [f"{trail.as_posix()}: {p}" for p in threshold_order_problems(entries)]
    check.notes += [f"{trail.as_posix()}: {n}" for n in notes]
    check.notes.append(f"{len(entries)} entries, head {str(entries[-1].get('entry_hash'))[:12]}")


def signature_check(check: Check, root: Path, entries: list[dict[str, Any]], release: bool,
                    extra_keys: list[str] | None) -> None:
    keys, key_problems = trusted_keys(root, extra_keys)
    check.problems += key_problems
    cards = card_files(root)
    for path in cards:
        try:
            card = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeError, ValueError, RecursionError):
            card = None  # the card check names it
        check.add(*check_signature(root, path, card, entries, keys, release))
    if release and not cards:
        check.problems.append("model_cards/*.json: no model card to release")
    check.notes.append(f"{len(keys)} trusted key{'s' if len(keys) != 1 else ''}")


# ------------------------------------------------------------------------------------ artifacts
def latest_successful_ends(entries: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    ends: dict[str, dict[str, Any]] = {}
    for e in entries:
        if e.get("action") == "end" and e.get("outcome") == "ok" and isinstance(e.get("outputs"), dict):
            ends[str(e.get("stage"))] = e
    return ends


def artifact_check(check: Check, root: Path, entries: list[dict[str, Any]]) -> None:
    ends = latest_successful_ends(entries)
    n = 0
    for stage, end in sorted(ends.items()):
        for rel, recorded in sorted((end.get("outputs") or {}).items()):
            where = f"(stage {stage}, trail seq {end.get('seq')})"
            path, refused = repo_path(root, rel, f"trail output {where}")
            n += 1
            if refused or path is None:
                check.problems.append(refused or f"{rel!r} {where}: unusable")
            elif not isinstance(recorded, str | None):
                check.problems.append(f"{rel} {where}: the recorded sha256 {recorded!r} is not a hash")
            elif not path.exists():
                if recorded is not None:
                    check.problems.append(
                        f"{rel} {where}: missing; the trail recorded sha256 {recorded[:12]}…"
                    )
            elif recorded is None:
                check.problems.append(
                    f"{rel} {where}: exists, but the trail recorded it as missing"
                )
            elif (now := sha256_path(path)) != recorded:
                check.problems.append(
                    f"{rel} {where}: sha256 is {now[:12]}… but the trail recorded {recorded[:12]}…"
                )
    failed_later = {
        e.get("stage"): e
        for e in entries
        if e.get("action") == "end"
        and e.get("outcome") == "failed"
        and _seq(e) > _seq(ends.get(str(e.get("stage")), {}))
    }
    check.notes += [
        f"stage {s}: latest run failed (seq {e.get('seq')}): {e.get('error')}"
        for s, e in failed_later.items()
    ]
    check.notes.append(f"{n} outputs of {len(ends)} stages re-hashed")


def _seq(entry: dict[str, Any]) -> int:
    seq = entry.get("seq")
    return seq if isinstance(seq, int) and not isinstance(seq, bool) else -1


# ------------------------------------------------------------------------------------------ dvc
def dvc_check(check: Check, root: Path) -> None:
    lock_path = root / "dvc.lock"
    if not lock_path.is_file():
        check.problems.append("dvc.lock: not found; run `dvc repro`")
        return
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
    try:
        done = subprocess.run(
            [sys.executable, "-m", "dvc", "status", "--json"],
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


# ------------------------------------------------------------------------------------- the report
def format_report(report: Report) -> str:
    lines = [f"pathtrail verify: {report.root}"]
    for c in report.checks:
        notes = "; ".join(c.notes)
        lines.append(
            f"[{'PASS' if c.ok else 'FAIL'}] {TITLES.get(c.name, c.name)}"
            + (f": {printable(notes)}" if notes else "")
        )
        lines += [f"    - {printable(p)}" for p in c.problems]
    n = len(report.problems)
    lines.append(
        "RESULT: PASS (everything agrees)"
        if report.ok
        else f"RESULT: FAIL ({n} disagreement{'s' if n != 1 else ''})"
    )
    return "\n".join(lines) + "\n"
