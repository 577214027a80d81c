"""The resumable checkpoint's file format: a plain header, then a weights-only torch payload.

    PATHTRAIL-CHECKPOINT 1\\n
    {"fingerprint": "...", "world_size": 2, "payload_bytes": 123, "payload_sha256": "..."}\\n
    <torch.save zip of tensors and plain values>

The header is checked before anything is unpickled: a file without it (random bytes, a crafted
pickle, another program's file, an older format), one made by another run (fingerprint, number of
processes) or one whose payload is cut short or altered is *set aside* (renamed to
`<name>.rejected-<sha8>`, with a warning naming both) and training starts afresh; only a payload
that passes is loaded, and then with `torch.load(..., weights_only=True)`, so even a payload that
got through cannot run code. Tested by test_checkpoint_file.py.
"""

from __future__ import annotations

import io
import json
import os
import stat
from pathlib import Path
from typing import Any

import structlog
import torch

from pathtrail.core.files import write_bytes
from pathtrail.core.hashing import sha256_bytes, sha256_file

log = structlog.get_logger(__name__)

MAGIC = b"PATHTRAIL-CHECKPOINT 1\n"
HEADER_LIMIT = 64 * 1024  # bytes: the header is one short JSON line
HEADER_KEYS = {"fingerprint": str, "world_size": int, "payload_bytes": int, "payload_sha256": str}


class Rejected(Exception):
    """Why a checkpoint file cannot be resumed (the text goes into the warning)."""


def write_checkpoint_file(payload: dict[str, Any], path: Path, fingerprint: str, world_size: int) -> None:
    """Atomically write `payload` (tensors and plain values) under its header."""
    buf = io.BytesIO()
    torch.save(payload, buf)
    body = buf.getvalue()
    header = {"fingerprint": fingerprint, "world_size": world_size, "payload_bytes": len(body),
              "payload_sha256": sha256_bytes(body)}
    write_bytes(MAGIC + json.dumps(header, sort_keys=True).encode() + b"\n" + body, path)


def read_header(path: Path) -> tuple[dict[str, Any], bytes]:
    """The header and the raw payload bytes (not unpickled); raises Rejected with the reason."""
    st = os.stat(path)
    if not stat.S_ISREG(st.st_mode):
        raise Rejected("not a regular file")
    with open(path, "rb") as f:
        if f.read(len(MAGIC)) != MAGIC:
            raise Rejected("no PathTrail checkpoint header (random bytes, a pickle, another program's "
                           "file or an older format)")
        line = f.readline(HEADER_LIMIT)
        try:
            header = json.loads(line)
        except (ValueError, UnicodeDecodeError):
            raise Rejected("header is not one line of JSON") from None
        if not isinstance(header, dict) or any(type(header.get(k)) is not t for k, t in HEADER_KEYS.items()):
            raise Rejected(f"header lacks {', '.join(HEADER_KEYS)}")
        body = f.read(max(header["payload_bytes"], 0) + 1)
    if len(body) != header["payload_bytes"] or sha256_bytes(body) != header["payload_sha256"]:
        raise Rejected("payload is cut short or altered (its size or sha256 differs from the header)")
    return header, body


def load_checkpoint_file(path: Path, fingerprint: str, world_size: int) -> dict[str, Any]:
    """The payload of a checkpoint this run may resume from; raises Rejected otherwise."""
    header, body = read_header(path)
    if header["fingerprint"] != fingerprint:
        raise Rejected("made by another run (other params, data, stain reference, code, torch version "
                       "or device)")
    if header["world_size"] != world_size:
        raise Rejected(f"made with {header['world_size']} processes, this run has {world_size}")
    try:
        ck = torch.load(io.BytesIO(body), map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001  torch raises many kinds (UnpicklingError, RuntimeError, EOFError...)
        raise Rejected("payload is not tensors and plain values") from None
    if not (isinstance(ck, dict) and isinstance(ck.get("state"), dict) and "model" in ck):
        raise Rejected("payload is not a training checkpoint")
    return ck


def set_aside(path: Path, reason: str) -> Path | None:
    """Rename a rejected checkpoint out of the way (never deleted: it may be evidence); warn."""
    try:
        tag = sha256_file(path)[:8] if path.is_file() else "special"
        target = path.with_name(f"{path.name}.rejected-{tag}")
        os.replace(path, target)
    except OSError as exc:
        log.warning("train.checkpoint_ignored", checkpoint=str(path), reason=reason,
                    not_moved=f"{type(exc).__name__}: {exc}")
        return None
    log.warning("train.checkpoint_set_aside", checkpoint=str(path), moved_to=str(target), reason=reason)
    return target
