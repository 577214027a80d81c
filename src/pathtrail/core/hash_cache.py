"""The stat-keyed sha256 cache behind `core.hashing.sha256_file`, shared by every process.

Two layers: a dict in the process, and a sqlite3 database (WAL mode, busy timeout) that every
stage, the audit trail and `pathtrail verify` of one repository share, so a file whose stat is
unchanged is read once, not once per process. Where the database lives (`database_for`):
`$PATHTRAIL_HASH_CACHE` when set (`off`: no database, the dict only), else
`<nearest ancestor of the file holding .dvc>/.dvc/tmp/pathtrail/sha256.sqlite` (DVC ignores
`.dvc/tmp`; a `.gitignore` holding `*` next to the database keeps git from ever seeing it, so it
never makes a checkout dirty: tests/unit/test_hash_cache.py::test_the_cache_never_makes_the_tree_dirty),
else the dict only.

The key is (real path, size, mtime_ns, ctime_ns, inode, device): an edit whose mtime is forged back
with `os.utime` still moves ctime, and a database copied with the repository (`cp -a`, tar) or a
clone sees other inodes and ctimes, so neither ever hits (test_hash_cache.py::test_a_forged_mtime_*
and ::test_a_copied_cache_never_hits). A digest is cached only once the file has *settled*, git's
racy rule: its mtime and ctime are more than RACY_S old, or older (strictly) than the filesystem
clock read just before the file was read (`clock.touch` next to the database, on the same device).
An edit in the same timestamp tick as the read could otherwise hide behind an unchanged stat.
(After a stage, DVC touches each single-file output it caches, e.g. `models/model.pt`: a new mtime
and ctime, so the first reader after the stage reads it again; a stat that moved is never trusted.)

The cache never fails a caller: an unreadable, corrupt, truncated, locked, read-only or full
database is warned about once (`hash_cache.unavailable`) and the process goes on reading files.
The database is local state, trusted like the working tree: `fresh_reads()` (`verify --rehash`, and
always `verify --release`) ignores it and every digest hashed before, and reads every byte again.

Counters (`stats()`): bytes_read and files_read (what was read to hash), memory_hits and db_hits
(files served without a read) and bytes_skipped (their sizes). With `$PATHTRAIL_HASH_STATS=<file>`
each process appends them to that file at exit as one JSON line (see `core.hashing`).
"""

from __future__ import annotations

import atexit
import hashlib
import json
import os
import sqlite3
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import structlog

ENV_CACHE = "PATHTRAIL_HASH_CACHE"
ENV_STATS = "PATHTRAIL_HASH_STATS"
CHUNK = 1 << 20
RACY_S = 2.0
BUSY_S = 5.0
FLUSH_ROWS = 512
DEFAULT_DB = Path(".dvc/tmp/pathtrail/sha256.sqlite")
COUNTERS = ("bytes_read", "files_read", "memory_hits", "db_hits", "bytes_skipped")
log = structlog.get_logger(__name__)

_lock = threading.RLock()
_memory: dict[tuple[Any, ...], str] = {}
_stats: dict[str, int] = dict.fromkeys(COUNTERS, 0)
_dbs: dict[str, _Database | None] = {}  # database path -> open database, None once it failed
_db_of_dir: dict[str, Path | None] = {}
_orphans: list[Any] = []  # connections inherited by a forked child: never used, never closed
_fresh = False


def stat_key(real: str, st: os.stat_result) -> tuple[Any, ...]:
    return (real, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev)


def sha256_file(path: str | Path) -> str:
    real = os.path.realpath(path)
    before = os.stat(real)
    key = stat_key(real, before)
    db = None if _fresh else database(real)
    with _lock:
        hit = _memory.get(key)
        if hit is None and db is not None:
            hit = db.lookup(key)
            _stats["db_hits"] += hit is not None
        else:
            _stats["memory_hits"] += hit is not None
        if hit is not None:
            _memory[key] = hit
            _stats["bytes_skipped"] += before.st_size
            return hit
    mark = None if _aged(before) else _clock(db or database(real), before)
    h, n = hashlib.sha256(), 0
    with open(real, "rb") as f:
        while block := f.read(CHUNK):
            h.update(block)
            n += len(block)
    value = h.hexdigest()
    with _lock:
        _stats["bytes_read"] += n
        _stats["files_read"] += 1
        if stat_key(real, os.stat(real)) == key and (_aged(before) or (mark is not None and _newest(before) < mark)):
            _memory[key] = value
            if (target := database(real)) is not None:
                target.store(key, value)
    return value


def _newest(st: os.stat_result) -> int:
    return max(st.st_mtime_ns, st.st_ctime_ns)


def _aged(st: os.stat_result) -> bool:
    return time.time_ns() - _newest(st) > RACY_S * 1e9


def _clock(db: _Database | None, st: os.stat_result) -> int | None:
    """The filesystem's time now (a file touched next to the database), when it is `st`'s device."""
    return db.clock(st.st_dev) if db is not None else None


def database(real_file: str) -> _Database | None:
    """The open database for a file (None: the dict only)."""
    where = database_for(real_file)
    if where is None:
        return None
    name = str(where)
    with _lock:
        if name not in _dbs:
            try:
                _dbs[name] = _Database(where, default=os.environ.get(ENV_CACHE) in (None, ""))
            except (sqlite3.Error, OSError) as exc:
                _disable(name, exc)
        return _dbs[name]


def database_for(real_file: str) -> Path | None:
    """Where the database of `real_file` lives (see the module docstring), or None."""
    setting = os.environ.get(ENV_CACHE, "")
    if setting.strip().lower() == "off":
        return None
    if setting:
        return Path(setting).absolute()
    folder = os.path.dirname(real_file)
    if folder not in _db_of_dir:
        found = next((Path(p) / DEFAULT_DB for p in [folder, *Path(folder).parents]
                      if os.path.isdir(os.path.join(p, ".dvc"))), None)
        _db_of_dir[folder] = found
    return _db_of_dir[folder]


def _disable(name: str, exc: BaseException) -> None:
    """Warn once and read files from now on (the cache must never fail a stage)."""
    _dbs[name] = None
    log.warning("hash_cache.unavailable", database=name, error=f"{type(exc).__name__}: {exc}"[:300],
                effect="files are read and hashed again; nothing else changes")


class _Database:
    def __init__(self, path: Path, *, default: bool) -> None:
        self.path, self.pending = path, []
        self.owner = os.getpid()
        path.parent.mkdir(parents=True, exist_ok=True)
        # sqlite maps the -shm file: opened read-only it can die of SIGBUS instead of raising
        for p in (path.parent, *(q for q in (path, Path(f"{path}-wal"), Path(f"{path}-shm")) if q.exists())):
            if not os.access(p, os.W_OK):
                raise OSError(f"{p} is not writable")
        if default and not (ignore := path.parent / ".gitignore").exists():
            ignore.write_text("# the local sha256 cache (pathtrail.core.hash_cache): never tracked\n*\n")
        self.conn = sqlite3.connect(path, timeout=BUSY_S, isolation_level=None, check_same_thread=False)
        try:
            self.conn.execute(f"PRAGMA busy_timeout = {int(BUSY_S * 1000)}")
            mode = self.conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise sqlite3.OperationalError(f"journal mode is {mode}, not wal")
            self.conn.execute("PRAGMA synchronous = NORMAL")
            self.conn.execute("CREATE TABLE IF NOT EXISTS sha256 (path TEXT PRIMARY KEY, stat TEXT NOT NULL, "
                              "digest TEXT NOT NULL) WITHOUT ROWID")
        except BaseException:
            self.conn.close()
            raise
        self.marker = path.parent / "clock.touch"
        self.marker_dev: int | None = None
        atexit.register(self.flush)

    @staticmethod
    def _stat(key: tuple[Any, ...]) -> str:
        return ":".join(str(v) for v in key[1:])

    def lookup(self, key: tuple[Any, ...]) -> str | None:
        try:
            row = self.conn.execute("SELECT stat, digest FROM sha256 WHERE path = ?", (key[0],)).fetchone()
        except (sqlite3.Error, OSError) as exc:
            _disable(str(self.path), exc)
            return None
        if row is None or row[0] != self._stat(key) or not _is_digest(row[1]):
            return None
        return row[1]

    def store(self, key: tuple[Any, ...], value: str) -> None:
        self.pending.append((key[0], self._stat(key), value))
        if len(self.pending) >= FLUSH_ROWS:
            self.flush()

    def flush(self) -> None:
        with _lock:
            rows, self.pending = self.pending, []
            if not rows or os.getpid() != self.owner or _dbs.get(str(self.path)) is not self:
                return
            try:
                with self.conn:
                    self.conn.execute("BEGIN IMMEDIATE")
                    self.conn.executemany("INSERT OR REPLACE INTO sha256 (path, stat, digest) VALUES (?, ?, ?)", rows)
            except (sqlite3.Error, OSError) as exc:
                _disable(str(self.path), exc)

    def clock(self, device: int) -> int | None:
        """The filesystem clock now, read by touching a file next to the database (None: other device)."""
        try:
            if self.marker_dev is None:
                self.marker.touch()
                self.marker_dev = os.stat(self.marker).st_dev
            if self.marker_dev != device:
                return None
            os.utime(self.marker)
            return os.stat(self.marker).st_mtime_ns
        except OSError:
            return None


def _is_digest(value: Any) -> bool:
    return isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value)


@contextmanager
def fresh_reads() -> Iterator[None]:
    """Inside: every file is read again once (no database, no digest hashed before; digests read
    inside are reused inside and stored as usual)."""
    global _fresh
    with _lock:
        was, _fresh = _fresh, True
        _memory.clear()
    try:
        yield
    finally:
        _fresh = was


def stats() -> dict[str, int]:
    """This process's counters (a copy)."""
    with _lock:
        return dict(_stats)


def flush() -> None:
    """Write the digests waiting for the database (done at exit, and every FLUSH_ROWS digests)."""
    for db in list(_dbs.values()):
        if db is not None:
            db.flush()


def reset() -> None:
    """Forget the dict, the open databases and the counters (a new process's state)."""
    flush()
    with _lock:
        _memory.clear()
        for db in _dbs.values():
            if db is not None and db.owner == os.getpid():
                db.conn.close()
        _dbs.clear()
        _db_of_dir.clear()
        _stats.update(dict.fromkeys(COUNTERS, 0))


def _after_fork() -> None:
    """A forked child (a DataLoader worker) must not use its parent's sqlite connections."""
    _orphans.extend(db for db in _dbs.values() if db is not None)
    _dbs.clear()
    _stats.update(dict.fromkeys(COUNTERS, 0))


def write_stats(target: str | Path | None = None) -> None:
    """Append this process's counters as one JSON line to `target` (default $PATHTRAIL_HASH_STATS)."""
    target = target or os.environ.get(ENV_STATS)
    if not target:
        return
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    line = {"pid": os.getpid(), "module": getattr(spec, "name", None),
            "argv": [str(a)[:200] for a in sys.argv[:4]],
            "cache": os.environ.get(ENV_CACHE) or "default", **stats()}
    data = (json.dumps(line, sort_keys=True) + "\n").encode("utf-8")
    try:  # one write on an O_APPEND descriptor: lines of concurrent processes never interleave
        fd = os.open(target, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
    except OSError as exc:
        log.warning("hash_cache.stats_unwritten", file=str(target), error=str(exc))


os.register_at_fork(after_in_child=_after_fork)
atexit.register(write_stats)  # registered before any database: runs after their flushes
