"""A stage's outputs, staged: written aside, moved into place together on success only.

Each declared output `dir/name` (file or folder) is written at `dir/.name.staging/name`, a sibling
on the same file system (so the move is a rename). `Staging.commit` moves every staged output into
place with SIGTERM and SIGINT held back (one that arrives is delivered once the commit is complete);
an exception (a converted SIGTERM included) removes the staging folders and leaves the outputs as
they were. An output the run declared but did not write is removed at the commit: afterwards the
outputs are exactly what the run wrote.

A SIGKILL cannot be caught, so the next start of the stage cleans up (`recover`): staging folders of
a run that was killed while working are removed, the outputs untouched; when it was killed during
the commit (each staging folder holds a `COMMITTING` mark from before the first rename until the
last), the outputs of that half-finished commit are removed too, so no mix of two runs survives.
Temporary files of `write_bytes` / `atomic_dir` next to an output (`.name.pathtrail-XXXXXXXX.tmp`)
go the same way. Cleanup only ever removes what the pipeline made: a staging folder holds a MARKER
file (fixed name and content) written when it is made, and a folder without it (a user's own
`.name.staging/`) is never removed, nor its `COMMITTING` heeded: the stage refuses to start instead;
a user's `.name.backup.tmp` does not match the temporary files' pattern. Output paths are checked
before any work (`pathtrail.core.output_paths`).
So one run at a time may write a given output (as before: two runs writing it were never defined);
the staging folders are ignored by git (`.gitignore`) and lie outside every DVC output.
Tests: tests/unit/test_staging.py, tests/stages/test_no_partial_outputs.py.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Self

from pathtrail.core.errors import PathTrailError
from pathtrail.core.files import TMP_MARK, current_umask
from pathtrail.core.output_paths import check_outputs
from pathtrail.core.text import printable

SUFFIX = ".staging"
COMMITTING = "COMMITTING"
# written into every staging folder when it is made: only a folder holding it is ever cleaned up
MARKER = ".pathtrail-staging-folder"
MARKER_TEXT = b"pathtrail staging folder: removed by the next run of this stage\n"
# mkstemp / mkdtemp's random part: 8 of [a-z0-9_]
_TMP_NAME = re.compile(r"[a-z0-9_]{8}\.tmp")
_HELD = {signal.SIGTERM, signal.SIGINT}
# Fault injection for tests: "<point>:<file>" makes `pause(point)` create <file> and wait until it is
# removed (60 s at most), so that a test sends a real signal at a known moment of a real stage.
PAUSE_ENV = "PATHTRAIL_FAULT_PAUSE"
_paused: set[str] = set()


def pause(point: str) -> None:
    """Wait at `point` (the first time only) when PAUSE_ENV names it; otherwise return at once."""
    wanted, _, marker = os.environ.get(PAUSE_ENV, "").partition(":")
    if wanted != point or not marker or point in _paused:
        return
    _paused.add(point)
    Path(marker).touch()
    deadline = time.monotonic() + 60
    while Path(marker).exists() and time.monotonic() < deadline:
        time.sleep(0.02)


def staging_dir(output: str | Path) -> Path:
    """The staging folder of `output`: `.name.staging` next to it."""
    output = Path(output)
    return output.parent / f".{output.name}{SUFFIX}"


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


@contextlib.contextmanager
def signals_held() -> Iterator[None]:
    """Hold SIGTERM and SIGINT back (main thread only); one that came meanwhile is sent again on
    leaving, to the handler that was in place. (The handlers are swapped rather than the signals
    blocked: a blocked signal still reaches Python through any other thread, e.g. torch's.)"""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[int] = []
    old = {s: signal.signal(s, lambda signum, frame: pending.append(signum)) for s in _HELD}
    try:
        yield
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
        if pending:
            os.kill(os.getpid(), pending[0])


def temporary_files(path: str | Path) -> list[Path]:
    """What `write_bytes` / `atomic_dir` left next to `path` when killed mid-write:
    `.name.pathtrail-XXXXXXXX.tmp` (a user's `.name.backup.tmp` is not one)."""
    path = Path(path)
    prefix = f".{path.name}.{TMP_MARK}"
    if not path.parent.is_dir():
        return []
    return sorted(p for p in path.parent.iterdir()
                  if p.name.startswith(prefix) and _TMP_NAME.fullmatch(p.name[len(prefix):]))


def is_staging_dir(folder: str | Path) -> bool:
    """Whether `folder` is a staging folder this pipeline made (a real folder holding MARKER)."""
    folder, mark = Path(folder), Path(folder) / MARKER
    try:
        return (folder.is_dir() and not folder.is_symlink() and mark.is_file() and not mark.is_symlink()
                and mark.read_bytes() == MARKER_TEXT)
    except OSError:
        return False


def _foreign(output: Path) -> PathTrailError:
    where = printable(str(staging_dir(output)))
    return PathTrailError(f"'{where}' exists but was not made by this pipeline (it lacks the {MARKER} "
                          f"mark), so it is left alone: move or rename it, then run the stage again "
                          f"(the stage stages its output '{printable(str(output))}' there)")


def recover(outputs: Iterable[str | Path]) -> list[Path]:
    """Clean what a killed run of these outputs left: its staging folders, temporary files and,
    after an interrupted commit, the outputs themselves. Returns what was removed. A `.name.staging`
    that this pipeline did not make (no MARKER) is never touched: a PathTrailError says so."""
    outputs = [Path(p) for p in outputs]
    for p in outputs:
        if (staging_dir(p).exists() or staging_dir(p).is_symlink()) and not is_staging_dir(staging_dir(p)):
            raise _foreign(p)
    stale = [staging_dir(p) for p in outputs if staging_dir(p).exists()]
    removed: list[Path] = []
    if any((s / COMMITTING).exists() for s in stale):
        removed += [p for p in outputs if p.exists() or p.is_symlink()]
    for p in outputs:
        removed += temporary_files(p)
    removed += stale
    for path in removed:
        _remove(path)
    return removed


class Staging:
    """Stage the writes of `outputs`; `path(output)` is where to write it meanwhile.

    `with Staging(outputs) as out:` recovers (see `recover`), makes fresh staging folders, and on
    leaving commits (no exception) or discards (an exception)."""

    def __init__(self, outputs: Iterable[str | Path]) -> None:
        self.outputs = list(dict.fromkeys(Path(p) for p in outputs))
        check_outputs(self.outputs)  # never the root, the repository or above it, nor outside it
        self.recovered: list[Path] = []
        self._open = False

    def path(self, output: str | Path) -> Path:
        output = Path(output)
        if output not in self.outputs:
            raise ValueError(f"{output} is not a declared output of this stage ({', '.join(map(str, self.outputs))})")
        return staging_dir(output) / output.name

    __call__ = path

    def __enter__(self) -> Self:
        self._open = True
        try:
            self.recovered = recover(self.outputs)
            mode = 0o777 & ~current_umask()
            for p in self.outputs:
                p.parent.mkdir(parents=True, exist_ok=True)
                staging_dir(p).mkdir(mode=mode)
                os.chmod(staging_dir(p), mode)
                (staging_dir(p) / MARKER).write_bytes(MARKER_TEXT)
        except BaseException:  # a SIGTERM while setting up included
            self.discard()
            raise
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if kind is None:
            self.commit()
        else:
            self.discard()

    def commit(self) -> None:
        """Move every staged output into place (removing what was there), signals held."""
        if not self._open:
            return
        with signals_held():
            folders = [staging_dir(p) for p in self.outputs]
            for s in folders:
                (s / COMMITTING).touch()
            for p, s in zip(self.outputs, folders, strict=True):
                staged = s / p.name
                if p.exists() or p.is_symlink():
                    _remove(p)
                if staged.exists():
                    os.replace(staged, p)
                    pause("mid_commit")
            for s in folders:
                _remove(s)
            self._open = False

    def discard(self) -> None:
        """Remove the staging folders; the outputs stay as they were."""
        if not self._open:
            return
        with signals_held():
            for p in self.outputs:
                if is_staging_dir(staging_dir(p)):  # never a user's folder of that name
                    _remove(staging_dir(p))
            self._open = False
