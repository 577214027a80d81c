"""Atomic, deterministic writes and the readers of what they wrote.

Every artifact goes through these helpers so that a crash never leaves a half-written file behind
and so that the same content always produces the same bytes (`pathtrail.core.hashing`'s canonical
JSON, fixed line endings). Files and folders get the permissions that `open()` and `mkdir()` would
give them (0o666 / 0o777 less the process umask), not tempfile's private 0o600 / 0o700.
"""

from __future__ import annotations

import contextlib
import csv
import json
import numbers
import os
import re
import shutil
import stat
import tempfile
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pandas as pd

from pathtrail.core.errors import PathTrailError
from pathtrail.core.hashing import canonical_json
from pathtrail.core.output_paths import check_outputs
from pathtrail.core.text import printable

_UMASK_LOCK = threading.Lock()


def current_umask() -> int:
    """The process umask, read afresh on every call (it may change while the process runs).

    Linux reports it in /proc/self/status without changing it; elsewhere it is read with the
    set-and-restore dance under a lock, setting 0o077 meanwhile so that a file another thread
    creates in that instant is more private, never less."""
    try:
        with open("/proc/self/status", "rb") as f:
            for line in f:
                if line.startswith(b"Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _UMASK_LOCK:
        mask = os.umask(0o077)
        os.umask(mask)
    return mask


# the temporary files and folders of `write_bytes` / `atomic_dir` are `.NAME.pathtrail-XXXXXXXX.tmp`:
# the only names a stage's cleanup removes (`pathtrail.core.staging.temporary_files`)
TMP_MARK = "pathtrail-"


def file_kind(mode: int) -> str:
    """What a non-regular file is, in words (from its `st_mode`)."""
    for test, text in ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a named pipe (FIFO)"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return text
    return "not a regular file"


def replaceable(path: str | Path) -> str | None:
    """Why an atomic write must not replace `path`, or None (nothing there, or a regular file).

    The rename would put a regular file in its place: never over a folder, FIFO, device or socket
    (`--report /dev/null` as root would replace /dev/null). A symbolic link is replaced by the new
    file (its target is never written through, so a link into the DVC cache stays intact) only when
    it leads to a regular file or nowhere; a link to anything else (/proc/self/fd/1, a folder) is
    refused."""
    path = Path(path)
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return None
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISLNK(mode):
        try:
            target = path.stat().st_mode
        except (FileNotFoundError, NotADirectoryError):
            return None  # a dangling link: only the link is replaced
        except OSError as exc:
            return f"is a symbolic link that cannot be followed ({exc.strerror})"
        if stat.S_ISREG(target):
            return None
        return f"is a symbolic link to {file_kind(target)}, which a write would replace"
    return f"is {file_kind(mode)}, which a write would replace"


def write_bytes(data: bytes, path: str | Path) -> Path:
    """Write via a temporary file in the same folder, fsync, then rename over the target.
    The file ends up with mode 0o666 & ~umask, as `open(path, "wb")` would create it.
    A target that is not a regular file is refused (see `replaceable`) with a PathTrailError."""
    path = Path(path)
    problem = replaceable(path)
    if problem:
        raise PathTrailError(f"'{printable(str(path))}' {problem}; nothing was written to it. "
                             "Name a regular file (or a new one) to write.")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{TMP_MARK}", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o666 & ~current_umask())
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def write_text(text: str, path: str | Path) -> Path:
    return write_bytes(text.encode("utf-8"), path)


def write_json(obj: Any, path: str | Path) -> Path:
    return write_text(canonical_json(obj), path)


def read_json(path: str | Path) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


# A cell starting with one of these is a formula to Excel, LibreOffice and Google Sheets (OWASP
# "CSV injection": = + - @ tab CR; ASVS 1.2.10 adds NUL).
FORMULA_START = frozenset("=+-@\t\r\0")
# ... unless it is just a number: no operator or function, so a spreadsheet evaluates it to itself
_PLAIN_NUMBER = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")


def _text(value: Any) -> str | None:
    """What to_csv writes for a cell that is text (str() of any non-number), None otherwise."""
    if value is None or isinstance(value, numbers.Number):
        return None
    return value if isinstance(value, str) else str(value)


def neutralise_cell(value: Any) -> Any:
    """`value` as a spreadsheet-safe CSV cell: text starting with a formula character gets a `'`
    in front (spreadsheets show it as text); numbers, None and every other value stay as they are."""
    text = _text(value)
    if text is not None and text[:1] in FORMULA_START and not _PLAIN_NUMBER.fullmatch(text):
        return "'" + text
    return value


def _inert(dtype: Any) -> bool:
    """Columns whose cells are never text: numbers, booleans, dates, durations."""
    api = pd.api.types
    return (api.is_numeric_dtype(dtype) or api.is_bool_dtype(dtype)
            or api.is_datetime64_any_dtype(dtype) or api.is_timedelta64_dtype(dtype))


def _has_cr(values: list[Any]) -> bool:
    return any("\r" in t for t in map(_text, values) if t is not None)


def neutralise_formulas(df: pd.DataFrame) -> tuple[pd.DataFrame, bool]:
    """(`df` with every text cell and column name passed through `neutralise_cell`, whether any
    text holds a carriage return). `df` itself is not changed, and is returned as is when nothing
    needed a quote."""
    out, has_cr = df, False
    for i, dtype in enumerate(df.dtypes):
        if _inert(dtype):
            continue
        values = df.iloc[:, i].astype(object).tolist()
        fixed = [neutralise_cell(v) for v in values]
        has_cr = has_cr or _has_cr(values)
        if any(a is not b for a, b in zip(values, fixed, strict=True)):
            out = df.copy() if out is df else out
            out.isetitem(i, pd.Series(fixed, index=df.index, dtype=object))
    multi = isinstance(df.columns, pd.MultiIndex)
    names = list(df.columns)
    fixed_names = [tuple(map(neutralise_cell, n)) if multi else neutralise_cell(n) for n in names]
    has_cr = has_cr or _has_cr([x for n in names for x in (n if multi else (n,))])
    if fixed_names != names:
        out = df.copy() if out is df else out
        out.columns = (pd.MultiIndex.from_tuples(fixed_names, names=df.columns.names) if multi
                       else pd.Index(fixed_names, dtype=object))
    return out, has_cr


def write_csv(df: pd.DataFrame, path: str | Path) -> Path:
    r"""Write `df` without its index, "\n" line endings, safe to open in a spreadsheet.

    Formula injection (OWASP "CSV injection") is neutralised the way spreadsheet-safe exporters do
    it: a text cell or column name whose first character is `=`, `+`, `-`, `@`, tab, carriage
    return or NUL gets a single quote `'` in front, so `=HYPERLINK(..)` is stored as
    `'=HYPERLINK(..)` and shown as text. Never changed: numeric, boolean, date and duration columns
    (-0.5 stays -0.5), numbers inside text columns, and text that is just a decimal number such as
    "-3" or "+1.5e-3" (inert: a spreadsheet evaluates it to the same number). Everything else
    round-trips through `read_table` unchanged, newlines, quotes and commas included: fields are
    quoted as the csv module does, and when any text holds a carriage return (which Python's csv
    leaves unquoted under a "\n" line terminator, letting it split a row) every field is quoted.
    """
    safe, has_cr = neutralise_formulas(df)
    quoting = csv.QUOTE_ALL if has_cr else csv.QUOTE_MINIMAL
    return write_text(safe.to_csv(index=False, lineterminator="\n", quoting=quoting), path)


def read_table(path: str | Path) -> pd.DataFrame:
    """Read a table this pipeline wrote (ids stay strings)."""
    return pd.read_csv(path, dtype={"patient_id": str, "slide_id": str, "site": str, "path": str})


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling folder; on success it replaces `path`, on error it is removed.
    The folder ends up with mode 0o777 & ~umask, as `mkdir` would create it. A `path` that is a
    symbolic link is replaced as a link (its target untouched); a file, FIFO or device is refused."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.{TMP_MARK}", suffix=".tmp", dir=path.parent))
    try:
        os.chmod(tmp, 0o777 & ~current_umask())
        yield tmp
        if path.is_symlink():  # the link is replaced; its target is left alone
            path.unlink()
        elif path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            raise PathTrailError(f"'{printable(str(path))}' {replaceable(path) or 'is a file'}; "
                                 "it was left as it is: name a folder (or a new one) to write")
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def remove_outputs(*paths: str | Path, inputs: Iterable[str | Path] = ()) -> None:
    """Remove outputs of a failed run so that nothing partial is left behind.

    An output that is a symbolic link is removed as a link (its target is left alone); a folder is
    removed with all it holds. Refused first, with a PathTrailError, when any path is unsafe to
    remove (`output_paths.check_outputs`: the root, the repository or above it, outside it, or
    holding one of `inputs`); a removal that fails raises a PathTrailError naming the path."""
    check_outputs(paths, inputs)
    for p in map(Path, paths):
        try:
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            elif p.exists() or p.is_symlink():
                p.unlink()
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise PathTrailError(f"could not remove the stale output '{printable(str(p))}' "
                                 f"({exc.strerror or exc}): remove it by hand, then run again") from None


def repo_path(root: str | Path, rel: Any, what: str) -> tuple[Path | None, str | None]:
    """`rel` (a path named by a card, trail or signature) resolved inside `root`, or a problem.

    Refused, with a sentence saying why: a non-string, an absolute path, a `..` escape or a
    symlink leading outside the repository, and anything that exists but is neither a regular
    file nor a folder (FIFOs, devices, sockets), so a reviewer's tool never blocks on or reads them.
    A path that does not exist is returned (callers report it as missing)."""
    if not isinstance(rel, str) or not rel or "\0" in rel:
        return None, f"{what}: {rel!r} is not a file path"
    if Path(rel).is_absolute():
        return None, f"{what}: {rel!r} is an absolute path; only paths inside the repository are read"
    base = Path(root).resolve()
    try:
        target = (base / rel).resolve()
    except (OSError, RuntimeError) as exc:  # a symlink loop
        return None, f"{what}: {rel!r} cannot be resolved ({exc})"
    if target != base and base not in target.parents:
        return None, f"{what}: {rel!r} leads outside the repository; it was not read"
    if target.exists() and not (target.is_file() or target.is_dir()):
        return None, f"{what}: {rel!r} is not a regular file or folder; it was not read"
    return target, None
