"""The shared sha256 cache: a file is read once across processes, never served after an edit (even a
forged one), and a broken, locked or full database never fails a caller."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from pathtrail.core import hash_cache
from pathtrail.core.hashing import sha256_file, sha256_path

SRC = str(Path(__file__).resolve().parents[2] / "src")
HASH_ALL = ("import sys\nfrom pathtrail.core.hashing import sha256_path\n"
            "for p in sys.argv[1:]:\n    print('H', sha256_path(p))\n")


@pytest.fixture(autouse=True)
def _fresh_process_state():
    hash_cache.reset()
    yield
    hash_cache.reset()


def settled(folder: Path, n: int = 5, size: int = 4096) -> list[Path]:
    """n files whose mtime and ctime are past the racy window's tick."""
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for i in range(n):
        f = folder / f"f{i}.bin"
        f.write_bytes(os.urandom(size))
        files.append(f)
    time.sleep(0.05)
    return files


def child(*args: str, env: dict[str, str], code: str = HASH_ALL, stats: Path | None = None,
          ) -> tuple[list[str], dict]:
    """Run `code` in a new Python process; (its stdout lines, its stats line)."""
    full = {**os.environ, "PYTHONPATH": SRC, **env}
    if stats is not None:
        full["PATHTRAIL_HASH_STATS"] = str(stats)
        before = stats.read_text().count("\n") if stats.exists() else 0
    done = subprocess.run([sys.executable, "-c", code, *args], env=full, capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    line = json.loads(stats.read_text().splitlines()[before]) if stats is not None else {}
    digests = [x.split()[1] for x in done.stdout.splitlines() if x.startswith("H ")]
    return digests, {**line, "log": done.stdout + done.stderr}


def truth(files: list[Path]) -> list[str]:
    return [hashlib.sha256(f.read_bytes()).hexdigest() for f in files]


def test_a_second_process_reads_nothing(tmp_path):
    files = settled(tmp_path / "data")
    env, stats = {"PATHTRAIL_HASH_CACHE": str(tmp_path / "c.sqlite")}, tmp_path / "stats.jsonl"
    first, one = child(*map(str, files), env=env, stats=stats)
    second, two = child(*map(str, files), env=env, stats=stats)
    assert first == second == truth(files)
    assert one["bytes_read"] == 5 * 4096 and one["files_read"] == 5
    assert two["bytes_read"] == 0 and two["db_hits"] == 5 and two["bytes_skipped"] == 5 * 4096
    assert {"pid", "module", "argv", "cache", *hash_cache.COUNTERS} <= set(one)
    off, three = child(*map(str, files), env={"PATHTRAIL_HASH_CACHE": "off"}, stats=stats)
    assert off == first and three["bytes_read"] == 5 * 4096 and three["cache"] == "off"


def test_a_forged_mtime_never_hits(tmp_path, monkeypatch):
    monkeypatch.setenv("PATHTRAIL_HASH_CACHE", str(tmp_path / "c.sqlite"))
    (f,) = settled(tmp_path / "d", 1)
    sha256_file(f)
    hash_cache.reset()  # a later process, sharing only the database
    st = os.stat(f)
    with open(f, "r+b") as out:  # same size, same inode
        out.write(b"forged")
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert os.stat(f).st_mtime_ns == st.st_mtime_ns
    read = hash_cache.stats()["bytes_read"]
    assert sha256_file(f) == truth([f])[0]
    assert hash_cache.stats()["bytes_read"] == read + 4096


def test_a_copied_cache_never_hits(tmp_path):
    repo = tmp_path / "repo"
    (repo / ".dvc").mkdir(parents=True)
    files = settled(repo / "data")
    child(*map(str, files), env={"PATHTRAIL_HASH_CACHE": ""})
    assert (repo / ".dvc/tmp/pathtrail/sha256.sqlite").is_file()
    copy = tmp_path / "copy"
    shutil.copytree(repo, copy, symlinks=True)  # what `cp -a` keeps: mtimes, the database
    copied = sorted((copy / "data").iterdir())
    assert [os.stat(c).st_mtime_ns for c in copied] == [os.stat(f).st_mtime_ns for f in files]
    digests, stats = child(*map(str, copied), env={"PATHTRAIL_HASH_CACHE": ""}, stats=tmp_path / "s")
    assert digests == truth(files) and stats["db_hits"] == 0 and stats["bytes_read"] == 5 * 4096


def test_the_racy_rule(tmp_path, monkeypatch):
    monkeypatch.setenv("PATHTRAIL_HASH_CACHE", "off")
    fresh = tmp_path / "fresh.bin"
    fresh.write_bytes(b"x" * 100)
    sha256_file(fresh)
    sha256_file(fresh)  # no database, no filesystem clock: a file younger than RACY_S is read again
    assert hash_cache.stats()["files_read"] == 2
    old = time.time() - 60
    os.utime(fresh, (old, old))  # an old mtime, but ctime is now: still young
    sha256_file(fresh)
    sha256_file(fresh)
    assert hash_cache.stats()["files_read"] == 4
    hash_cache.reset()
    monkeypatch.setenv("PATHTRAIL_HASH_CACHE", str(tmp_path / "c.sqlite"))
    future = time.time() + 3600
    os.utime(fresh, (future, future))  # newer than the filesystem clock: never settled
    sha256_file(fresh)
    sha256_file(fresh)
    assert hash_cache.stats()["files_read"] == 2
    hash_cache.reset()
    (settled_file,) = settled(tmp_path / "s", 1)  # younger than RACY_S, older than the clock's tick
    sha256_file(settled_file)
    sha256_file(settled_file)
    assert hash_cache.stats()["files_read"] == 1 and hash_cache.stats()["memory_hits"] == 1


def hash_with_broken_cache(tmp_path: Path, files: list[Path]) -> list[dict]:
    with capture_logs() as logs:
        for _ in range(2):
            assert [sha256_file(f) for f in files] == truth(files)
            hash_cache.reset()  # as a new process: flushes, reopens
    return [e for e in logs if e["event"] == "hash_cache.unavailable"]


def test_a_garbage_database_is_warned_about_and_ignored(tmp_path, monkeypatch):
    db = tmp_path / "c.sqlite"
    db.write_bytes(os.urandom(8192))
    monkeypatch.setenv("PATHTRAIL_HASH_CACHE", str(db))
    warned = hash_with_broken_cache(tmp_path, settled(tmp_path / "d"))
    assert len(warned) == 2 and "not a database" in warned[0]["error"]  # once per process


def test_a_truncated_database_is_warned_about_and_ignored(tmp_path, monkeypatch):
    db = tmp_path / "c.sqlite"
    monkeypatch.setenv("PATHTRAIL_HASH_CACHE", str(db))
    files = settled(tmp_path / "d", 3)
    for f in files:
        sha256_file(f)
    hash_cache.reset()
    with sqlite3.connect(db) as conn:  # many pages around the real rows, then cut after three pages
        conn.executemany("INSERT INTO sha256 VALUES (?, ?, ?)", [(f"{p}{i:06d}" * 8, "1:2:3:4:5", "0" * 64)
                                                                 for i in range(3000) for p in ("/a/", "/z/")])
    with sqlite3.connect(db) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    with open(db, "r+b") as f:
        f.truncate(3 * 4096)
    edited = files[0]
    edited.write_bytes(b"edited")
    time.sleep(0.05)
    warned = hash_with_broken_cache(tmp_path, files)
    assert 1 <= len(warned) <= 2 and all(w["database"] == str(db) for w in warned), warned


def test_an_unopenable_database_is_warned_about_and_ignored(tmp_path, monkeypatch):
    db = tmp_path / "c.sqlite"
    db.mkdir()  # a folder where the database should be: unreadable as a file, even for root
    monkeypatch.setenv("PATHTRAIL_HASH_CACHE", str(db))
    warned = hash_with_broken_cache(tmp_path, settled(tmp_path / "d"))
    assert len(warned) == 2 and "unable to open" in warned[0]["error"]


def read_only(paths: list[Path], on: bool) -> None:
    """chmod for a user; for root (who writes through modes) the immutable attribute, where it works."""
    if os.geteuid() != 0:
        for p in paths:
            p.chmod((0o555 if p.is_dir() else 0o444) if on else 0o755)
        return
    done = subprocess.run(["chattr", "+i" if on else "-i", *map(str, paths)], capture_output=True, check=False)
    if done.returncode != 0 and on:
        pytest.skip("root, and no immutable attribute here: nothing is read-only")


def test_a_read_only_database_is_warned_about_and_ignored(tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    db = folder / "c.sqlite"
    monkeypatch.setenv("PATHTRAIL_HASH_CACHE", str(db))
    files = settled(tmp_path / "d")
    sha256_file(files[0])
    hash_cache.reset()
    locked = [*folder.iterdir(), folder]
    read_only(locked, True)
    try:
        with pytest.raises(OSError):
            (folder / "probe").write_bytes(b"")
        warned = hash_with_broken_cache(tmp_path, files)
    finally:
        read_only(locked, False)
    assert len(warned) == 2 and all(w["database"] == str(db) for w in warned)


def test_a_locked_database_is_warned_about_and_ignored(tmp_path, monkeypatch):
    db = tmp_path / "c.sqlite"
    monkeypatch.setenv("PATHTRAIL_HASH_CACHE", str(db))
    monkeypatch.setattr(hash_cache, "BUSY_S", 0.2)
    files = settled(tmp_path / "d")
    sha256_file(files[0])
    hash_cache.reset()
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")  # another process writing for longer than the busy timeout
    try:
        warned = hash_with_broken_cache(tmp_path, files)
    finally:
        holder.rollback()
        holder.close()
    assert len(warned) == 2 and "locked" in warned[0]["error"]


def test_a_full_disk_is_warned_about_and_ignored(tmp_path):
    """RLIMIT_FSIZE makes every write that grows a file fail, as a full disk does."""
    files = settled(tmp_path / "d", 200, 64)
    code = ("import resource, signal, sys\n"
            "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
            "resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))\n" + HASH_ALL)
    env = {"PATHTRAIL_HASH_CACHE": str(tmp_path / "c.sqlite")}
    digests, log = child(*map(str, files), env=env, code=code)
    assert digests == truth(files)
    assert log["log"].count("hash_cache.unavailable") == 1


def test_concurrent_writers_share_one_database(tmp_path):
    shared = settled(tmp_path / "shared", 100, 256)
    own = [settled(tmp_path / f"own{i}", 50, 256) for i in range(4)]
    env = {**os.environ, "PYTHONPATH": SRC, "PATHTRAIL_HASH_CACHE": str(tmp_path / "c.sqlite")}
    procs = [subprocess.Popen([sys.executable, "-c", HASH_ALL, *map(str, shared + mine)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for mine in own]
    outs = [p.communicate(timeout=120) for p in procs]
    for p, (out, err), mine in zip(procs, outs, own, strict=True):
        assert p.returncode == 0 and "hash_cache.unavailable" not in out + err
        assert [x.split()[1] for x in out.splitlines()] == truth(shared + mine)
    everything = shared + [f for mine in own for f in mine]
    digests, stats = child(*map(str, everything), env={"PATHTRAIL_HASH_CACHE": env["PATHTRAIL_HASH_CACHE"]},
                           stats=tmp_path / "s")
    assert digests == truth(everything) and stats["bytes_read"] == 0 and stats["db_hits"] == 300


def test_the_cache_never_makes_the_tree_dirty(tmp_path):
    from pathtrail.provenance.environment import git_state

    repo = tmp_path / "repo"
    (repo / ".dvc").mkdir(parents=True)  # no .dvc/.gitignore: the cache's own .gitignore must do
    (repo / "src").mkdir()
    (repo / "src/code.py").write_text("x = 1\n")
    for args in (["init", "-q"], ["add", "-A"], ["-c", "user.name=t", "-c", "user.email=t@e", "commit", "-qm", "x"]):
        subprocess.run(["git", *args], cwd=repo, check=True)
    time.sleep(0.05)
    child(str(repo / "src/code.py"), env={"PATHTRAIL_HASH_CACHE": ""})
    assert (repo / ".dvc/tmp/pathtrail/sha256.sqlite").is_file()
    state = git_state(repo)
    assert not state.dirty and state.modified == []
    porcelain = subprocess.run(["git", "status", "--porcelain", "--ignored=no"], cwd=repo,
                               capture_output=True, text=True, check=True).stdout
    assert porcelain == ""


def test_a_folder_hash_uses_the_cache_for_every_file(tmp_path, monkeypatch):
    monkeypatch.setenv("PATHTRAIL_HASH_CACHE", str(tmp_path / "c.sqlite"))
    settled(tmp_path / "tree" / "a", 3)
    first = sha256_path(tmp_path / "tree")
    hash_cache.reset()
    assert sha256_path(tmp_path / "tree") == first
    assert hash_cache.stats()["bytes_read"] == 0 and hash_cache.stats()["db_hits"] == 3
    with hash_cache.fresh_reads():
        assert sha256_path(tmp_path / "tree") == first
        assert sha256_path(tmp_path / "tree") == first  # read once inside, then reused
    assert hash_cache.stats()["bytes_read"] == 3 * 4096


def test_verify_rehash_reads_every_byte_and_release_always_does(tmp_path, tmp_path_factory):
    """A forger who can edit the database can make a plain `verify` trust an edited file (the
    database is local state, like the tree); `--rehash` and `--release` read the bytes and catch it."""
    from fake_pipeline import fake_tree
    from pathtrail.review.verify import verify

    tree = fake_tree(tmp_path / "repo", tmp_path_factory)
    assert (tree / ".dvc").is_dir()
    time.sleep(0.05)
    hash_cache.reset()  # count from here (building the template hashed too)
    checks = ("artifacts", "card")
    assert verify(tree, checks=checks).ok
    first = hash_cache.stats()["bytes_read"]
    hash_cache.reset()
    assert verify(tree, checks=checks).ok
    assert first > 0 and hash_cache.stats()["bytes_read"] == 0 and hash_cache.stats()["db_hits"] > 0
    for flags in ({"rehash": True}, {"release": True}):
        hash_cache.reset()
        assert verify(tree, checks=checks, **flags).ok
        assert hash_cache.stats()["bytes_read"] == first and hash_cache.stats()["db_hits"] == 0

    model = tree / "models/model.pt"
    recorded = hashlib.sha256(model.read_bytes()).hexdigest()
    data = bytearray(model.read_bytes())
    data[100] ^= 1
    model.unlink()
    model.write_bytes(bytes(data))
    time.sleep(0.05)
    real = os.path.realpath(model)
    key = hash_cache.stat_key(real, os.stat(real))
    hash_cache.reset()
    with sqlite3.connect(tree / hash_cache.DEFAULT_DB) as conn:  # the poisoned row: new stat, old digest
        conn.execute("INSERT OR REPLACE INTO sha256 VALUES (?, ?, ?)", (real, ":".join(map(str, key[1:])), recorded))
    assert verify(tree, checks=("artifacts",)).ok  # trusted local state
    for flags in ({"rehash": True}, {"release": True}):
        hash_cache.reset()
        found = verify(tree, checks=("artifacts",), **flags).problems
        assert any("models/model.pt" in p for p in found), found


def test_verify_rehash_is_an_option_of_the_command():
    from pathtrail.cli.main import build_parser

    assert build_parser().parse_args(["verify", "--rehash"]).rehash is True
    assert build_parser().parse_args(["verify"]).rehash is False


def test_the_stats_lines_sum_over_processes(tmp_path):
    """The interface bench/hashing.py (and any bench) reads: one line per process, summed."""
    from bench.hashing import summed

    files = settled(tmp_path / "d", 3)
    stats = tmp_path / "s.jsonl"
    for cache in ("off", "off", str(tmp_path / "c.sqlite")):
        child(*map(str, files), env={"PATHTRAIL_HASH_CACHE": cache}, stats=stats)
    lines = [json.loads(x) for x in stats.read_text().splitlines()]
    assert [x["cache"] for x in lines] == ["off", "off", str(tmp_path / "c.sqlite")]
    total = summed(stats)["-c"]
    assert total["processes"] == 3 and total["bytes_read"] == 3 * 3 * 4096 and total["files_read"] == 9
