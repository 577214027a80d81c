"""`pathtrail reproduce`: run a card's commit again and compare every artifact the card names.

The artifacts are those the card gives a hash for: `provenance.inputs`, the cohort manifests and
the card's figures (sha256, as the card records them), and every other output of the card's
`provenance.dvc_lock` (DVC's md5). The card's own Markdown and JSON are not compared: they record
the run itself (audit chain head, git state), not a result. For an artifact that differs, the
largest |Δ| over its numbers is reported (`pathtrail.review.compare`), read against the expected
bytes from the user's working tree or DVC cache. Tested in tests/unit/test_reproduce.py and
tests/stages/test_reproduce_cli.py.
"""

from __future__ import annotations

import importlib.metadata
import json
import platform
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pathtrail.card.public import OUTSIDE, redact
from pathtrail.card.values import get
from pathtrail.config.loading import result_params
from pathtrail.core.errors import PathTrailError
from pathtrail.core.files import repo_path
from pathtrail.core.hashing import sha256_path
from pathtrail.core.text import printable
from pathtrail.review import rerun
from pathtrail.review.card_checks import differences
from pathtrail.review.card_release import show
from pathtrail.review.compare import numeric_delta
from pathtrail.review.release import load_lock, select_card
from pathtrail.review.sources import Expected

MAX_LISTED = 5
IDENTICAL, DIFFERS, MISSING, UNCHECKED = "identical", "differs", "missing", "not checked"


@dataclass(frozen=True)
class Artifact:
    path: str  # relative to the repository root
    kind: str  # "sha256" (PathTrail's hash, as the card records it) or "md5" (DVC's, from dvc.lock)
    expected: str


@dataclass(frozen=True)
class Row:
    artifact: Artifact
    reproduced: str | None
    status: str
    detail: str = ""


@dataclass
class Report:
    card: str
    commit: str
    notes: list[str] = field(default_factory=list)
    rows: list[Row] = field(default_factory=list)
    kept: Path | None = None

    @property
    def ok(self) -> bool:
        return bool(self.rows) and all(r.status == IDENTICAL for r in self.rows)


def load_card(path: Path, root: Path) -> tuple[dict[str, Any], str]:
    """The card JSON and its path relative to the repository; errors for what cannot be reproduced."""
    rel = _relative(path, root)
    try:
        card = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeError, ValueError) as exc:
        raise PathTrailError(f"{rel}: not a readable card JSON ({type(exc).__name__}); "
                             "rebuild it with `dvc repro`") from exc
    if not isinstance(card, dict):
        raise PathTrailError(f"{rel}: not a card (expected a JSON object)")
    commit = get(card, "provenance.git_commit")
    if not isinstance(commit, str) or not re.fullmatch(r"[0-9a-f]{40}", commit):
        raise PathTrailError(f"{rel}: provenance.git_commit is {printable(show(commit))}, not a commit; the card "
                             "was built outside a git commit and cannot be reproduced")
    if get(card, "provenance.git_dirty") or get(card, "provenance.upstream_dirty"):
        changed = get(card, "provenance.git_modified") or get(card, "provenance.upstream_dirty") or []
        listed = printable(", ".join(str(c) for c in changed[:MAX_LISTED])) if isinstance(changed, list) else ""
        raise PathTrailError(
            f"{rel}: built from uncommitted source ({listed or 'git_dirty'}), so commit {commit[:12]} "
            "does not hold the code that made it. Commit the code, rerun `dvc repro`, then reproduce"
        )
    return card, rel


def _relative(path: Path, root: Path) -> str:
    try:
        return path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError as exc:
        raise PathTrailError(f"{path}: the card must lie inside the repository {root}") from exc


def expected_artifacts(card: dict[str, Any], card_rel: str) -> list[Artifact]:
    """Every artifact the card gives a hash for, sha256 first, sorted by path within each kind."""
    sha: dict[str, str] = {}
    for path, digest in (get(card, "provenance.inputs") or {}).items():
        sha[str(path)] = str(digest)
    for m in (get(card, "provenance.manifests") or {}).values():
        if isinstance(m, dict) and m.get("path") and m.get("sha256"):
            sha[str(m["path"])] = str(m["sha256"])
    folder = Path(card_rel).parent
    for rel, digest in (card.get("figures") or {}).items():
        sha[(folder / str(rel)).as_posix()] = str(digest)
    own = {card_rel, Path(card_rel).with_suffix(".md").as_posix()}
    md5 = {path: str(h) for path, h in lock_outs(get(card, "provenance.dvc_lock") or {}).items()
           if path not in sha and path not in own}
    return ([Artifact(p, "sha256", h) for p, h in sorted(sha.items())]
            + [Artifact(p, "md5", h) for p, h in sorted(md5.items())])


def lock_outs(stages: dict[str, Any]) -> dict[str, str]:
    """{output path: md5} from the card's `provenance.dvc_lock` ({stage: {deps, outs}})."""
    return {str(p): str(h) for body in stages.values() if isinstance(body, dict)
            for p, h in (body.get("outs") or {}).items() if h}


def locked_versions(lock_text: str) -> dict[str, str]:
    """{normalised name: version} of a pip requirements lock (`name==version` lines)."""
    out = {}
    for line in lock_text.splitlines():
        line = line.split("#", 1)[0].strip()
        if m := re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?\s*==\s*([^\s;]+).*", line):
            out[_name(m.group(1))] = m.group(3)
    return out


def installed_versions() -> dict[str, str]:
    return {_name(d.metadata["Name"]): d.version for d in importlib.metadata.distributions()
            if d.metadata["Name"]}


def _name(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def package_differences(locked: dict[str, str], installed: dict[str, str]) -> list[str]:
    """One line per locked package that is missing or at another version (local build labels such
    as `+cpu` aside: the lock pins the version, the index picks the build)."""
    found = []
    for name, want in sorted(locked.items()):
        have = installed.get(name)
        if have is None:
            found.append(f"{name} not installed (locked {want})")
        elif have.split("+")[0] != want.split("+")[0]:
            found.append(f"{name} {have} (locked {want})")
    return found


def environment_notes(card: dict[str, Any], lock_text: str | None) -> list[str]:
    notes = []
    if lock_text is None:
        notes.append("environment: the commit has no requirements.lock; package versions not checked")
    else:
        locked = locked_versions(lock_text)
        diffs = package_differences(locked, installed_versions())
        if not locked:
            notes.append("environment: the commit's requirements.lock pins no package; not checked")
        elif diffs:
            more = f" and {len(diffs) - MAX_LISTED} more" if len(diffs) > MAX_LISTED else ""
            notes.append(f"environment: {len(diffs)} package(s) differ from the commit's "
                         f"requirements.lock: {', '.join(diffs[:MAX_LISTED])}{more}; run `make setup` "
                         "at that commit for its exact environment")
        else:
            notes.append("environment: every package of the commit's requirements.lock is installed "
                         "at its locked version")
    torch_then, machine_then = get(card, "environment.torch_version"), get(card, "environment.machine")
    torch_now = installed_versions().get("torch")
    if torch_then and torch_now and torch_then != torch_now:
        notes.append(f"torch: {torch_now} here, {torch_then} in the card's run (another build can "
                     "change the bits; the table gives the largest difference)")
    if machine_then and machine_then != platform.machine():
        notes.append(f"machine: {platform.machine()} here, {machine_then} in the card's run (bits "
                     "cannot be promised across CPU architectures; the table gives the largest "
                     "difference)")
    return notes


def params_notes(card: dict[str, Any], params_text: str | None, root: Path) -> list[str]:
    if params_text is None:
        return ["params: the commit has no params.yaml"]
    try:
        commit_params = yaml.safe_load(params_text) or {}
    except yaml.YAMLError:
        return ["params: the commit's params.yaml is not readable YAML"]
    ours = redact(result_params(commit_params), str(root.resolve()))  # runtime knobs: never a result
    theirs = result_params(card.get("params") or {})
    diffs = differences(theirs, ours, "params")
    if not diffs:
        return ["params: the commit's params.yaml equals the card's params"]
    shown = ", ".join(f"{k[len('params.'):]} (card {show(a)}, commit {show(b)})" for k, a, b in diffs[:MAX_LISTED])
    return [f"params: the commit's params.yaml differs from the card's params at {shown}"
            + (f" and {len(diffs) - MAX_LISTED} more" if len(diffs) > MAX_LISTED else "")
            + "; the card is an experiment's, and the commit's params are what is run"]


def compare(artifacts: list[Artifact], worktree: Path, expected: Expected,
            reproduced_lock: dict[str, str], commit_params: dict[str, Any]) -> list[Row]:
    """One row per artifact: the reproduced hash (from the worktree's files, or for md5 its new
    dvc.lock) against the card's."""
    return [_compare_md5(a, worktree, expected, reproduced_lock) if a.kind == "md5"
            else _compare_sha(a, worktree, expected, commit_params) for a in artifacts]


def _compare_sha(a: Artifact, worktree: Path, expected: Expected, commit_params: dict[str, Any]) -> Row:
    path, problem = _located(a.path, worktree, commit_params)
    if path is None:
        return Row(a, None, UNCHECKED, problem or "")
    if not path.exists():
        return Row(a, None, MISSING, "the run did not write it")
    got = sha256_path(path)
    if got == a.expected:
        return Row(a, got, IDENTICAL)
    before = expected.file(a.path, a.expected) if path.is_file() else None
    return Row(a, got, DIFFERS, _file_detail(before, path, a.path))


def _compare_md5(a: Artifact, worktree: Path, expected: Expected, lock: dict[str, str]) -> Row:
    path, problem = repo_path(worktree, a.path, "card artifact")
    if path is None:
        return Row(a, None, UNCHECKED, problem or "")
    got = lock.get(a.path)
    if got is None or not path.exists():
        return Row(a, got, MISSING, "the run did not write it")
    if got == a.expected:
        return Row(a, got, IDENTICAL)
    if not got.endswith(".dir"):
        return Row(a, got, DIFFERS, _file_detail(expected.object(a.expected), path, a.path))
    return Row(a, got, DIFFERS, expected.folder_detail(a.expected, path))


def _file_detail(before: Path | None, after: Path, name: str) -> str:
    if before is None:
        return "no copy of the expected file here to compare with"
    delta = numeric_delta(before, after, name)
    return "" if delta is None else delta.describe()


def _located(rel: str, worktree: Path, params: dict[str, Any]) -> tuple[Path | None, str | None]:
    """The reproduced file: inside the worktree (never a path that leads out of it, or a FIFO), or a
    manifest outside the repository that the commit's params name by an absolute path."""
    if not rel.startswith(OUTSIDE):
        return repo_path(worktree, rel, "card artifact")
    name = rel.rsplit("/", 1)[-1]
    data = params.get("data") if isinstance(params.get("data"), dict) else {}
    for key in ("internal_manifest", "external_manifest"):
        value = data.get(key)
        if isinstance(value, str) and Path(value).is_absolute() and Path(value).name == name:
            return Path(value), None
    return None, "outside the repository, and not a manifest the params name"


def reproduce(root: Path, card_arg: str | None, *, jobs: int | None = None, keep: bool = False,
              on_stage: Callable[[str], None] | None = None) -> Report:
    """Run the card's commit again in a temporary worktree and compare; see the module docstring."""
    if not (root / ".dvc").is_dir():
        raise PathTrailError(f"{root}: not the root of a DVC repository; run from the repository root")
    prefix = rerun.git(root, "rev-parse", "--show-prefix")
    if prefix.returncode or prefix.stdout.strip():
        raise PathTrailError(f"{root}: not the top folder of a git repository; `pathtrail reproduce` "
                             "checks out the card's commit, so run it at the repository root")
    card, card_rel = load_card(select_card(root, card_arg), root)
    commit = get(card, "provenance.git_commit")
    if rerun.git(root, "cat-file", "-t", commit).stdout.strip() != "commit":
        raise PathTrailError(f"{card_rel}: commit {commit} is not in this repository; fetch it "
                             "(`git fetch --all`) or reproduce in the repository the card came from")
    if rerun.show(root, commit, "dvc.yaml") is None:
        raise PathTrailError(f"{card_rel}: commit {commit[:12]} has no dvc.yaml: nothing to run")
    artifacts = expected_artifacts(card, card_rel)
    if not artifacts:
        raise PathTrailError(f"{card_rel}: the card names no artifact with a hash; nothing to compare")
    params_text = rerun.show(root, commit, "params.yaml")
    report = Report(card_rel, commit, [*environment_notes(card, rerun.show(root, commit, "requirements.lock")),
                                       *params_notes(card, params_text, root)])
    if jobs is not None:
        report.notes.append(f"data-loader workers: {jobs} ({rerun.JOBS_ENV}; a runtime knob, "
                            "no result depends on it)")
    expected = Expected(root, rerun.user_cache(root), lock_outs(get(card, "provenance.dvc_lock") or {}))
    with rerun.worktree(root, commit, keep) as run:
        env = rerun.stage_env(run.worktree, jobs)
        pulled = rerun.prepare(run, expected.cache, env)
        if pulled:
            report.notes.append(f"data from your DVC cache: {', '.join(pulled)}")
        rerun.repro(run, env, on_stage)
        lock = {o["path"]: o.get("md5") for body in load_lock(run.worktree / "dvc.lock")[0]["stages"].values()
                for o in body["outs"]}
        commit_params = yaml.safe_load(params_text or "") or {}
        report.rows = compare(artifacts, run.worktree, expected, lock,
                              commit_params if isinstance(commit_params, dict) else {})
        report.kept = run.folder if keep else None
    return report


def format_report(report: Report) -> str:
    lines = [f"Reproducing {printable(report.card)} at commit {report.commit[:12]}"]
    lines += [f"  {printable(n)}" for n in report.notes]
    if report.kept:
        lines.append(f"  worktree kept: {report.kept / 'worktree'} (remove it with "
                     f"`git worktree remove --force {report.kept / 'worktree'}`)")
    header = ("artifact", "hash", "expected", "reproduced", "result")
    table = [(printable(r.artifact.path), r.artifact.kind, r.artifact.expected[:12],
              (r.reproduced or "-")[:12], r.status + (f" ({printable(r.detail)})" if r.detail else ""))
             for r in report.rows]
    widths = [max(len(row[i]) for row in [header, *table]) for i in range(4)]
    lines.append("")
    for row in [header, *table]:
        lines.append("  ".join(c.ljust(w) for c, w in zip(row[:4], widths, strict=True)) + "  " + row[4])
    labels = {IDENTICAL: "identical", DIFFERS: "differ", MISSING: "missing", UNCHECKED: "not checked"}
    counts = {label: sum(r.status == s for r in report.rows) for s, label in labels.items()}
    summary = ", ".join(f"{n} {label}" for label, n in counts.items() if n)
    verdict = "REPRODUCED: every artifact is identical" if report.ok else "NOT REPRODUCED"
    lines += ["", f"{len(report.rows)} artifacts: {summary}", verdict]
    return "\n".join(lines) + "\n"

