"""The model-card part of `pathtrail verify`: does each card still describe what is on disk?

A card (`model_cards/<name>.json`) is compared with: the model weights, metrics files, params.yaml,
its own params hash, the git history, the audit trail, the stain reference, its figures, the
files it was built from, dvc.lock, and its Markdown (re-rendered from the JSON, byte for byte, and
checked against the stored `markdown_sha256`), and the cohort manifests it names (re-hashed wherever
they live). Each disagreement names the card field and the file. What the card describes must be
what is present: for each stage, the run whose outputs are in the workspace
(`pathtrail.review.runs`) must have the outputs of the run the card describes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pathtrail.card.build import lock_stage_hashes
from pathtrail.card.public import OUTSIDE, redact
from pathtrail.card.render import render_markdown
from pathtrail.card.values import CARD_STAGE, flatten, get
from pathtrail.config.loading import ParamsError, read_params, result_params
from pathtrail.core.files import repo_path
from pathtrail.core.hashing import digest, sha256_bytes, sha256_path
from pathtrail.ensemble.layout import is_ensemble_stage
from pathtrail.review.card_execution import execution_problems, headline_problems
from pathtrail.review.card_release import release_problems, show, training_params_problems
from pathtrail.review.manifests import manifest_problems
from pathtrail.review.release import card_files, load_lock
from pathtrail.review.runs import RunMatcher

MAX_DIFFS = 20
COMPARED_FILES = (
    ("metrics.eval", "metrics/eval.json"),
    ("metrics.train", "metrics/train.json"),
    ("compile_check", "metrics/compile_check.json"),
)


def card_problems(root: Path, entries: list[dict[str, Any]],
                  runs: RunMatcher | None = None) -> tuple[list[str], list[str]]:
    """(problems, notes) for every `model_cards/*.json` under `root`."""
    problems: list[str] = []
    notes: list[str] = []
    cards = card_files(root)
    if not cards:
        problems.append("model_cards/*.json: no model card; run `dvc repro model_card`")
    for path in cards:
        rel = path.relative_to(root).as_posix()
        try:
            card = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeError, ValueError, RecursionError) as exc:
            problems.append(f"{rel}: not readable as JSON ({type(exc).__name__})")
            continue
        if not isinstance(card, dict):
            problems.append(f"{rel}: a JSON {type(card).__name__}, not a model card object")
            continue
        try:
            found = [f"{rel}: {p}" for p in check_card(card, path, root, entries, runs)]
        except (TypeError, AttributeError, ValueError, KeyError, RecursionError) as exc:
            found = [f"{rel}: malformed card, the checks stopped at {type(exc).__name__}: {str(exc)[:200]}"]
        problems += found
        head = f"chain head {str(get(card, 'audit.chain_head'))[:12]} (seq {get(card, 'audit.chain_head_seq')})"
        notes.append(f"{rel}: {card.get('release_status')}, {head}" + ("" if found else ", consistent"))
    return problems, notes


def check_card(
    card: dict[str, Any], path: Path, root: Path, entries: list[dict[str, Any]],
    runs: RunMatcher | None = None,
) -> list[str]:
    out: list[str] = []
    out += _markdown(card, path.with_suffix(".md"))
    out += _model(card, root)
    for field, rel in COMPARED_FILES:
        out += _same_as_file(get(card, field), field, root / rel, rel)
    out += _params(card, root)
    out += _git_commit(card, root)
    out += _chain_head(card, entries, runs or RunMatcher(root, entries))
    out += _figures(card, path.parent, root)
    out += _inputs(card, root)
    out += manifest_problems(card, root)
    out += _lock(card, root)
    out += release_problems(card, root, entries)
    out += execution_problems(card, entries) + headline_problems(card, root)
    return out


def differences(a: Any, b: Any, prefix: str) -> list[tuple[str, Any, Any]]:
    """(dotted field, value in a, value in b) for every leaf that differs; `<absent>` for missing keys."""
    if isinstance(a, dict) and isinstance(b, dict):
        found = []
        for k in sorted(set(a) | set(b), key=str):
            key = f"{prefix}.{k}"
            if k not in a or k not in b:
                found.append((key, a.get(k, "<absent>"), b.get(k, "<absent>")))
            else:
                found += differences(a[k], b[k], key)
        return found
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [
            d
            for i, (x, y) in enumerate(zip(a, b, strict=True))
            for d in differences(x, y, f"{prefix}[{i}]")
        ]
    same = (
        a == b
        and type(a) is type(b)
        or (
            isinstance(a, int | float)
            and isinstance(b, int | float)
            and not isinstance(a, bool)
            and a == b
        )
    )
    return [] if same else [(prefix, a, b)]


def _limited(lines: list[str]) -> list[str]:
    return (
        lines
        if len(lines) <= MAX_DIFFS
        else lines[:MAX_DIFFS] + [f"... and {len(lines) - MAX_DIFFS} more"]
    )


def _same_as_file(value: Any, field: str, path: Path, rel: str) -> list[str]:
    if not path.is_file():
        return [f"card field {field} cannot be checked: {rel} is missing"]
    try:
        current = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        return [f"{rel} is not valid JSON ({exc})"]
    return _limited(
        [
            f"card field {f} = {show(a)} but {rel} has {show(b)}"
            for f, a, b in differences(value, current, field)
        ]
    )


def _markdown(card: dict[str, Any], md: Path) -> list[str]:
    if not md.is_file():
        return [f"{md.name} is missing (the card's Markdown)"]
    data = md.read_bytes()
    out = []
    if sha256_bytes(data) != card.get("markdown_sha256"):
        out.append(
            f"{md.name}: sha256 {sha256_bytes(data)[:12]}… but card field markdown_sha256 is "
            f"{str(card.get('markdown_sha256'))[:12]}… (the Markdown was edited or is from another build)"
        )
    try:
        expected = render_markdown(card)
    except (
        KeyError,
        TypeError,
        AttributeError,
        ValueError,
    ) as exc:  # a damaged card is itself the finding
        return [
            *out,
            f"the Markdown cannot be re-rendered from the card JSON ({type(exc).__name__}: {exc})",
        ]
    actual = data.decode("utf-8", errors="replace")
    if actual != expected:
        have, want = actual.splitlines(), expected.splitlines()
        n = next(
            (i for i, (x, y) in enumerate(zip(have, want, strict=False)) if x != y),
            min(len(have), len(want)),
        )
        out.append(
            f"{md.name} line {n + 1} does not match the Markdown rendered from the card JSON: "
            f"{show(have[n] if n < len(have) else '<end of file>')!r} vs expected "
            f"{show(want[n] if n < len(want) else '<end of file>')!r}"
        )
    return out


def _model(card: dict[str, Any], root: Path) -> list[str]:
    path, out = root / "models/model.pt", []
    if not path.is_file():
        return ["card field provenance.model_sha256 cannot be checked: models/model.pt is missing"]
    now = sha256_path(path)
    for field in ("provenance.model_sha256", "model.sha256"):
        if get(card, field) != now:
            out.append(
                f"card field {field} = {str(get(card, field))[:12]}… but models/model.pt has sha256 {now[:12]}…"
            )
    reference = root / "models/stain_reference.json"
    if reference.is_file() and (ref := sha256_path(reference)) != get(card, "provenance.stain_reference.sha256"):
        out.append(
            f"card field provenance.stain_reference.sha256 = {str(get(card, 'provenance.stain_reference.sha256'))[:12]}…"
            f" but models/stain_reference.json has sha256 {ref[:12]}…"
        )
    out += training_params_problems(card, path)
    return out


def _params(card: dict[str, Any], root: Path) -> list[str]:
    params, out = card.get("params"), []
    if digest(params) != card.get("params_sha256"):
        out.append(
            f"card field params_sha256 = {card.get('params_sha256')} is not the hash of its params "
            f"({digest(params)})"
        )
    try:
        current = redact(result_params(read_params(root / "params.yaml")), str(root.resolve()))
    except ParamsError as exc:
        return [*out, f"card params cannot be checked: {exc}"]
    was, now = flatten(params), flatten(current)
    keys = sorted(
        k for k in set(was) | set(now) if was.get(k, "<absent>") != now.get(k, "<absent>")
    )
    if keys:
        shown = ", ".join(
            f"{k} (card {show(was.get(k, '<absent>'))}, params.yaml {show(now.get(k, '<absent>'))})"
            for k in keys[:MAX_DIFFS]
        )
        out.append(
            f"card params differ from params.yaml: {shown}"
            + (f" and {len(keys) - MAX_DIFFS} more" if len(keys) > MAX_DIFFS else "")
        )
    return out


def _git_commit(card: dict[str, Any], root: Path) -> list[str]:
    commit = get(card, "provenance.git_commit")
    if not commit:
        return [
            "card field provenance.git_commit is empty: the card was built outside a git commit"
        ]
    import git

    try:
        repo = git.Repo(root, search_parent_directories=True)
        kind = repo.git.cat_file("-t", str(commit))
    except (git.exc.GitError, ValueError):  # not a repository, or no such object
        kind = None
    return (
        []
        if kind == "commit"
        else [f"card field provenance.git_commit = {commit} is not a commit in this repository"]
    )


def _chain_head(card: dict[str, Any], entries: list[dict[str, Any]], runs: RunMatcher) -> list[str]:
    """The card's chain head is in the trail, and the outputs present are those the card describes.

    The card describes, per stage, its latest successful run up to the chain head. Where a stage's
    present outputs match a recorded run (`pathtrail.review.runs`), that run must have the outputs
    the card describes: outputs DVC restored from its run-cache after a later experiment keep the
    card valid, outputs of another run do not. Where they match none (the artifacts check says why),
    no run after the chain head may have changed what the card describes; one that reproduced the
    same outputs bit for bit (a fresh clone's `dvc repro`, say) leaves the card valid.
    Tested in tests/unit/test_verify.py and tests/unit/test_verify_runcache.py.
    """
    head = get(card, "audit.chain_head")
    hashes = [e.get("entry_hash") for e in entries]
    if head not in hashes:
        return [
            f"card field audit.chain_head = {head} is not the hash of any entry in the audit trail"
        ]
    cut = hashes.index(head) + 1
    if get(card, "audit.chain_head_seq") != entries[cut - 1].get("seq"):
        return [(f"card field audit.chain_head_seq = {get(card, 'audit.chain_head_seq')} but the entry with hash "
                 f"{str(head)[:12]}… is seq {entries[cut - 1].get('seq')}")]
    described: dict[str, dict[str, Any]] = {}
    for e in entries[:cut]:
        if e.get("action") == "end" and e.get("outcome") == "ok":
            described[str(e.get("stage"))] = e
    out, judged = [], set()
    for stage, end in sorted(described.items()):
        match = runs.match(stage) if stage != CARD_STAGE else None
        if match is None or match.run is None:
            continue
        judged.add(stage)
        if match.run.outputs == end.get("outputs"):
            continue
        if match.run.seq > _seq(end):
            out.append(_stale(stage, match.run.end))
        else:
            out.append(f"the card describes stage {stage}'s run seq {end.get('seq')}, but the workspace holds the "
                       f"outputs of its {match.run.label}: the card does not describe the present artifacts; "
                       "rebuild it (`dvc repro model_card`)")
    for e in entries[cut:]:
        stage = str(e.get("stage"))
        if stage == CARD_STAGE or stage in judged or e.get("action") != "end" or e.get("outcome") != "ok":
            continue
        if is_ensemble_stage(stage):
            continue  # the optional ensemble's runs: described by its own card section, not by this card
        if e.get("outputs") is not None and e.get("outputs") == (described.get(stage) or {}).get("outputs"):
            continue  # reproduced the very outputs the card describes
        out.append(_stale(stage, e))
    return out


def _stale(stage: str, end: dict[str, Any]) -> str:
    return (f"the audit trail records a run of stage {stage} (seq {end.get('seq')}) after the card's chain head "
            "whose outputs differ from those the card describes: the card is out of date; rerun `dvc repro`")


def _seq(entry: dict[str, Any]) -> int:
    seq = entry.get("seq")
    return seq if isinstance(seq, int) and not isinstance(seq, bool) else -1


def _figures(card: dict[str, Any], folder: Path, root: Path) -> list[str]:
    out = []
    for rel, sha in sorted((card.get("figures") or {}).items()):
        path, refused = repo_path(root, (folder.relative_to(root) / rel).as_posix(), f"card field figures.{rel}")
        if refused or path is None:
            out.append(str(refused))
        elif not path.is_file():
            out.append(f"card field figures.{rel}: model_cards/{rel} is missing")
        elif (now := sha256_path(path)) != sha:
            out.append(
                f"card field figures.{rel} = {str(sha)[:12]}… but model_cards/{rel} has sha256 {now[:12]}…"
            )
    return out


def _inputs(card: dict[str, Any], root: Path) -> list[str]:
    out = []
    for rel, sha in sorted((get(card, "provenance.inputs") or {}).items()):
        if str(rel).startswith(OUTSIDE):
            continue  # outside the repository: not published, so not checkable here
        path, refused = repo_path(root, rel, f"card field provenance.inputs.{rel}")
        if refused or path is None:
            out.append(str(refused))
            continue
        now = sha256_path(path) if path.exists() else None
        if now != sha:
            out.append(
                f"card field provenance.inputs.{rel} = {str(sha)[:12]}… but {rel} "
                + (f"has sha256 {now[:12]}…" if now else "is missing")
            )
    return out


def _lock(card: dict[str, Any], root: Path) -> list[str]:
    path = root / "dvc.lock"
    recorded = get(card, "provenance.dvc_lock") or {}
    if not recorded:
        return []
    if not path.is_file():
        return ["card field provenance.dvc_lock cannot be checked: dvc.lock is missing"]
    current = lock_stage_hashes(load_lock(path)[0])
    return _limited(
        [
            f"card field {f} = {show(a)} but dvc.lock has {show(b)}"
            for f, a, b in differences(
                recorded, {s: current.get(s, "<absent>") for s in recorded}, "provenance.dvc_lock"
            )
        ]
    )
