"""`pathtrail verify`: recompute everything and report where trail, artifacts, card and dvc.lock disagree.

Five checks, each a list of problems (one sentence naming the file and the field) plus notes:

* `audit`     the hash chain of `audit/trail.jsonl` (edited, deleted, reordered entries; torn
              lines repaired by a recovery entry are notes), and that the evaluate run whose
              outputs are present locked its threshold (a `threshold_locked` entry) before it
              recorded any result;
* `artifacts` each stage's outputs re-hashed and matched to a recorded successful run that read
              the inputs and params present now: the latest, or an earlier one whose outputs DVC
              restored from its run-cache (see `pathtrail.review.runs`; the note names the run);
* `card`      each `model_cards/*.json` against the model, metrics, params, git, trail and its
              own Markdown (see `pathtrail.review.card_checks`);
* `dvc`       dvc.lock against the workspace: our own comparison of params (key by key) and file
              md5s, plus `dvc status --json` for everything else (`pathtrail.review.lock_check`);
* `signature` each card's `model_cards/NAME.sig.json` (see `pathtrail.review.release`): VALID,
              INVALID or UNSIGNED. With `release=True` a card passes only with a valid signature by
              a trusted key whose subjects all match, and no entry recorded after the signed head.

Files are hashed through the stat-keyed sha256 cache the stages share (`core.hash_cache`): a file
whose stat is unchanged since a stage hashed it is not read again. `rehash=True` (`verify
--rehash`) reads every byte instead, and so does `release=True` always: a release sign-off is the one
moment a reviewer must not trust local state (tests/unit/test_hash_cache.py::test_verify_rehash_*).

Every path read from a card, the trail or a signature must resolve inside the repository
(`core.files.repo_path`); anything else is a problem, never a file opened. Exit status 0 only when
every check passes. When none of the outputs DVC tracks is present (a fresh clone), one line first
says what to run and the problems about those missing files are counted, not listed
(`pathtrail.review.absent`).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from pathtrail.core.files import repo_path
from pathtrail.core.hash_cache import fresh_reads
from pathtrail.core.text import printable
from pathtrail.provenance import audit
from pathtrail.review.absent import about_absent, absent_outputs, hint
from pathtrail.review.card_checks import card_problems
from pathtrail.review.lock_check import ENSEMBLE_DVC_YAML, dvc_findings
from pathtrail.review.ordering import threshold_order_problems
from pathtrail.review.release import card_files, check_signature, load_lock, trusted_keys
from pathtrail.review.runs import RunMatcher

CHECKS = ("audit", "artifacts", "card", "dvc", "signature")
TITLES = {"audit": "audit trail", "artifacts": "artifacts", "card": "model card", "dvc": "dvc.lock",
          "signature": "signature"}
log = structlog.get_logger(__name__)


@dataclass
class Check:
    name: str
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    folded: int = 0  # problems about absent DVC outputs, counted in the report's hint

    @property
    def ok(self) -> bool:
        return not self.problems and not self.folded

    def add(self, problems: list[str], notes: list[str]) -> None:
        self.problems += problems
        self.notes += notes


@dataclass
class Report:
    root: str
    checks: list[Check]
    hint: str | None = None  # what to run when no DVC-tracked output is present

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
    rehash: bool = False,
) -> Report:
    with fresh_reads() if rehash or release else contextlib.nullcontext():
        return _verify(Path(repo_root), str(repo_root), checks, trail, release, trusted_keys)


def _verify(root: Path, shown: str, checks: Collection[str], trail: str | Path, release: bool,
            trusted_keys: list[str] | None) -> Report:
    unknown = set(checks) - set(CHECKS)
    if unknown:
        raise ValueError(f"unknown check(s) {sorted(unknown)}; known: {', '.join(CHECKS)}")
    trail_file, refused = repo_path(root, Path(trail).as_posix(), "audit trail")
    entries = audit.read_entries(trail_file) if trail_file is not None and not refused else []
    runs = RunMatcher(root, entries)
    runners = {
        "audit": lambda c: audit_check(c, entries, Path(trail), refused, runs),
        "artifacts": lambda c: artifact_check(c, runs),
        "card": lambda c: c.add(*card_problems(root, entries, runs)),
        "dvc": lambda c: c.add(*dvc_findings(root)),
        "signature": lambda c: signature_check(c, root, entries, release, trusted_keys),
    }
    report = Report(shown, [])
    for name in (n for n in CHECKS if n in checks):
        check = Check(name)
        runners[name](check)
        report.checks.append(check)
        log.info("verify.check", check=name, ok=check.ok, problems=len(check.problems))
    fold_absent(report, root)
    return report


def fold_absent(report: Report, root: Path) -> None:
    """A fresh clone: the problems about DVC outputs that are all absent become one hint."""
    if not (root / "dvc.lock").is_file():
        return
    absent = absent_outputs(root, load_lock(root / "dvc.lock")[0])
    if absent and (root / ENSEMBLE_DVC_YAML).with_name("dvc.lock").is_file():  # the optional second pipeline's
        absent += absent_outputs(root, load_lock((root / ENSEMBLE_DVC_YAML).with_name("dvc.lock"))[0])
    if not absent:
        return
    for c in report.checks:
        kept = [p for p in c.problems if not about_absent(p, absent)]
        c.folded, c.problems = len(c.problems) - len(kept), kept
    if folded := sum(c.folded for c in report.checks):
        report.hint = hint(root, absent, folded)


# ---------------------------------------------------------------------------------------- audit
def audit_check(check: Check, entries: list[dict[str, Any]], trail: Path, refused: str | None = None,
                runs: RunMatcher | None = None) -> None:
    if refused:
        check.problems.append(refused)
        return
    if not entries:
        check.problems.append(f"{trail.as_posix()}: no audit trail (missing or empty)")
        return
    problems, notes = audit.chain_report(entries)
    check.problems += [f"{trail.as_posix()}: {p}" for p in problems]
    evaluate = runs.match("evaluate") if runs is not None else None
    present = evaluate.run.end if evaluate is not None and evaluate.run is not None else None
    check.problems += [f"{trail.as_posix()}: {p}" for p in threshold_order_problems(entries, present)]
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
def artifact_check(check: Check, runs: RunMatcher) -> None:
    matches = runs.all()
    for stage, m in matches.items():
        check.problems += m.problems
        if m.restored and m.run is not None:
            check.notes.append(f"{stage}: outputs match {m.run.label}, restored by DVC's run-cache or `dvc exp "
                               f"apply` (the latest run, seq {m.latest.end.get('seq')}, made other outputs)")
    latest = {s: m.latest.seq for s, m in matches.items()}
    failed_later = {e.get("stage"): e for e in runs.failed if _seq(e) > latest.get(str(e.get("stage")), -1)}
    check.notes += [
        f"stage {s}: latest run failed (seq {e.get('seq')}): {e.get('error')}"
        for s, e in failed_later.items()
    ]
    if runs.outside:
        check.notes.append(f"{len(runs.outside)} recorded input(s) outside the repository not re-hashed "
                           f"(e.g. {min(runs.outside)})")
    n = sum(len(m.latest.outputs) for m in matches.values())
    check.notes.append(f"{n} outputs of {len(matches)} stages re-hashed")


def _seq(entry: dict[str, Any]) -> int:
    seq = entry.get("seq")
    return seq if isinstance(seq, int) and not isinstance(seq, bool) else -1


# ------------------------------------------------------------------------------------- the report
def format_report(report: Report) -> str:
    lines = [f"pathtrail verify: {report.root}"] + ([printable(report.hint)] if report.hint else [])
    for c in report.checks:
        notes = "; ".join(c.notes + ([f"{c.folded} about missing DVC outputs (see the first line)"]
                                     if c.folded else []))
        lines.append(
            f"[{'PASS' if c.ok else 'FAIL'}] {TITLES.get(c.name, c.name)}"
            + (f": {printable(notes)}" if notes else "")
        )
        lines += [f"    - {printable(p)}" for p in c.problems]
    n, folded = len(report.problems), sum(c.folded for c in report.checks)
    lines.append(
        "RESULT: PASS (everything agrees)"
        if report.ok
        else f"RESULT: FAIL ({n} disagreement{'s' if n != 1 else ''}"
        + (f" and {folded} about missing DVC outputs: see the first line)" if folded else ")")
    )
    return "\n".join(lines) + "\n"
