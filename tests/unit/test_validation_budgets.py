"""`pathtrail validate` under budgets: hostile files and manifests are refused from their `stat` or
header, within bounded memory and time, each named with its line; nothing is written.

The subprocess cases measure the validate process's peak RSS (`RUSAGE_CHILDREN` of a wrapper
process that runs only it) and its wall time.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import time
import zlib
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_validation import BASE_ARGS, SIZE, Corpus, find, png, run, snapshot

from pathtrail.cli.validate import validate_command
from pathtrail.data.images import inspect_file, inspect_files

MEMORY_BUDGET_MB = 500
WALL_BUDGET_S = 40  # interpreter start and imports included, on a shared CI machine

# Runs validate as its only child, so RUSAGE_CHILDREN is that process's peak RSS alone.
_WRAPPER = """
import json, resource, subprocess, sys, time
t = time.monotonic()
try:
    p = subprocess.run([sys.executable, "-m", "pathtrail.cli.validate", *sys.argv[1:]],
                       capture_output=True, text=True, timeout=240)
    rc, out, err = p.returncode, p.stdout, p.stderr
except subprocess.TimeoutExpired:
    rc, out, err = None, "", "timed out"
print(json.dumps({"rc": rc, "out": out, "err": err, "seconds": time.monotonic() - t,
                  "rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))
"""


def measured(cwd: Path, *args: str, wall_s: float = WALL_BUDGET_S) -> dict:
    proc = subprocess.run([sys.executable, "-c", _WRAPPER, *args], cwd=cwd, capture_output=True,
                          text=True, timeout=300, check=True, env={**os.environ})
    result = json.loads(proc.stdout)
    assert result["rc"] is not None, "validate hung"
    assert "Traceback" not in result["out"] + result["err"]
    assert result["rss_mb"] < MEMORY_BUDGET_MB, result["rss_mb"]
    assert result["seconds"] < wall_s, result["seconds"]
    return result


def big_png(path: Path, width: int, height: int) -> Path:
    """An all-black RGB PNG of width x height that is tiny on disk (a decompression bomb)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    rows = 100  # one block of rows, deflated once (full flush) and repeated: fast to build
    block = (b"\0" * (1 + 3 * width)) * rows
    deflate = zlib.compressobj(9, zlib.DEFLATED, -15)
    body = deflate.compress(block) + deflate.flush(zlib.Z_FULL_FLUSH)
    adler = 1
    for _ in range(height // rows):
        adler = zlib.adler32(block, adler)
    stream = (b"\x78\xda" + body * (height // rows)
              + zlib.compressobj(9, zlib.DEFLATED, -15).flush() + struct.pack(">I", adler))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", stream)
                     + chunk(b"IEND", b""))
    return path


@pytest.fixture(scope="module")
def bomb(tmp_path_factory) -> Path:
    return big_png(tmp_path_factory.mktemp("bomb") / "bomb.png", 12000, 12000)


@pytest.fixture
def corpus(tmp_path, monkeypatch) -> Corpus:
    monkeypatch.chdir(tmp_path)
    return Corpus(tmp_path)


def test_the_bomb_is_a_real_png(bomb):
    assert bomb.stat().st_size < 1_000_000
    with pytest.warns(Image.DecompressionBombWarning), Image.open(bomb) as img:
        assert img.size == (12000, 12000) and img.mode == "RGB"


def test_over_size_image_is_judged_from_its_header(bomb):
    t0 = time.monotonic()
    facts = inspect_file(str(bomb.parent.resolve()), bomb.name)
    assert time.monotonic() - t0 < 2  # a full decode takes ~20 s and 1.9 GB
    assert facts.problem == "image_too_large" and "12000x12000" in facts.detail
    assert facts.sha256 and facts.tissue_fraction is None
    assert any("DecompressionBombWarning" in note for note in facts.notes)


def test_hostile_files_are_refused_within_budget(corpus, bomb):
    """Four decompression bombs, one beyond Pillow's own limit, and a FIFO named like a patch."""
    rows = corpus.rows["internal"]
    for k in (0, 2, 4):
        (corpus.root / rows[k][0]).write_bytes(bomb.read_bytes())
    big_png(corpus.root / rows[6][0], 20000, 10000)  # over 2 x Image.MAX_IMAGE_PIXELS
    fifo = corpus.root / "internal/x.png"
    os.mkfifo(fifo)
    rows[7][0] = "internal/x.png"
    args = corpus.args(external=False)
    before = snapshot(corpus.tmp)
    result = measured(corpus.tmp, *args, *BASE_ARGS, "--workers", "4")
    assert result["rc"] == 1
    assert snapshot(corpus.tmp) == before
    assert "Warning" not in result["err"]  # the library's warnings are report entries
    entries = result["out"].splitlines()
    for line, rel, rule, text in [(2, rows[0][0], "image_too_large", "12000x12000"),
                                  (4, rows[2][0], "image_too_large", "12000x12000"),
                                  (6, rows[4][0], "image_too_large", "12000x12000"),
                                  (8, rows[6][0], "image_too_large", "200000000 pixels"),
                                  (9, "internal/x.png", "not_a_file", "named pipe (FIFO)")]:
        assert any(f"line {line}," in e and rel in e and f"[{rule}]" in e and text in e
                   for e in entries), (rule, line, result["out"])
    assert "[image_library_warning]" in result["out"]


def test_device_and_fifo_manifests_are_refused_without_reading(corpus):
    fifo = corpus.tmp / "fifo.csv"
    os.mkfifo(fifo)
    before = snapshot(corpus.tmp)
    result = measured(corpus.tmp, "--internal", "/dev/zero", "--external", str(fifo), *BASE_ARGS)
    assert result["rc"] == 1 and result["seconds"] < WALL_BUDGET_S
    assert snapshot(corpus.tmp) == before
    out = result["out"]
    assert "internal manifest '/dev/zero'" in out and "is a character device" in out
    assert f"external manifest '{fifo}'" in out and "is a named pipe (FIFO)" in out
    assert out.count("[manifest_unreadable]") == 2


def test_manifest_size_limit_is_checked_before_reading(corpus, capsys):
    huge = corpus.tmp / "huge.csv"
    with huge.open("wb") as f:  # sparse: 64 GiB that occupy no disk
        f.truncate(64 << 30)
    t0 = time.monotonic()
    rc, report = run(corpus, capsys, "--internal", str(huge))
    assert rc == 1 and time.monotonic() - t0 < 5
    problem = find(report, "manifest_too_large", cohort="internal", manifest=huge.as_posix())
    assert str(64 << 30) in problem["message"] and "data.max_manifest_bytes" in problem["hint"]
    path = corpus.manifest("internal")
    rc, report = run(corpus, capsys, "--internal", str(path), "--max-manifest-bytes", "100")
    assert rc == 1 and find(report, "manifest_too_large", manifest=path.as_posix())
    rc, report = run(corpus, capsys, "--internal", str(path), "--max-manifest-bytes", "4096")
    assert rc == 0


def test_pixel_budget_is_a_param(corpus, capsys):
    png(corpus.root / corpus.rows["internal"][3][0], 3, size=40)  # 1600 pixels
    rc, report = run(corpus, capsys, "--size-policy", "resize", "--max-image-pixels", "1000",
                     external=False)
    assert rc == 1
    problem = find(report, "image_too_large", line=5, column="path",
                   file=corpus.rows["internal"][3][0])
    assert "40x40 = 1600 pixels" in problem["message"] and "--max-image-pixels" in problem["hint"]
    rc, report = run(corpus, capsys, "--size-policy", "resize", "--max-image-pixels", "1600",
                     external=False)
    assert rc == 0 and report["rules"]["max_image_pixels"] == 1600


def test_file_byte_limit_is_checked_before_reading(corpus, capsys):
    target = corpus.root / corpus.rows["internal"][1][0]
    with target.open("r+b") as f:  # a valid PNG followed by a sparse GiB of nothing
        f.truncate(1 << 30)
    rc, report = run(corpus, capsys, external=False)
    assert rc == 1
    problem = find(report, "file_too_large", line=3, file=corpus.rows["internal"][1][0])
    assert str(1 << 30) in problem["message"]


@pytest.mark.parametrize("fmt", ["GIF", "TIFF", "PNG"])
def test_multi_frame_images_are_refused(corpus, capsys, fmt):
    frames = [Image.new("RGB", (SIZE, SIZE), (120 + 40 * k, 60, 90)) for k in range(3)]
    target = corpus.root / corpus.rows["internal"][2][0]
    frames[0].save(target, format=fmt, save_all=True, append_images=frames[1:])
    rc, report = run(corpus, capsys, external=False)
    assert rc == 1
    problem = find(report, "image_frames", line=4, column="path", file=corpus.rows["internal"][2][0])
    assert "more than one frame" in problem["message"] and "single-frame" in problem["hint"]


def test_library_warnings_are_kept_per_file_across_threads(tmp_path, monkeypatch, capsys):
    """Pillow warns for every image above MAX_IMAGE_PIXELS: lowered, every file of a 4-thread run
    must get its own entry, attributed to it, and nothing reaches stderr."""
    rels = [png(tmp_path / f"p{i:03d}.png", i).name for i in range(300)]
    rels[150:150] = ["missing.png"]
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", SIZE * SIZE - 1)
    facts = inspect_files(str(tmp_path.resolve()), rels, workers=4)
    assert capsys.readouterr().err == ""
    for rel, fact in zip(rels, facts, strict=True):
        if rel == "missing.png":
            assert fact.problem == "file_missing" and fact.notes == ()
        else:
            assert fact.problem is None and len(fact.notes) == 1, (rel, fact.notes)
            assert f"({SIZE * SIZE} pixels)" in fact.notes[0]


def test_library_warnings_in_the_report(corpus, capsys, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", SIZE * SIZE - 1)
    rc, report = run(corpus, capsys, external=False)
    assert rc == 0
    problem = find(report, "image_library_warning", "warning", line=2, column="path",
                   file=corpus.rows["internal"][0][0])
    assert "DecompressionBombWarning" in problem["message"]
    assert report["warning_counts"]["image_library_warning"] == 8


def test_usage_error_for_a_bad_budget(corpus, capsys):
    rc = validate_command([*corpus.args(), *BASE_ARGS, "--max-image-pixels", "0"])
    assert rc == 2 and "--max-image-pixels must be >= 1" in capsys.readouterr().err


def test_manifest_row_limit(corpus, capsys):
    rc, report = run(corpus, capsys, "--max-manifest-rows", "5")
    assert rc == 1
    problem = find(report, "manifest_too_large", cohort="internal", line=7)
    assert "more than 5 rows" in problem["message"] and "--max-manifest-rows" in problem["hint"]


@pytest.mark.slow
@pytest.mark.parametrize("rows, row", [
    (200_000, "slides/patient_{i:07d}/slide_{i:07d}/tile_{i:09d}.png,{label},P{i},S{i},site{s}"),
    (1_200_000, "{i:x},{label},p,s,x"),  # 16 MiB of the shortest rows: refused past the row limit
    (200_000, "{i},,,,"),  # four empty cells a row: 800,000 problems (peaked at 566 MB)
    (200_000, "p{i:07d}.png,{i:040d},P{i},S{i},s"),  # 200,000 distinct unknown labels
])
def test_the_largest_manifest_the_budgets_allow(tmp_path, rows, row):
    """Every row a problem, at the default byte and row limits, JSON report: still < 500 MB."""
    lines = ["path,label,patient_id,slide_id,site"]
    lines += [row.format(i=i, label=i % 2, s=i % 3) for i in range(rows)]
    text = "\n".join(lines) + "\n"
    manifest = tmp_path / "big.csv"
    manifest.write_text(text[:16 << 20].rsplit("\n", 1)[0] + "\n")
    (tmp_path / "empty").mkdir()
    result = measured(tmp_path, "--internal", str(manifest), "--classes", "a,b", "--data-root",
                      str(tmp_path / "empty"), "--json", wall_s=150)
    assert result["rc"] == 1
    report = json.loads(result["out"])
    listed = Counter(p["rule"] for p in report["errors"])
    assert max(listed.values()) <= 1000 and report["n_errors"] >= 1  # per rule


@pytest.mark.parametrize("content", [
    b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 16 16\n0 0 moveto showpage\n",  # Ghostscript
    b"\x00\x00\x01\x00\x01\x00\x10\x10\x00\x00\x01\x00\x20\x00",  # an ICO header
])
def test_only_accepted_raster_formats_are_decoded(corpus, capsys, content):
    target = corpus.root / corpus.rows["internal"][4][0]
    target.write_bytes(content)
    rc, report = run(corpus, capsys, external=False)
    assert rc == 1
    problem = find(report, "image_decode", line=6, file=corpus.rows["internal"][4][0])
    assert "accepted format (PNG, JPEG" in problem["message"]


def test_an_image_at_the_pixel_budget_decodes_quickly(tmp_path):
    side = 1024  # the default budget, data.max_image_pixels = 1024 * 1024
    noise = np.random.default_rng(0).integers(0, 256, (side, side, 3), dtype=np.uint8)
    Image.fromarray(noise).save(tmp_path / "max.png")
    t0 = time.monotonic()
    facts = inspect_file(str(tmp_path.resolve()), "max.png")
    assert facts.problem is None and (facts.width, facts.height) == (side, side)
    assert time.monotonic() - t0 < 2


def test_a_special_params_file_is_a_usage_error(corpus, capsys):
    rc = validate_command([*corpus.args(), "--params", "/dev/zero"])
    err = capsys.readouterr().err
    assert rc == 2 and "params file '/dev/zero' is not a regular file" in err
