"""Signed releases: keygen -> sign -> `verify --release`, and every way a forger or an accident
could try to keep a PASS (issue: signed, anchored provenance)."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import stat
import subprocess
from pathlib import Path

import pytest
import torch

from fake_pipeline import CARD, TRAIL, dvc, fake_tree, run_card_stage
from pathtrail.card.render import render_markdown
from pathtrail.cli.main import main
from pathtrail.core.files import write_json, write_text
from pathtrail.core.hashing import sha256_bytes, sha256_path
from pathtrail.provenance import audit
from pathtrail.provenance.signing import load_private, load_public, sign_statement
from pathtrail.review.verify import verify
from pathtrail.train.model_file import write_model

CARD_JSON = f"model_cards/{CARD}.json"
SIG = f"model_cards/{CARD}.sig.json"


@pytest.fixture
def tree(tmp_path, tmp_path_factory) -> Path:
    return fake_tree(tmp_path / "repo", tmp_path_factory)


def keypair(folder: Path, name: str) -> tuple[Path, Path]:
    assert main(["keygen", "--out", str(folder), "--name", name]) == 0
    return next(folder.glob("*.key")), next(folder.glob("*.pub.json"))


@pytest.fixture
def keys(tmp_path):
    return keypair(tmp_path / "qa-keys", "Q. A. Reviewer")


@pytest.fixture
def signed(tree, keys, capsys):
    assert main(["sign", "--key", str(keys[0]), "--root", str(tree)]) == 0
    capsys.readouterr()
    return tree


def release(root: Path, *keys: Path) -> list[str]:
    return verify(root, checks=["signature"], release=True, trusted_keys=[str(k) for k in keys]).problems


def test_keygen_writes_a_private_key_only_its_owner_can_read(keys):
    private, public = keys
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    doc = json.loads(public.read_text())
    assert doc["name"] == "Q. A. Reviewer" and doc["algorithm"] == "ed25519"
    assert load_public(public).keyid == doc["keyid"]
    load_private(private)


def test_keygen_refuses_a_folder_inside_a_repository(tree, capsys):
    assert main(["keygen", "--out", str(tree / "keys"), "--name", "x"]) == 1
    assert "inside the git repository" in capsys.readouterr().err
    assert not (tree / "keys").exists()


def test_sign_then_verify_release_passes(signed, keys, capsys):
    envelope = json.loads((signed / SIG).read_text())
    st = json.loads(base64.b64decode(envelope["payload"]))
    names = {s["name"] for s in st["subject"]}
    assert {"models/model.pt", CARD_JSON, f"model_cards/{CARD}.md", "dvc.lock", "metrics/eval.json",
            "models/stain_reference.json"} <= names
    pred = st["predicate"]
    entries = audit.read_entries(signed / TRAIL)
    assert pred["audit"] == {"trail": TRAIL, "head": entries[-1]["entry_hash"],
                             "head_seq": entries[-1]["seq"], "entries": len(entries)}
    assert pred["signer"]["name"] == "Q. A. Reviewer" and pred["release_status"]
    assert release(signed, keys[1]) == []
    assert main(["verify", "--root", str(signed), "--release", "--trusted-key", str(keys[1])]) == 0
    out = capsys.readouterr().out
    assert "VALID signature by 'Q. A. Reviewer'" in out and "RESULT: PASS" in out


def test_a_key_committed_under_keys_trusted_is_trusted(signed, keys):
    (signed / "keys/trusted").mkdir(parents=True)
    (signed / "keys/trusted" / keys[1].name).write_bytes(keys[1].read_bytes())
    assert release(signed) == []


def test_an_unsigned_card_passes_verify_with_a_note_and_fails_release(tree, capsys):
    report = verify(tree)
    assert report.ok
    assert any("UNSIGNED" in n for c in report.checks for n in c.notes)
    found = release(tree)
    assert found and "UNSIGNED" in found[0] and "pathtrail sign" in found[0]
    assert main(["verify", "--root", str(tree), "--release"]) == 1


def rechain(trail: Path, replace: dict[str, str]) -> dict[str, str]:
    """Rewrite the trail with `replace` applied to every value and every hash recomputed with the
    project's own digest function, as a forger with write access would; returns old -> new hashes."""
    text = trail.read_text()
    for old, new in replace.items():
        text = text.replace(old, new)
    prev, mapping, lines = audit.GENESIS, {}, []
    for line in text.splitlines():
        e = json.loads(line)
        e["prev_hash"] = prev
        old = e["entry_hash"]
        e["entry_hash"] = audit.entry_digest(e)
        mapping[old] = prev = e["entry_hash"]
        lines.append(json.dumps(e, sort_keys=True, ensure_ascii=False))
    trail.write_text("\n".join(lines) + "\n")
    return mapping


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def forge_the_model(root: Path) -> None:
    """Swap the weights and rewrite every hash that refers to them: dvc.lock, trail, card JSON and
    Markdown; afterwards the unsigned checks cannot tell."""
    model = root / "models/model.pt"
    old_sha, old_md5 = sha256_path(model), md5(model)
    blob = torch.load(model, weights_only=True)
    write_model({k: -v for k, v in blob["state_dict"].items()}, blob["metadata"], model)  # negated weights
    new_sha, new_md5 = sha256_path(model), md5(model)
    mapping = rechain(root / TRAIL, {old_sha: new_sha})
    card_path, md_path = root / CARD_JSON, root / f"model_cards/{CARD}.md"
    old_card = {p: sha256_path(p) for p in (card_path, md_path)}
    text = card_path.read_text().replace(old_sha, new_sha).replace(old_md5, new_md5)
    for old, new in mapping.items():
        text = text.replace(old, new)
    card = json.loads(text)
    card["markdown_sha256"] = sha256_bytes(render_markdown(card).encode())
    write_json(card, card_path)
    write_text(render_markdown(card), md_path)
    rechain(root / TRAIL, {old: sha256_path(p) for p, old in old_card.items()})  # the card stage's end entry
    dvc("commit", "-f", "-q", cwd=root)  # dvc.lock and the DVC cache agree with the forged files


def test_a_consistent_forgery_passes_the_unsigned_checks_but_fails_release(signed, keys):
    forge_the_model(signed)
    unsigned = verify(signed, checks=["audit", "artifacts", "card", "dvc"])
    assert unsigned.ok, unsigned.problems
    found = release(signed, keys[1])
    assert found
    assert any("subject models/model.pt differs" in p for p in found)
    assert any("regenerated or edited after signing" in p for p in found)
    assert any(SIG in p for p in found)
    notes = [n for c in verify(signed, checks=["signature"], release=True, trusted_keys=[str(keys[1])]).checks
             for n in c.notes]
    assert not any("VALID signature" in n for n in notes)
    assert any("no longer match what it signed" in n for n in notes)


def test_a_forger_who_re_signs_with_their_own_key_is_untrusted(signed, keys, tmp_path):
    forge_the_model(signed)
    forger, _ = keypair(tmp_path / "forger", "Mallory")
    assert main(["sign", "--key", str(forger), "--root", str(signed)]) == 0
    found = release(signed, keys[1])
    assert found and any("UNTRUSTED" in p and "not a trusted key" in p for p in found)
    assert not verify(signed, release=True, trusted_keys=[str(keys[1])]).ok


def test_a_stage_run_after_signing_is_listed_and_fails_release(signed, keys):
    with audit.stage("evaluate", inputs=[], trail=signed / TRAIL):
        pass
    with pytest.raises(RuntimeError), audit.stage("train", inputs=[], trail=signed / TRAIL):
        raise RuntimeError("out of memory")
    found = release(signed, keys[1])
    assert any("4 entries after the signed head" in p and "train end failed" in p for p in found)
    notes = [n for c in verify(signed, checks=["signature"], trusted_keys=[str(keys[1])]).checks
             for n in c.notes]
    assert any("4 entries after the signed head" in n for n in notes)


def test_deleting_the_last_entries_fails_release(signed, keys):
    trail = signed / TRAIL
    trail.write_text("".join(trail.read_text().splitlines(keepends=True)[:-2]))
    found = release(signed, keys[1])
    assert any("entries were deleted" in p for p in found)


def test_a_regenerated_chain_fails_release(signed, keys):
    rechain(signed / TRAIL, {'"actor": "': '"actor": "someone else, '})
    found = release(signed, keys[1])
    assert any("regenerated or edited after signing" in p for p in found)


@pytest.mark.parametrize("edit", ["subject", "signature", "payload_type"])
def test_editing_the_signature_file_fails_release(signed, keys, edit):
    path = signed / SIG
    env = json.loads(path.read_text())
    if edit == "subject":
        st = json.loads(base64.b64decode(env["payload"]))
        st["subject"][0]["digest"]["sha256"] = "0" * 64
        env["payload"] = base64.b64encode(json.dumps(st).encode()).decode()
    elif edit == "signature":
        sig = bytearray(base64.b64decode(env["signatures"][0]["sig"]))
        sig[0] ^= 1
        env["signatures"][0]["sig"] = base64.b64encode(bytes(sig)).decode()
    else:
        env["payloadType"] = "text/plain"
    write_json(env, path)
    found = release(signed, keys[1])
    assert found and all("INVALID" in p for p in found)


@pytest.mark.parametrize("content", ["[]", "42", "{", ('{"payloadType": "application/vnd.in-toto+json", '
                                     '"payload": "%%%", "signatures": []}'), "\x1b[31mred"])
def test_a_malformed_signature_file_is_named_never_a_traceback(signed, keys, content, capsys):
    (signed / SIG).write_text(content)
    assert main(["verify", "--root", str(signed), "--release", "--trusted-key", str(keys[1])]) == 1
    out, err = capsys.readouterr()
    assert SIG in out and "Traceback" not in out + err and "\x1b" not in out


def resign(root: Path, key: Path, edit) -> None:
    """A statement with hostile subjects, validly signed by the trusted key."""
    env = json.loads((root / SIG).read_text())
    st = json.loads(base64.b64decode(env["payload"]))
    edit(st)
    write_json(sign_statement(st, load_private(key)), root / SIG)


@pytest.mark.parametrize("name", ["/etc/passwd", "../outside.txt", "models/../../outside.txt", "fifo",
                                  "link-out", 42, "/dev/null"])
def test_subjects_outside_the_repository_or_special_files_are_never_read(signed, keys, tmp_path, name):
    (tmp_path / "outside.txt").write_text("secret")
    os.mkfifo(signed / "fifo")  # reading it would block forever
    (signed / "link-out").symlink_to(tmp_path / "outside.txt")
    resign(signed, keys[0], lambda st: st["subject"].append({"name": name, "digest": {"sha256": "0" * 64}}))
    found = release(signed, keys[1])
    assert any(("outside the repository" in p or "absolute path" in p or "not a regular file" in p
                or "not a file path" in p) for p in found), found


def test_an_untrusted_only_signature_is_a_note_without_release(signed, tmp_path):
    report = verify(signed, checks=["signature"])
    assert report.ok
    assert any("UNTRUSTED" in n for c in report.checks for n in c.notes)


def test_sign_refuses_a_card_that_does_not_verify(tree, keys, capsys):
    (tree / "metrics/eval.json").write_text("{}\n")
    assert main(["sign", "--key", str(keys[0]), "--root", str(tree)]) == 1
    out, err = capsys.readouterr()
    assert "only a card that verifies can be signed" in err and "RESULT: FAIL" in out
    assert not (tree / SIG).exists()


def test_a_bad_trusted_key_file_is_named(signed, keys):
    (signed / "keys/trusted").mkdir(parents=True)
    (signed / "keys/trusted/broken.pub.json").write_text("[]")
    found = release(signed)
    assert any("broken.pub.json" in p for p in found)


def test_the_signature_check_needs_only_the_files(signed, keys):
    """Offline and without git: a copy of the tree without .git still verifies its signature."""
    subprocess.run(["rm", "-rf", str(signed / ".git")], check=True)
    assert release(signed, keys[1]) == []


def test_a_private_key_dropped_into_keys_trusted_is_called_out(signed, keys):
    (signed / "keys/trusted").mkdir(parents=True)
    (signed / "keys/trusted/oops.pem").write_bytes(keys[0].read_bytes())
    os.mkfifo(signed / "keys/trusted/pipe.pub.json")
    found = release(signed)
    assert any("pipe.pub.json" in p and "not a regular file" in p for p in found)
    assert any("oops.pem" in p and "PRIVATE key" in p for p in found)


def test_a_signed_draft_is_not_a_release(tree, keys, capsys):
    card = json.loads((tree / CARD_JSON).read_text())
    assert card["release_status"] == "RELEASE CANDIDATE"
    assert main(["sign", "--key", str(keys[0]), "--root", str(tree)]) == 0
    notes = [n for c in verify(tree, checks=["signature"], trusted_keys=[str(keys[1])]).checks for n in c.notes]
    assert any("RELEASED" in n for n in notes)
    st_path = tree / SIG  # a DRAFT card, validly signed by the trusted key
    card["release_status"] = "DRAFT – NOT FOR RELEASE"
    write_json(card, tree / CARD_JSON)
    resign(tree, keys[0], lambda st: None)
    assert st_path.is_file()
    found = release(tree, keys[1])
    assert any("only a RELEASE CANDIDATE can be released" in p for p in found)
    notes = [n for c in verify(tree, checks=["signature"], trusted_keys=[str(keys[1])]).checks for n in c.notes]
    assert not any("RELEASED" in n for n in notes)


def test_sign_refuses_a_draft_unless_asked(tree, keys, capsys):
    (tree / "src").mkdir(exist_ok=True)
    (tree / "src/scratch.py").write_text("print('uncommitted')\n")  # untracked code: the card is a DRAFT
    run_card_stage(tree)
    dvc("commit", "-f", "-q", "model_card", cwd=tree)
    card = json.loads((tree / CARD_JSON).read_text())
    assert card["release_status"] != "RELEASE CANDIDATE"
    assert verify(tree, checks=["audit", "artifacts", "card", "dvc"]).ok
    capsys.readouterr()
    assert main(["sign", "--key", str(keys[0]), "--root", str(tree)]) == 1
    err = capsys.readouterr().err
    assert "scratch.py" in err and "--allow-draft" in err and not (tree / SIG).exists()
    assert main(["sign", "--key", str(keys[0]), "--root", str(tree), "--allow-draft"]) == 0
    assert any("scratch.py" in p for p in release(tree, keys[1]))


def test_co_signing_adds_a_signature_and_both_verify(signed, keys, tmp_path, capsys):
    second, second_pub = keypair(tmp_path / "second", "Second Reviewer")
    assert main(["sign", "--key", str(second), "--root", str(signed), "--add"]) == 0
    env = json.loads((signed / SIG).read_text())
    assert len(env["signatures"]) == 2
    assert release(signed, keys[1], second_pub) == []
    notes = [n for c in verify(signed, checks=["signature"], trusted_keys=[str(keys[1]), str(second_pub)]).checks
             for n in c.notes]
    assert sum("VALID signature" in n for n in notes) == 2
    split_end = next(e for e in audit.read_entries(signed / TRAIL) if e.get("stage") == "split"
                     and e.get("action") == "end")
    with contextlib.chdir(signed), audit.stage("split", inputs=[], trail=TRAIL) as rec:
        rec.outputs(*split_end["outputs"])  # a rerun that reproduces its outputs: the card stays valid
    capsys.readouterr()
    assert main(["sign", "--key", str(second), "--root", str(signed), "--add"]) == 1
    assert "no longer matches the files" in capsys.readouterr().err


def test_re_signing_says_it_replaces_and_an_untrusted_key_is_pointed_out(signed, keys, tmp_path, capsys):
    other, _ = keypair(tmp_path / "other", "Other")
    capsys.readouterr()
    assert main(["sign", "--key", str(other), "--root", str(signed)]) == 0
    out = capsys.readouterr().out
    assert "replacing the existing" in out and "is not in" in out and "UNTRUSTED" in out


def test_key_mix_ups_get_a_clear_message(tree, keys, capsys):
    assert stat.S_IMODE(keys[1].stat().st_mode) == 0o644
    assert main(["sign", "--key", str(keys[1]), "--root", str(tree)]) == 1
    assert "this is a public key; pass the matching .key file" in capsys.readouterr().err
