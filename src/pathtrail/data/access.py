"""Reading a user's file under a byte budget: `stat` first, regular files only, errors explained.

`read_regular(path, limit)` never opens what is not a regular file: a FIFO (opening one blocks
until a writer comes), a device (`/dev/zero` is endless, a tape rewinds on open) or a socket is
refused from its `stat`, and so is a file larger than `limit`, before a byte is read. The file is
then opened non-blocking and checked again with `fstat` (something swapped in after the `stat`
is refused too), and at most `limit + 1` bytes are read, so a file that grows is caught as well.
Failures come back as a `Refusal` whose reason and hint follow the errno (a name too long is not
a permissions problem).
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass

from pathtrail.core.files import file_kind

_READ_CHUNK = 1 << 20


@dataclass(frozen=True)
class Refusal:
    """Why a file was not read. kind: missing | not_a_file | unreadable | too_large."""

    kind: str
    reason: str
    hint: str


_ERRNO_TEXT = {  # errno -> (reason, hint)
    errno.ENAMETOOLONG: ("file name too long", ("shorten the file or folder names (most systems "
                         "allow 255 bytes per name and 4096 per path)")),
    errno.EACCES: ("permission denied", ("make the file, and every folder above it, readable by "
                   "this user (chmod / chown)")),
    errno.EPERM: ("operation not permitted", ("make the file readable by this user, or check "
                  "the security policy (SELinux, AppArmor) that forbids it")),
    errno.ELOOP: ("too many levels of symbolic links (a link loop)",
                  "fix the symbolic link: it points, directly or not, at itself"),
    errno.ENOTDIR: ("a part of the path is a file, not a folder", "check the folders in the path"),
    errno.EIO: ("input/output error", ("the disk or network share failed to read it: check the "
                "storage, then copy the file again")),
    errno.EMFILE: ("too many open files", ("raise the open-file limit (ulimit -n) or use fewer "
                   "--workers")),
    errno.ENFILE: ("too many open files on the system", ("close other programs or use fewer "
                   "--workers")),
    errno.ESTALE: ("stale network file handle", "remount the network share, then retry"),
    errno.ENXIO: ("no such device or address", "point the path at a regular file"),
    errno.ENODEV: ("no such device", "point the path at a regular file"),
    errno.EOVERFLOW: ("the file is too large for this system", "split or re-export the file"),
    errno.ENOENT: ("no such file or folder", "check the path: every folder in it must exist"),
    errno.EROFS: ("read-only file system", "use a path on writable storage"),
    errno.ENOSPC: ("no space left on the device", "free some space, or use another disk"),
}


_WRITE_TEXT = {  # errno -> (reason, hint) where the error came from writing
    errno.EISDIR: ("it is a folder", "name a file to write, not a folder"),
    errno.EACCES: ("permission denied", "make the folder writable by this user, or write elsewhere"),
    errno.ENOENT: ("no such folder", "check the path: the folders in it must be creatable"),
}


def explain_os_error(exc: OSError, writing: bool = False) -> tuple[str, str]:
    """(reason, hint) for an OSError, matched to its errno (`writing`: it came from a write)."""
    if writing and exc.errno in _WRITE_TEXT:
        return _WRITE_TEXT[exc.errno]
    if exc.errno in _ERRNO_TEXT:
        return _ERRNO_TEXT[exc.errno]
    name = errno.errorcode.get(exc.errno or 0, type(exc).__name__)
    return (f"{exc.strerror or type(exc).__name__} ({name})",
            "check that the path names a writable file on working storage" if writing else
            "check that the path names a readable file on working storage")


def _refuse_kind(mode: int) -> Refusal:
    kind = file_kind(mode)
    return Refusal("not_a_file", f"is {kind}, not a file", "point the path at a regular file "
                   + ("(an image file, not a folder)" if kind == "a folder" else
                      "(pipes, devices and sockets are never read)"))


def _too_large(size: int | str, limit: int) -> Refusal:
    return Refusal("too_large", f"is {size} bytes, over the limit of {limit} bytes",
                   "check that this is the right file; raise the limit if it is")


def read_regular(path: str | os.PathLike[str], limit: int) -> bytes | Refusal:
    """The bytes of the regular file `path` if it holds at most `limit` bytes, else a Refusal."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return Refusal("missing", "does not exist", "check the path")
    except (OSError, ValueError) as exc:  # ValueError: an embedded NUL
        if isinstance(exc, ValueError):
            return Refusal("unreadable", "the path contains a NUL character", "fix the path")
        return Refusal("unreadable", *explain_os_error(exc))
    if not stat.S_ISREG(st.st_mode):
        return _refuse_kind(st.st_mode)
    if st.st_size > limit:
        return _too_large(st.st_size, limit)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0)
    try:
        fd = os.open(path, flags | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        return Refusal("unreadable", *explain_os_error(exc))
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):  # replaced between the stat and the open
            return _refuse_kind(st.st_mode)
        chunks, total = [], 0
        while total <= limit:
            chunk = os.read(fd, min(_READ_CHUNK, limit + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
    except OSError as exc:
        return Refusal("unreadable", *explain_os_error(exc))
    finally:
        os.close(fd)
    if total > limit:  # it grew after the stat
        return _too_large(f"more than {limit}", limit)
    return b"".join(chunks)


def is_regular_within(path: str | os.PathLike[str], limit: int) -> bool:
    """True for a regular file of at most `limit` bytes (judged from `stat`; nothing is opened)."""
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return False
    return stat.S_ISREG(st.st_mode) and st.st_size <= limit
