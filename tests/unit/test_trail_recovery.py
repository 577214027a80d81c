"""Crash-safe trail appends: torn and unterminated last lines, full disks, hostile lines, and an
input edited while its stage runs."""

from __future__ import annotations

import base64
import errno
import os
import subprocess
import time
from pathlib import Path

import pytest

from pathtrail.core import hash_cache
from pathtrail.core.hashing import sha256_bytes, sha256_file
from pathtrail.provenance import audit, trail


@pytest.fixture
def path(tmp_path):
    p = tmp_path / "audit/trail.jsonl"
    (tmp_path / "in.txt").write_text("input\n")
    for name in ("a", "b"):
        with audit.stage(name, inputs=[tmp_path / "in.txt"], params={"x": 1}, trail=p) as rec:
            (tmp_path / f"{name}.txt").write_text(name)
            rec.outputs(tmp_path / f"{name}.txt")
    return p


def run_stage(p, tmp_path, name="c", **params):
    with audit.stage(name, inputs=[tmp_path / "in.txt"], params=params, trail=p) as rec:
        rec.note(ran=True)


def test_a_torn_last_line_is_kept_verbatim_and_the_next_stage_runs(path, tmp_path):
    intact = path.read_bytes()
    torn = b'{"action": "start", "outcome": "runn'  # a crash in the middle of a write
    path.write_bytes(intact + torn)
    run_stage(path, tmp_path)
    data = path.read_bytes()
    assert data.startswith(intact + torn + b"\n"), "nothing before the torn line may change"
    entries = audit.read_entries(path)
    recovery = entries[5]
    assert "_unparsable" in entries[4] and recovery["action"] == "recover"
    assert base64.b64decode(recovery["torn_base64"]) == torn
    assert recovery["torn_sha256"] == sha256_bytes(torn) and recovery["torn_line"] == 5
    assert recovery["seq"] == 4 and recovery["prev_hash"] == entries[3]["entry_hash"]
    assert [e["stage"] for e in entries[6:]] == ["c", "c"]
    problems, notes = audit.chain_report(entries)
    assert problems == []
    assert any("line 5 is a torn entry" in n for n in notes)


def test_an_unterminated_complete_entry_stays_in_the_chain(path, tmp_path):
    path.write_bytes(path.read_bytes().rstrip(b"\n"))
    run_stage(path, tmp_path)
    entries = audit.read_entries(path)
    assert [e.get("action") for e in entries] == ["start", "end", "start", "end", "recover", "start", "end"]
    recovery = entries[4]
    assert "unterminated" in recovery["reason"] and recovery["prev_hash"] == entries[3]["entry_hash"]
    problems, notes = audit.chain_report(entries)
    assert problems == [] and any("unterminated" in n for n in notes)


def test_a_torn_line_someone_terminated_is_also_recovered(path, tmp_path):
    path.write_bytes(path.read_bytes() + b'{"seq": 4, "sta\n')
    run_stage(path, tmp_path)
    problems, _ = audit.chain_report(audit.read_entries(path))
    assert problems == []


def test_a_torn_line_without_its_recovery_entry_is_a_break(path):
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b"".join(lines[:2]) + b'{"torn\n' + b"".join(lines[2:]))
    problems, _ = audit.chain_report(audit.read_entries(path))
    assert any("line 3" in p and "not valid JSON" in p for p in problems)


@pytest.mark.parametrize("line", [b"42", b"[]", b'"text"', b"null", b"{}", b'{"seq": true}', b"\xff\xfe"])
def test_hostile_lines_are_named_never_a_crash(path, tmp_path, line):
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b"".join(lines[:2]) + line + b"\n" + b"".join(lines[2:]))
    problems, _ = audit.chain_report(audit.read_entries(path))
    assert problems and any("entry #3" in p for p in problems)
    assert audit.chain_head(path)  # readers do not crash either


def test_a_failed_write_leaves_the_trail_as_it_was(path, tmp_path, monkeypatch):
    before = path.read_bytes()

    def half_then_full(fd, data):
        os.write(fd, data[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(trail, "_write_all", half_then_full)
    with pytest.raises(trail.TrailWriteError, match="no space left on device.*trail is unchanged"):
        run_stage(path, tmp_path)
    assert path.read_bytes() == before


def _mount_tiny_tmpfs(where):
    where.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=32k", "tmpfs", str(where)],
                          capture_output=True, check=False)
    return done.returncode == 0


def test_a_really_full_disk_fails_the_stage_and_changes_nothing(tmp_path):
    """A real ENOSPC from a 32 KiB tmpfs (needs mount permission; the simulated test above covers
    the same code path everywhere else)."""
    mnt = tmp_path / "tiny"
    if not _mount_tiny_tmpfs(mnt):
        pytest.skip("cannot mount a tmpfs here (not root); covered by the simulated ENOSPC test")
    try:
        (tmp_path / "in.txt").write_text("input\n")
        p = mnt / "trail.jsonl"
        run_stage(p, tmp_path, "a")
        filler = mnt / "filler"
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
        try:  # fill the disk to the last byte
            while os.write(fd, b"x" * 512):
                pass
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
        finally:
            os.close(fd)
        before = p.read_bytes()
        with pytest.raises(trail.TrailWriteError, match="no space left on device"):
            run_stage(p, tmp_path, "b", pad="x" * 9000)  # more than a page: cannot fit in the slack
        assert p.read_bytes() == before
        filler.unlink()
        run_stage(p, tmp_path, "b")  # space again: the next stage runs and the chain is intact
        assert audit.chain_report(audit.read_entries(p))[0] == []
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


def test_an_input_edited_while_the_stage_runs_fails_it_and_names_the_file(path, tmp_path):
    src = tmp_path / "in.txt"
    with (pytest.raises(audit.InputChangedError, match="in.txt changed while the stage ran"),
          audit.stage("c", inputs=[src], trail=path)):
        src.write_text("edited\n")
    end = audit.read_entries(path)[-1]
    assert end["outcome"] == "failed" and "in.txt changed while the stage ran" in end["error"]


def test_an_untouched_input_is_rechecked_and_passes(path):
    end = audit.read_entries(path)[-1]
    assert end["outcome"] == "ok" and end["inputs_rechecked"] is True


def test_the_hash_cache_never_hides_an_edit(tmp_path, monkeypatch):
    monkeypatch.setenv("PATHTRAIL_HASH_CACHE", str(tmp_path / "cache.sqlite"))
    f = tmp_path / "f.bin"
    f.write_bytes(b"aaaa")
    first = sha256_file(f)
    f.write_bytes(b"bbbb")  # same size, same second: the racy rule must not serve the old hash
    assert sha256_file(f) != first
    old = time.time() - 60
    os.utime(f, (old, old))
    time.sleep(0.05)  # past the filesystem's timestamp tick: ctime (now) settles before the next read
    cached = sha256_file(f)
    hits = hash_cache.stats()["memory_hits"] + hash_cache.stats()["db_hits"]
    assert sha256_file(f) == cached
    assert hash_cache.stats()["memory_hits"] + hash_cache.stats()["db_hits"] == hits + 1  # served, unread
    f.write_bytes(b"cccc")
    os.utime(f, (old, old))  # mtime forged back: ctime still moves
    assert sha256_file(f) == sha256_bytes(b"cccc")


def _bytes_read() -> int:
    """What this process has read through system calls so far (Linux /proc/self/io `rchar`)."""
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise AssertionError("no rchar in /proc/self/io")


@pytest.mark.skipif(not os.path.exists("/proc/self/io"), reason="needs Linux /proc/self/io")
def test_append_reads_only_the_last_entry(tmp_path):
    """A 100,000-entry trail (~25 MB) costs an append what a 3-entry trail costs: its last line."""
    big, entries, prev = tmp_path / "big.jsonl", [], None
    for i in range(100_000):
        prev = trail._seal({"stage": "s", "action": "start", "outcome": "ok", "n": i}, prev)
        entries.append(trail._encode(prev))
    big.write_bytes(b"".join(entries))
    small = tmp_path / "small.jsonl"
    small.write_bytes(b"".join(entries[:3]))
    cost = {}
    for path in (small, big, small, big):
        before = _bytes_read()
        audit.append({"stage": "t", "action": "note", "outcome": "ok"}, path)
        cost[path] = _bytes_read() - before
    assert cost[big] < 70_000 < big.stat().st_size // 100
    assert cost[big] <= cost[small] + 70_000
    got = audit.read_entries(big)
    assert audit.chain_problems(got) == [] and [e["seq"] for e in got[-2:]] == [100_000, 100_001]


def test_an_entry_longer_than_the_read_window_still_links(path):
    audit.append({"stage": "x", "action": "note", "outcome": "ok", "blob": "b" * (3 * trail.TAIL_WINDOW)}, path)
    audit.append({"stage": "x", "action": "note", "outcome": "ok"}, path)
    entries = audit.read_entries(path)
    assert audit.chain_problems(entries) == [] and entries[-1]["prev_hash"] == entries[-2]["entry_hash"]


def test_a_torn_line_after_a_long_trail_is_still_recovered(tmp_path):
    p = tmp_path / "t.jsonl"
    for i in range(50):
        audit.append({"stage": "x", "action": "note", "outcome": "ok", "pad": "p" * 3000, "n": i}, p)
    with open(p, "ab") as f:
        f.write(b'{"seq": 50, "stage": "x", "act')  # a crash in the middle of a write
    entry = audit.append({"stage": "x", "action": "note", "outcome": "ok"}, p)
    entries = audit.read_entries(p)
    problems, notes = audit.chain_report(entries)
    assert problems == [] and entries[-2]["action"] == "recover" and entries[-2]["torn_line"] == 51
    assert entry["seq"] == 51 and any("torn" in n for n in notes)
