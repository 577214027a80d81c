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

import errno
import hashlib
import io
import json
import os
import stat
from pathlib import Path
from typing import Any

import structlog
import torch

from pathtrail.core.files import write_bytes
from pathtrail.core.hashing import sha256_bytes

log = structlog.get_logger(__name__)

MAGIC = b"PATHTRAIL-CHECKPOINT 1\n"
HEADER_LIMIT = 64 * 1024  # bytes: the header is one short JSON line
HEADER_KEYS = {"fingerprint": str, "world_size": int, "payload_bytes": int, "payload_sha256": str}


class Rejected(Exception):
    """Why a checkpoint file cannot be resumed (the text goes into the warning)."""


def write_checkpoint_file(payload: dict[str, Any], path: Path, fingerprint: str, world_size: int) -> str:
    """Atomically write `payload` (tensors and plain values) under its header; returns the file's sha256."""
    buf = io.BytesIO()
    torch.save(payload, buf)
    body = buf.getvalue()
    header = {"fingerprint": fingerprint, "world_size": world_size, "payload_bytes": len(body),
              "payload_sha256": sha256_bytes(body)}
    data = MAGIC + json.dumps(header, sort_keys=True).encode() + b"\n" + body
    write_bytes(data, path)
    return sha256_bytes(data)


def kind_of(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "directory"), (stat.S_ISLNK, "symlink"), (stat.S_ISFIFO, "fifo"),
                       (stat.S_ISSOCK, "socket"), (stat.S_ISCHR, "device"), (stat.S_ISBLK, "device")):
        if test(mode):
            return name
    return "special"


def _open_regular(path: Path) -> int:
    """A read-only descriptor of `path` if it is a regular file; never follows a symlink and never
    blocks (a FIFO swapped in after a stat is opened non-blocking and then rejected by fstat)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise Rejected("a symbolic link (checkpoints are never read through links)") from None
        raise
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise Rejected(f"not a regular file (a {kind_of(mode)})")
    return fd


def read_header(path: Path) -> tuple[dict[str, Any], bytes, str]:
    """The header, the raw payload bytes (not unpickled) and the whole file's sha256; raises
    Rejected with the reason. The payload size in the header is checked against the file's size
    before anything is read, so a forged size cannot make it allocate more than the file holds."""
    with os.fdopen(_open_regular(path), "rb") as f:
        size = os.fstat(f.fileno()).st_size
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
        left = size - f.tell()
        if header["payload_bytes"] != left:
            raise Rejected(f"payload is cut short or altered (the header says {header['payload_bytes']} bytes, "
                           f"the file holds {left})")
        body = f.read(left + 1)
    if len(body) != header["payload_bytes"] or sha256_bytes(body) != header["payload_sha256"]:
        raise Rejected("payload is cut short or altered (its size or sha256 differs from the header)")
    return header, body, sha256_bytes(MAGIC + line + body)


def load_checkpoint_file(path: Path, fingerprint: str, world_size: int,
                         expected_sha256: str | None = None) -> tuple[dict[str, Any], str]:
    """The payload of a checkpoint this run may resume from and the file's sha256; raises Rejected
    otherwise. With `expected_sha256` (the caller's record of the last checkpoint it wrote; "" for
    none) a file of any other content is rejected before its payload is loaded."""
    header, body, file_sha = read_header(path)
    if expected_sha256 is not None and file_sha != expected_sha256:
        recorded = f"the last one recorded is {expected_sha256[:12]}…" if expected_sha256 else "none is recorded"
        raise Rejected(f"not a checkpoint this pipeline recorded (sha256 {file_sha[:12]}…; {recorded})")
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
    return ck, file_sha


def _tag(path: Path) -> str:
    """What names a rejected file: its sha256 prefix (regular file), that of its link text (symlink,
    never followed), else its kind. Nothing is read that is not a regular file."""
    mode = os.lstat(path).st_mode
    if stat.S_ISLNK(mode):
        return "symlink-" + sha256_bytes(os.fsencode(os.readlink(path)))[:8]
    if not stat.S_ISREG(mode):
        return kind_of(mode)
    digest = hashlib.sha256()
    with os.fdopen(_open_regular(path), "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()[:8]


def _move_no_replace(path: Path, target: Path) -> None:
    """Rename without ever replacing an existing file (FileExistsError instead)."""
    if not stat.S_ISDIR(os.lstat(path).st_mode):
        try:
            os.link(path, target, follow_symlinks=False)  # fails if target exists
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV):
                raise
        else:
            os.unlink(path)
            return
    if os.path.lexists(target):
        raise FileExistsError(errno.EEXIST, "exists", str(target))
    os.rename(path, target)


def set_aside(path: Path, reason: str) -> Path | None:
    """Rename a rejected checkpoint out of the way (never deleted: it may be evidence, and never
    over an earlier rejected file: `<name>.rejected-<tag>`, then `-2`, `-3`...); warn."""
    try:
        base = f"{path.name}.rejected-{_tag(path)}"
        for n in range(1, 1000):
            target = path.with_name(base if n == 1 else f"{base}-{n}")
            try:
                _move_no_replace(path, target)
                break
            except FileExistsError:
                continue
        else:
            raise FileExistsError(errno.EEXIST, "999 rejected files of that name already", str(path.parent))
    except (OSError, Rejected) as exc:
        log.warning("train.checkpoint_ignored", checkpoint=str(path), reason=reason,
                    not_moved=f"{type(exc).__name__}: {exc}")
        return None
    log.warning("train.checkpoint_set_aside", checkpoint=str(path), moved_to=str(target), reason=reason)
    return target
