"""Ed25519 keys and DSSE envelopes holding in-toto Statements (v1), offline.

Formats (written to the published specs, primitives from `cryptography`):

* DSSE envelope (https://github.com/secure-systems-lab/dsse, protocol v1):
  `{"payload": b64(body), "payloadType": "application/vnd.in-toto+json",
  "signatures": [{"keyid": ..., "sig": b64(Ed25519(PAE(type, body)))}]}` where
  `PAE = "DSSEv1" SP len(type) SP type SP len(body) SP body` (lengths in ASCII decimal).
* in-toto Statement v1: `{"_type": "https://in-toto.io/Statement/v1", "subject": [{"name",
  "digest": {"sha256"}}], "predicateType": ..., "predicate": {...}}`.

A key id is the sha256 of the raw 32-byte public key (hex). A private key is a PKCS#8 PEM file
written with mode 0600; a public key file (`NAME.pub.json`) holds the PEM, the key id and the
holder's name, and is what a repository trusts under `keys/trusted/`.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from pathtrail.core.errors import PathTrailError
from pathtrail.core.files import write_text
from pathtrail.core.hashing import canonical_json, loads_unique, sha256_bytes

PAYLOAD_TYPE = "application/vnd.in-toto+json"
STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
MAX_KEY_BYTES = 64 * 1024


class SigningKeyError(PathTrailError):
    """A key file that cannot be used (missing, unreadable, not Ed25519)."""


@dataclass(frozen=True)
class PublicKey:
    keyid: str
    name: str
    key: Ed25519PublicKey
    source: str

    def verify(self, sig: bytes, message: bytes) -> bool:
        try:
            self.key.verify(sig, message)
        except InvalidSignature:
            return False
        return True


def keyid_of(key: Ed25519PublicKey) -> str:
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return sha256_bytes(raw)


def public_pem(key: Ed25519PublicKey) -> str:
    return key.public_bytes(serialization.Encoding.PEM,
                            serialization.PublicFormat.SubjectPublicKeyInfo).decode("ascii")


def safe_name(name: str) -> str:
    """A file-name stem from a person's name: letters, digits, dot, dash, underscore."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.")[:64] or "key"


def keygen(out: Path, name: str) -> tuple[Path, Path, str]:
    """Write `<stem>.key` (0600) and `<stem>.pub.json` into `out`; returns (private, public, keyid).
    Never overwrites an existing key file."""
    private = Ed25519PrivateKey.generate()
    keyid = keyid_of(private.public_key())
    stem = f"{safe_name(name)}-{keyid[:12]}"
    priv_path, pub_path = out / f"{stem}.key", out / f"{stem}.pub.json"
    for p in (priv_path, pub_path):
        if p.exists():
            raise SigningKeyError(f"{p}: already exists; not overwritten")
    out.mkdir(parents=True, exist_ok=True, mode=0o700)
    pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    fd = os.open(priv_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, pem)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.chmod(priv_path, 0o600)
    write_text(canonical_json({"algorithm": "ed25519", "keyid": keyid, "name": name,
                               "public_key_pem": public_pem(private.public_key())}), pub_path)
    os.chmod(pub_path, 0o644)  # public: readable by anyone it is copied to
    return priv_path, pub_path, keyid


def _read_small(path: Path, what: str) -> bytes:
    if not path.is_file():
        raise SigningKeyError(f"{what} {path}: no such file")
    if path.stat().st_size > MAX_KEY_BYTES:
        raise SigningKeyError(f"{what} {path}: {path.stat().st_size} bytes, too large for a key file")
    return path.read_bytes()


def load_private(path: Path) -> Ed25519PrivateKey:
    data = _read_small(path, "private key")
    if data.lstrip().startswith(b"{") or b"PUBLIC KEY" in data:
        raise SigningKeyError(f"private key {path}: this is a public key; pass the matching .key file "
                              "written by `pathtrail keygen`")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise SigningKeyError(f"private key {path}: not an unencrypted PEM private key ({exc})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise SigningKeyError(f"private key {path}: a {type(key).__name__}, not an Ed25519 key")
    return key


def load_public(path: Path) -> PublicKey:
    """A `*.pub.json` written by keygen, or a bare PEM public key (named after its file)."""
    data = _read_small(path, "public key")
    if b"PRIVATE KEY" in data:
        raise SigningKeyError(f"public key {path}: this is a PRIVATE key; pass (or commit) its .pub.json "
                              "instead, and never share or commit the private key")
    name, pem = path.name, data
    if data.lstrip().startswith(b"{"):
        try:
            doc = json.loads(data.decode("utf-8"))
            name, pem = str(doc["name"]), str(doc["public_key_pem"]).encode("ascii")
        except (ValueError, KeyError, TypeError, UnicodeError) as exc:
            raise SigningKeyError(f"public key {path}: not a PathTrail public key file ({exc})") from None
    try:
        key = serialization.load_pem_public_key(pem)
    except (ValueError, TypeError) as exc:
        raise SigningKeyError(f"public key {path}: not a PEM public key ({exc})") from None
    if not isinstance(key, Ed25519PublicKey):
        raise SigningKeyError(f"public key {path}: a {type(key).__name__}, not an Ed25519 key")
    return PublicKey(keyid_of(key), name, key, str(path))


def pae(payload_type: str, body: bytes) -> bytes:
    """DSSE v1 pre-authentication encoding."""
    t = payload_type.encode("utf-8")
    return b"DSSEv1 %d %s %d %s" % (len(t), t, len(body), body)


def signature(body: bytes, key: Ed25519PrivateKey) -> dict[str, str]:
    """One DSSE signature entry over the payload `body`."""
    sig = key.sign(pae(PAYLOAD_TYPE, body))
    return {"keyid": keyid_of(key.public_key()), "sig": base64.b64encode(sig).decode("ascii")}


def sign_statement(statement: dict[str, Any], key: Ed25519PrivateKey) -> dict[str, Any]:
    body = canonical_json(statement, compact=True).encode("utf-8")
    return {"payload": base64.b64encode(body).decode("ascii"), "payloadType": PAYLOAD_TYPE,
            "signatures": [signature(body, key)]}


@dataclass
class Opened:
    """An envelope taken apart: the statement (None when unreadable), and per signature
    (keyid, the trusted key that verified it or None, a problem or None)."""
    statement: dict[str, Any] | None
    signatures: list[tuple[str, PublicKey | None, str | None]]
    problem: str | None = None


def open_envelope(envelope: Any, trusted: list[PublicKey]) -> Opened:
    """Check the envelope's form and every signature against the trusted keys; never raises."""
    if not isinstance(envelope, dict):
        return Opened(None, [], "not a DSSE envelope (a JSON object with payload, payloadType, signatures)")
    if envelope.get("payloadType") != PAYLOAD_TYPE:
        return Opened(None, [], f"payloadType is {str(envelope.get('payloadType'))[:80]!r}, not {PAYLOAD_TYPE}")
    try:
        body = base64.b64decode(str(envelope.get("payload")), validate=True)
        statement = loads_unique(body.decode("utf-8"))
    except (binascii.Error, ValueError, UnicodeError, RecursionError):
        return Opened(None, [], "payload is not base64-encoded JSON")
    if not isinstance(statement, dict) or statement.get("_type") != STATEMENT_TYPE:
        return Opened(None, [], f"payload is not an in-toto Statement v1 ({STATEMENT_TYPE})")
    sigs = envelope.get("signatures")
    if not isinstance(sigs, list) or not sigs:
        return Opened(statement, [], "the envelope holds no signature")
    message, by_id = pae(PAYLOAD_TYPE, body), {k.keyid: k for k in trusted}
    out: list[tuple[str, PublicKey | None, str | None]] = []
    for s in sigs:
        keyid = str(s.get("keyid", "")) if isinstance(s, dict) else ""
        try:
            raw = base64.b64decode(str(s.get("sig")) if isinstance(s, dict) else "", validate=True)
        except (binascii.Error, ValueError):
            raw = b""
        key = by_id.get(keyid)
        if key is None:
            pred = statement.get("predicate") if isinstance(statement.get("predicate"), dict) else {}
            signer = pred.get("signer") if isinstance(pred.get("signer"), dict) else {}
            claimed = (f" (it claims to be {str(signer.get('name'))[:60]!r})"
                       if signer.get("keyid") == keyid else "")
            why = (f"key {keyid[:16] or '<none>'}{claimed} is not a trusted key: commit its .pub.json under "
                   "keys/trusted/, or pass it with --trusted-key, if you trust it")
            out.append((keyid, None, why))
        elif not key.verify(raw, message):
            out.append((keyid, key, ("the signature does not verify (the signature file was edited, "
                                     "or signed by another key)")))
        else:
            out.append((keyid, key, None))
    return Opened(statement, out)
