"""`pathtrail keygen` and `pathtrail sign`: a reviewer's key pair, and a signed release statement."""

from __future__ import annotations

import argparse
import base64
import json
import sys
from pathlib import Path

from pathtrail.core.errors import PathTrailError
from pathtrail.core.files import write_text
from pathtrail.core.hashing import canonical_json
from pathtrail.provenance import audit
from pathtrail.provenance.signing import keygen, keyid_of, load_private, load_public, sign_statement

DEFAULT_KEY_DIR = Path("~/.config/pathtrail/keys")


def add_parsers(sub: argparse._SubParsersAction) -> None:
    k = sub.add_parser("keygen", help="create an Ed25519 key pair for signing releases")
    k.add_argument("--out", default=str(DEFAULT_KEY_DIR),
                   help=f"folder for the key pair (default: {DEFAULT_KEY_DIR}); never a repository")
    k.add_argument("--name", default="", help='the key holder, e.g. "Q. A. Reviewer"')
    k.add_argument("--allow-inside-repo", action="store_true",
                   help="write the private key inside a git work tree anyway (not recommended)")
    s = sub.add_parser("sign", help="sign a model card that verifies: writes model_cards/NAME.sig.json")
    s.add_argument("--key", required=True, help="the private key file written by `pathtrail keygen`")
    s.add_argument("--card", default=None, help="the card JSON (default: the only model_cards/*.json)")
    s.add_argument("--root", default=".", help="repository root (default: the current folder)")
    s.add_argument("--name", default=None, help="signer name (default: the name in the key's .pub.json)")
    s.add_argument("--add", action="store_true",
                   help="co-sign: add this key's signature to the existing signature file")
    s.add_argument("--allow-draft", action="store_true",
                   help="sign a card that is not a RELEASE CANDIDATE (for the record; it cannot be released)")


def git_work_tree(path: Path) -> Path | None:
    for folder in [path, *path.parents]:
        if (folder / ".git").exists():
            return folder
    return None


def keygen_command(args: argparse.Namespace) -> int:
    out = Path(args.out).expanduser().resolve()
    repo = git_work_tree(out)
    if repo is not None and not args.allow_inside_repo:
        raise PathTrailError(f"--out {args.out}: inside the git repository {repo}; a private key must never be "
                             "committed. Choose a folder outside it (the default is "
                             f"{DEFAULT_KEY_DIR}), or pass --allow-inside-repo")
    private, public, keyid = keygen(out, args.name or "unnamed")
    print(f"private key: {private} (mode 0600; keep it secret, never commit it)")
    print(f"public key:  {public}")
    print(f"key id:      {keyid}")
    print(f"To trust this key in a repository: cp {public} keys/trusted/ && git add keys/trusted/")
    return 0


def _card(root: Path, card: str | None) -> Path:
    from pathtrail.review.release import select_card

    return select_card(root, card)


def sign_command(args: argparse.Namespace) -> int:
    from pathtrail.review.release import signature_path, statement, trusted_keys
    from pathtrail.review.verify import CHECKS, format_report, verify

    root = Path(args.root)
    key = load_private(Path(args.key).expanduser())
    card = _card(root, args.card).resolve()
    root = root.resolve()
    if root not in card.parents:
        raise PathTrailError(f"--card {args.card}: not inside the repository {root}")
    report = verify(root, checks=[c for c in CHECKS if c != "signature"])
    if not report.ok:
        sys.stdout.write(format_report(report))
        raise PathTrailError("verify fails: only a card that verifies can be signed. Fix the problems above "
                             "(usually `dvc repro`), then sign again")
    doc = json.loads(card.read_text(encoding="utf-8"))
    status = doc.get("release_status")
    if status != "RELEASE CANDIDATE" and not args.allow_draft:
        reasons = "; ".join(str(r) for r in doc.get("release_reasons") or []) or "no reason recorded"
        raise PathTrailError(f"{card.relative_to(root)}: status {status} ({reasons}); `verify --release` fails "
                             "on it whatever its signature. Fix that and rebuild the card (commit your changes, "
                             "then `dvc repro`, or `dvc repro -f -s model_card` when nothing else changed), or "
                             "pass --allow-draft to sign it for the record")
    keyid = keyid_of(key.public_key())
    name = args.name
    pub = Path(args.key).expanduser().with_suffix(".pub.json")
    if name is None and pub.is_file():
        public = load_public(pub)
        name = public.name if public.keyid == keyid else None
    out = signature_path(card)
    entries = audit.read_entries(root / audit.DEFAULT_TRAIL)
    if args.add:
        envelope = _co_sign(root, card, doc, out, entries, key)
    else:
        if out.exists():
            print(f"note: replacing the existing {out.relative_to(root)} (use --add to co-sign it instead)")
        envelope = sign_statement(statement(root, card, entries, keyid, name or "unnamed"), key)
    write_text(canonical_json(envelope), out)
    st = json.loads(base64.b64decode(envelope["payload"]))
    pred = st["predicate"]
    print(f"signed {card.relative_to(root)} -> {out.relative_to(root)}")
    print(f"  signer {json.dumps(name or 'unnamed')}, key {keyid[:16]}, {len(envelope['signatures'])} signature(s)")
    print(f"  {len(st['subject'])} subjects, audit head seq {pred['audit']['head_seq']} "
          f"({pred['audit']['entries']} entries), status {pred['release_status']}")
    if keyid not in {k.keyid for k in trusted_keys(root)[0]}:
        print(f"note: this key is not in {root.name}/keys/trusted/: `verify --release` reads the signature as "
              "UNTRUSTED unless its .pub.json is committed there or passed with --trusted-key")
    print("Commit it together with the card, dvc.lock and audit/trail.jsonl it signs:\n"
          f"  git add {out.relative_to(root).as_posix()} && git commit")
    return 0


def _co_sign(root: Path, card: Path, doc: dict, out: Path, entries: list, key) -> dict:
    """Add a signature over the existing envelope's payload, once it still matches the files."""
    from pathtrail.provenance.signing import open_envelope, signature
    from pathtrail.review.release import load_envelope, statement_problems

    rel = out.relative_to(root).as_posix()
    if not out.is_file():
        raise PathTrailError(f"--add: {rel} does not exist; sign without --add first")
    envelope, problem = load_envelope(out, rel)
    opened = open_envelope(envelope, []) if problem is None else None
    if opened is None or opened.statement is None:
        raise PathTrailError(f"--add: {problem or opened.problem}; sign without --add to replace it")
    found, later = statement_problems(root, card.relative_to(root).as_posix(), doc, opened.statement, entries)
    if found or later:
        raise PathTrailError("--add: the existing signature no longer matches the files (" + "; ".join(
            (found + later)[:3]) + "); sign without --add to replace it")
    keyid = keyid_of(key.public_key())
    envelope["signatures"] = [s for s in envelope.get("signatures") or []
                              if isinstance(s, dict) and s.get("keyid") != keyid]
    envelope["signatures"].append(signature(base64.b64decode(envelope["payload"]), key))
    return envelope
