"""Release signatures: what `pathtrail sign` attests, and how `verify` checks it.

`model_cards/NAME.sig.json` is a DSSE envelope (see `pathtrail.provenance.signing`) around an
in-toto Statement v1. Its subjects are every artifact the card describes, each with its sha256
(a folder's sha256 is PathTrail's folder hash, `core.hashing.sha256_path`): the card JSON and
Markdown, the card's figures, every file in the card's `provenance.inputs` and manifests,
dvc.lock, and every output dvc.lock records (weights, stain reference, validated tables, split,
patch store, predictions, metrics, plots). The predicate holds the card's commit, params sha256
and release status, the audit chain head with its sequence number and entry count at signing,
and the signer's name and key id.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import yaml

from pathtrail import __version__
from pathtrail.card.status import MEANINGS
from pathtrail.card.values import RELEASE_CANDIDATE, RELEASED, get
from pathtrail.core.errors import PathTrailError
from pathtrail.core.files import repo_path
from pathtrail.core.hashing import loads_unique, sha256_path
from pathtrail.provenance.signing import (
    Opened,
    PublicKey,
    SigningKeyError,
    load_public,
    open_envelope,
)

PREDICATE_TYPE = "https://pathtrail.dev/attestations/model-card-release/v1"
SIG_SUFFIX = ".sig.json"
TRUSTED_DIR = "keys/trusted"
MAX_SIG_BYTES = 4 * 1024 * 1024
MAX_LISTED = 10


def card_files(root: Path) -> list[Path]:
    return sorted(p for p in (root / "model_cards").glob("*.json") if not p.name.endswith(SIG_SUFFIX))


def select_card(root: Path, given: str | None) -> Path:
    """The card a command works on: `--card` (relative to the repository root) or the only one."""
    if given:
        path = Path(given) if Path(given).is_absolute() else root / given
        if not path.is_file():
            raise PathTrailError(f"--card {given}: no such file (cards are model_cards/NAME.json)")
        return path
    cards = card_files(root)
    if not cards:
        raise PathTrailError(f"no model card in {root / 'model_cards'}; run `make repro` to make "
                             "one, or pass --card model_cards/NAME.json")
    if len(cards) > 1:
        names = ", ".join(c.relative_to(root).as_posix() for c in cards)
        raise PathTrailError(f"several model cards ({names}); pick one with --card")
    return cards[0]


def signature_path(card: Path) -> Path:
    return card.with_name(card.stem + SIG_SUFFIX)


def subject_names(root: Path, card_rel: str, card: dict[str, Any]) -> list[str]:
    """Every path the card describes (see the module docstring), sorted and de-duplicated."""
    names = {card_rel, str(Path(card_rel).with_suffix(".md").as_posix()), "dvc.lock"}
    folder = Path(card_rel).parent
    names |= {(folder / str(rel)).as_posix() for rel in (card.get("figures") or {})}
    names |= {str(rel) for rel in (get(card, "provenance.inputs") or {})}
    names |= set(manifests(card))
    lock = root / "dvc.lock"
    if lock.is_file():
        stages = load_lock(lock)[0]["stages"]
        names |= {o["path"] for body in stages.values() for o in body["outs"]}
    return sorted(names)


def load_lock(path: Path) -> tuple[dict[str, Any], str | None]:
    """dvc.lock as {"stages": {name: {"deps": [..], "outs": [..], "params": {..}}}}, keeping only
    well-formed parts, and a problem naming what was malformed (None when all was well)."""
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeError, yaml.YAMLError, RecursionError) as exc:
        return {"stages": {}}, f"{path.name}: not readable as YAML ({type(exc).__name__})"
    stages = raw.get("stages") if isinstance(raw, dict) else None
    if not isinstance(stages, dict):
        return {"stages": {}}, f"{path.name}: no `stages` mapping; regenerate it with `dvc repro`"
    clean, bad = {}, []
    for name, body in stages.items():
        if not isinstance(body, dict):
            bad.append(str(name))
            continue
        items = {k: [i for i in body.get(k) or [] if isinstance(i, dict) and isinstance(i.get("path"), str)]
                 if isinstance(body.get(k), list) else [] for k in ("deps", "outs")}
        params = body.get("params") if isinstance(body.get("params"), dict) else {}
        if any(len(items[k]) != len(body.get(k) or []) for k in items if isinstance(body.get(k), list)):
            bad.append(str(name))
        clean[str(name)] = {**items, "params": params}
    return {"stages": clean}, (f"{path.name}: malformed entries in stage(s) {', '.join(sorted(bad))}"
                               if bad else None)


def manifests(card: dict[str, Any]) -> dict[str, str]:
    """The cohort manifests the card records a sha256 for: path -> sha256."""
    found = get(card, "provenance.manifests") or {}
    return {str(m["path"]): str(m["sha256"]) for m in (found.values() if isinstance(found, dict) else [])
            if isinstance(m, dict) and m.get("path") and m.get("sha256")}


def trusted_keys(root: Path, given: list[str] | None = None) -> tuple[list[PublicKey], list[str]]:
    """(keys, problems). With `given` (`--trusted-key` files) exactly those keys are trusted and the
    repository's own list is ignored: a reviewer who brings keys obtained another way is not
    overruled by a key someone committed. Without it, `keys/trusted/*` in the repository."""
    keys, problems = [], []
    if given:
        paths = [Path(x) for x in given]
    else:
        folder, refused = repo_path(root, TRUSTED_DIR, "trusted keys")
        if refused:
            return [], [refused]
        paths = []
        for p in sorted(folder.iterdir()) if folder is not None and folder.is_dir() else []:
            if p.name.startswith(".") or p.name.lower() in {"readme", "readme.md"}:
                continue
            target, why = repo_path(root, p.relative_to(root.resolve()).as_posix(), "trusted key")
            if why or target is None or not target.is_file():
                problems.append(why or f"{TRUSTED_DIR}/{p.name}: not a key file")
                continue
            paths.append(target)
    for p in paths:
        try:
            keys.append(load_public(p))
        except SigningKeyError as exc:
            problems.append(str(exc))
    return keys, problems


def valid_entries(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in entries if "_unparsable" not in e]


def statement(root: Path, card_path: Path, entries: list[dict[str, Any]], keyid: str,
              signer_name: str) -> dict[str, Any]:
    """The in-toto Statement `pathtrail sign` signs for this card, the trail as it is now."""
    card_rel = card_path.relative_to(root).as_posix()
    card = json.loads(card_path.read_text(encoding="utf-8"))
    subjects = []
    for name in subject_names(root, card_rel, card):
        path, problem = repo_path(root, name, "subject")
        if problem or path is None or not path.exists():
            raise PathTrailError(problem or f"{name}: missing; run `dvc repro` (or `dvc pull`) before signing")
        sha = sha256_path(path)
        if manifests(card).get(name, sha) != sha:
            raise PathTrailError(f"{name}: sha256 {sha[:12]}… but the card recorded {manifests(card)[name][:12]}… "
                                  "for this manifest; rerun `dvc repro` before signing")
        subjects.append({"name": name, "digest": {"sha256": sha}})
    chain = valid_entries(entries)
    head = chain[-1] if chain else {}
    return {
        "_type": "https://in-toto.io/Statement/v1",
        "subject": subjects,
        "predicateType": PREDICATE_TYPE,
        "predicate": {
            "card": card_rel,
            "card_name": card.get("name"),
            "git_commit": get(card, "provenance.git_commit"),
            "params_sha256": card.get("params_sha256"),
            "release_status": card.get("release_status"),
            "audit": {"trail": get(card, "audit.trail") or "audit/trail.jsonl",
                      "head": head.get("entry_hash"), "head_seq": head.get("seq"), "entries": len(chain)},
            "signer": {"name": signer_name, "keyid": keyid},
            "signed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "pathtrail_version": __version__,
        },
    }


def load_envelope(path: Path, rel: str) -> tuple[Any, str | None]:
    if path.stat().st_size > MAX_SIG_BYTES:
        return None, f"{rel}: {path.stat().st_size} bytes, too large for a signature file"
    try:
        return loads_unique(path.read_text(encoding="utf-8")), None
    except (UnicodeError, ValueError, RecursionError) as exc:
        return None, f"{rel}: not readable as JSON ({type(exc).__name__}: {str(exc)[:120]})"



def check_signature(root: Path, card_path: Path, card: Any, entries: list[dict[str, Any]],
                    trusted: list[PublicKey], release: bool) -> tuple[list[str], list[str]]:
    """(problems, notes) for one card's signature; `release` makes UNSIGNED and untrusted fail."""
    card_rel = card_path.relative_to(root).as_posix()
    sig_path = signature_path(card_path)
    sig_rel = sig_path.relative_to(root).as_posix()
    resolved, refused = repo_path(root, sig_rel, "signature")
    if refused:
        return [refused], []
    if not sig_path.exists():
        line = f"{card_rel}: UNSIGNED (no {sig_rel})"
        return ([f"{line}; `verify --release` needs a signature by a trusted key: run `pathtrail sign`"]
                if release else []), ([] if release else [line])
    envelope, problem = load_envelope(resolved, sig_rel) if resolved and resolved.is_file() else (
        None, f"{sig_rel}: not a regular file")
    opened = open_envelope(envelope, trusted) if problem is None else Opened(None, [], None)
    problem = problem or (f"{sig_rel}: INVALID: {opened.problem}" if opened.problem else None)
    problems, notes = ([problem] if problem else []), []
    valid = [k for _, k, why in opened.signatures if k is not None and why is None]
    for keyid, key, why in opened.signatures:
        if why is None and key is not None:
            continue  # reported below, once the statement is compared with the files
        if key is None:  # a co-signer this reviewer does not know: fails only when no trusted one signed
            (problems if release and not valid else notes).append(f"{sig_rel}: UNTRUSTED: {why}")
        else:
            problems.append(f"{sig_rel}: INVALID: {why} (key {keyid[:16]}, {key.name!r})")
    if release and not valid and not problems:
        problems.append(f"{sig_rel}: no valid signature by a trusted key")
    if opened.statement is not None and (valid or release):
        found, later = statement_problems(root, card_rel, card, opened.statement, entries)
        problems += [f"{sig_rel}: INVALID: {p}" for p in found]
        notes += [f"{sig_rel}: VALID signature by {k.name!r} (key {k.keyid[:16]})" if not found else
                  f"{sig_rel}: the signature by {k.name!r} (key {k.keyid[:16]}) verifies, but the files no "
                  "longer match what it signed" for k in valid]
        (problems if release else notes).extend(f"{sig_rel}: {n}" for n in later)
    status = card.get("release_status") if isinstance(card, dict) else None
    reasons = card.get("release_reasons") if isinstance(card, dict) else None
    why = "; ".join(str(r)[:200] for r in reasons[:5]) if isinstance(reasons, list) and reasons else ""
    if release and status != RELEASE_CANDIDATE:
        problems.append(f"{card_rel}: release status is {str(status)[:40]!r}" + (f" ({why})" if why else "")
                        + f"; only a {RELEASE_CANDIDATE} can be released, whatever its signature. Fix that, "
                        "commit, rebuild the card (`dvc repro`) and sign it again")
    elif status != RELEASE_CANDIDATE:
        if valid:
            notes.append(f"{card_rel}: signed, but its status is {str(status)[:40]!r}: not a release")
    elif valid and not problems:
        notes.append(f"{card_rel}: {RELEASED} ({MEANINGS[RELEASED]})")
    return problems, notes


def statement_problems(root: Path, card_rel: str, card: Any, st: dict[str, Any],
                       entries: list[dict[str, Any]]) -> tuple[list[str], list[str]]:
    """(what differs from the signed statement, entries recorded after the signed head)."""
    found: list[str] = []
    pred = st.get("predicate") if isinstance(st.get("predicate"), dict) else {}
    if st.get("predicateType") != PREDICATE_TYPE:
        found.append(f"predicateType is {str(st.get('predicateType'))[:80]!r}, not {PREDICATE_TYPE}")
    if pred.get("card") != card_rel:
        found.append(f"the signature is for card {str(pred.get('card'))[:80]!r}, not {card_rel}")
    if isinstance(card, dict):
        for field, value in (("git_commit", get(card, "provenance.git_commit")),
                             ("params_sha256", card.get("params_sha256")),
                             ("release_status", card.get("release_status"))):
            if pred.get(field) != value:
                found.append(f"predicate {field} {str(pred.get(field))[:80]!r} but the card has {str(value)[:80]!r}")
    subjects = st.get("subject") if isinstance(st.get("subject"), list) else []
    if not subjects:
        found.append("the statement has no subjects")
    for s in subjects:
        name = s.get("name") if isinstance(s, dict) else None
        signed = (s.get("digest") or {}).get("sha256") if isinstance(s, dict) and isinstance(s.get("digest"), dict) else None
        path, problem = repo_path(root, name, "subject")
        if problem or path is None:
            found.append(problem or f"subject {name!r}: unusable")
        elif not path.exists():
            found.append(f"subject {name}: missing (signed sha256 {str(signed)[:12]}…)")
        elif (now := sha256_path(path)) != signed:
            found.append(f"subject {name} differs: sha256 {now[:12]}… now, {str(signed)[:12]}… signed")
    chain_found, later = _audit(pred.get("audit") if isinstance(pred.get("audit"), dict) else {}, entries)
    return found + chain_found, later


def _audit(signed: dict[str, Any], entries: list[dict[str, Any]]) -> tuple[list[str], list[str]]:
    chain = valid_entries(entries)
    head, seq, count = signed.get("head"), signed.get("head_seq"), signed.get("entries")
    if not isinstance(seq, int) or not isinstance(count, int):
        return ["the predicate's audit head has no sequence number or entry count"], []
    at = [e for e in chain if e.get("seq") == seq]
    if not at:
        return [(f"the audit trail ends at seq {chain[-1].get('seq') if chain else 'none'} but the signature covers "
                f"seq {seq} ({count} entries): entries were deleted, or the trail as signed was never committed")], []
    if at[0].get("entry_hash") != head:
        return [(f"audit entry seq {seq} has hash {str(at[0].get('entry_hash'))[:12]}… but the signature recorded "
                f"{str(head)[:12]}…: the trail was regenerated or edited after signing")], []
    upto = chain[: chain.index(at[0]) + 1]
    if len(upto) != count:
        return [f"{len(upto)} audit entries up to the signed head, the signature recorded {count}"], []
    after = chain[len(upto):]
    if not after:
        return [], []
    shown = ", ".join(f"{e.get('stage')} {e.get('action')} {e.get('outcome')} at {e.get('time')}"
                      for e in after[:MAX_LISTED])
    more = f" and {len(after) - MAX_LISTED} more" if len(after) > MAX_LISTED else ""
    return [], [(f"{len(after)} entr{'y' if len(after) == 1 else 'ies'} after the signed head (seq {seq}): "
                f"{shown}{more}; the signature does not cover them")]
