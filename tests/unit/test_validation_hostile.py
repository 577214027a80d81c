"""Hostile inputs that are small on disk but once cost minutes: a manifest repeating one path, a
TIFF chaining thousands of pages, a progressive JPEG repeating a scan; and look-alike ids."""

from __future__ import annotations

import io
import struct
import time
import zlib
from pathlib import Path

import numpy as np
from PIL import Image
from test_validation import SIZE, corpus, find, run  # noqa: F401  (corpus: a fixture)
from test_validation_budgets import big_png

from pathtrail.cli.validate import validate_command
from pathtrail.data.images import MAX_JPEG_SCANS, inspect_file, jpeg_scans


def test_one_path_repeated_on_every_row_is_checked_in_linear_time(tmp_path, capsys):
    rows = 50_000  # was quadratic: 14.5 s for 5,000 rows, 156 s for 20,000
    text = "path,label,patient_id,slide_id,site\n" + "".join(
        f"a/p0.png,0,P{i},S{i},x\n" for i in range(rows))
    (tmp_path / "m.csv").write_text(text)
    t0 = time.monotonic()
    rc = validate_command(["--internal", str(tmp_path / "m.csv"), "--classes", "a,b", "--json",
                           "--workers", "1"])
    seconds = time.monotonic() - t0
    out = capsys.readouterr().out
    assert rc == 1 and seconds < 30, seconds  # ~7 s here; quadratic, it took ~20 minutes
    assert '"duplicate_path": 49999' in out.replace("\n", "").replace("  ", "") or \
        '"duplicate_path":49999' in out.replace(" ", "").replace("\n", "")
    assert "lines 2, 3, 4" in out and f"({rows} in all)" in out


def chained_tiff(pages: int) -> bytes:
    """A 1x1 grayscale TIFF of `pages` IFDs sharing one strip: 102 bytes a page."""
    entries = [(256, 3, 1), (257, 3, 1), (258, 3, 8), (259, 3, 1), (262, 3, 1), (273, 4, 8),
               (278, 3, 1), (279, 4, 1)]
    out = bytearray(b"II*\0" + struct.pack("<I", 12) + b"\x80\0\0\0")  # pixel at offset 8
    for k in range(pages):
        here = len(out)
        nxt = here + 2 + 12 * len(entries) + 4 if k < pages - 1 else 0
        out += struct.pack("<H", len(entries))
        for tag, kind, value in entries:
            out += struct.pack("<HHI", tag, kind, 1) + struct.pack("<I", value)
        out += struct.pack("<I", nxt)
    return bytes(out)


def test_a_tiff_of_many_pages_is_refused_without_walking_them(tmp_path):
    (tmp_path / "t.tif").write_bytes(chained_tiff(20_000))  # 2 MB; 45,000 pages took 25 s
    t0 = time.monotonic()
    facts = inspect_file(str(tmp_path.resolve()), "t.tif")
    assert time.monotonic() - t0 < 1.5
    assert facts.problem == "image_frames" and facts.detail == "more than one frame"


def repeated_scan_jpeg(repeats: int, side: int = SIZE) -> bytes:
    """A progressive JPEG whose last scan (SOS segment and its entropy-coded data) is repeated."""
    noise = np.random.default_rng(0).integers(0, 256, (side, side, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(noise).save(buf, format="JPEG", progressive=True, quality=90)
    data = buf.getvalue()
    last = data.rindex(b"\xff\xda")
    assert data.endswith(b"\xff\xd9")
    return data[:-2] + data[last:-2] * repeats + b"\xff\xd9"


def test_jpeg_scans_are_counted_from_the_marker_structure():
    plain = repeated_scan_jpeg(1)
    assert 2 <= jpeg_scans(plain) <= 12  # a normal progressive JPEG
    assert jpeg_scans(repeated_scan_jpeg(50)) == jpeg_scans(plain) + 49
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 10, 10)).save(buf, format="JPEG")
    assert jpeg_scans(buf.getvalue()) == 1  # baseline
    # FF DA inside a comment segment is payload, not a scan
    comment = b"\xff\xfe" + struct.pack(">H", 2 + 4) + b"\xff\xda\xff\xda"
    assert jpeg_scans(buf.getvalue()[:2] + comment + buf.getvalue()[2:]) == 1
    # junk bytes before a marker, which libjpeg skips, do not stop the count
    last = plain.rindex(b"\xff\xda")
    junked = plain[:-2] + (b"junk" + plain[last:-2]) * 50 + b"\xff\xd9"
    assert jpeg_scans(junked) == jpeg_scans(plain) + 50


def test_a_jpeg_with_a_scan_repeated_is_refused_before_decoding(tmp_path):
    (tmp_path / "j.jpg").write_bytes(repeated_scan_jpeg(2_000))  # validated OK before
    t0 = time.monotonic()
    facts = inspect_file(str(tmp_path.resolve()), "j.jpg")
    assert time.monotonic() - t0 < 1.5
    assert facts.problem == "image_scans", facts
    assert f"more than {MAX_JPEG_SCANS}" in facts.detail
    normal = tmp_path / "n.jpg"
    normal.write_bytes(repeated_scan_jpeg(1))
    assert inspect_file(str(tmp_path.resolve()), "n.jpg").problem is None


def test_a_repeated_scan_jpeg_in_a_manifest_is_an_error(corpus, capsys):  # noqa: F811
    target: Path = corpus.root / corpus.rows["internal"][2][0]
    target.write_bytes(repeated_scan_jpeg(80_000))  # ~4 MB: such files did not finish in 300 s
    t0 = time.monotonic()
    rc, report = run(corpus, capsys, external=False)
    assert rc == 1 and time.monotonic() - t0 < 10
    problem = find(report, "image_scans", line=4, column="path")
    assert "scans" in problem["message"] and "re-export" in problem["hint"]


def test_invisible_characters_and_mixed_scripts_in_ids_are_errors(corpus, capsys):  # noqa: F811
    rows = corpus.rows["internal"]
    rows[0][2], rows[2][3], rows[4][4], rows[6][4] = "iP0\u200b", "iS1\u2060", "site\ufeffA", "siteА"
    rc, report = run(corpus, capsys, external=False)
    assert rc == 1
    for line, column, shown in [(2, "patient_id", "\\u200b"), (4, "slide_id", "\\u2060"),
                                (6, "site", "\\ufeff")]:
        problem = find(report, "value_invisible_character", line=line, column=column)
        assert shown in problem["message"], problem
    mixed = find(report, "value_mixed_scripts", line=8, column="site")
    assert "Cyrillic and Latin" in mixed["message"] and "\\u0410" in mixed["message"]
    rc = validate_command([*corpus.args(external=False), "--classes", "benign,tumour",
                           "--patch-size", str(SIZE), "--min-per-class", "2"])
    out = capsys.readouterr().out
    assert "iP0\\u200b" in out and "\u200b" not in out  # printed escaped: no twin of 'iP0'


def test_lookalike_ids_across_and_within_cohorts(corpus, capsys):  # noqa: F811
    ext = corpus.rows["external"]
    ext[0][2] = ext[1][2] = "IP0"  # case
    ext[2][2] = ext[3][2] = "ｉP1"  # fullwidth i: NFKC folds it
    ext[4][3] = "is2"  # slide, case
    for row in ext:
        row[4] = "INTERNAL"
    rc, report = run(corpus, capsys)
    assert rc == 1
    for rule, shown in [("patient_lookalike_in_both_cohorts", "'IP0'"),
                        ("patient_lookalike_in_both_cohorts", "'ｉP1'"),
                        ("slide_lookalike_in_both_cohorts", "'is2'"),
                        ("site_lookalike_in_both_cohorts", "'INTERNAL'")]:
        assert any(p["rule"] == rule and shown in p["message"] and "looks like internal"
                   in p["message"] for p in report["errors"]), (rule, shown, report["errors"])
    rc, report = run(corpus, capsys, "--allow-shared-site")
    assert "site_lookalike_in_both_cohorts" not in report["error_counts"]
    corpus.rows["external"] = [r[:4] + ["external"] for r in corpus.rows["external"]]
    corpus.rows["internal"][7][2] = "ip3"  # within one cohort: 'iP3' and 'ip3'
    rc, report = run(corpus, capsys)
    problem = find(report, "patient_lookalike", line=9, column="patient_id")
    assert "'iP3' (line 8), 'ip3' (line 9)" in problem["message"]


# ---------------------------------------------------------------------------------- messages
def png16_rgb(path: Path, side: int = SIZE) -> Path:
    """A 16-bit-per-channel RGB PNG (Pillow reads it as 8-bit RGB, dropping the low bytes)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    rows = b"".join(b"\0" + struct.pack(">H", 30000 + k) * (3 * side) for k in range(side))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 16,
                     2, 0, 0, 0)) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))
    return path


def test_16_bit_colour_is_refused_like_16_bit_grey(corpus, capsys):  # noqa: F811
    png16_rgb(corpus.root / "internal/i1_0.png")
    with Image.open(corpus.root / "internal/i1_0.png") as img:
        assert img.mode == "RGB"  # what made it pass silently, truncated
    for policy in ("convert", "reject"):
        rc, report = run(corpus, capsys, "--mode-policy", policy)
        assert rc == 1
        assert "RGB;16" in find(report, "image_mode_unsupported", line=4)["message"]


def test_wide_encodings_are_named_in_the_hint(corpus, capsys):  # noqa: F811
    text = "path,label,patient_id,slide_id,site\na.png,0,P,S,x\n"
    for codec, source in (("utf-32", "UTF-32 "), ("utf-32-le", "UTF-32LE"), ("utf-16", "UTF-16 ")):
        (corpus.tmp / "w.csv").write_bytes(text.encode(codec))
        _, report = run(corpus, capsys, "--internal", str(corpus.tmp / "w.csv"))
        assert f"iconv -f {source}" in find(report, "manifest_encoding")["hint"], codec


def test_an_image_over_pillows_limit_is_named_by_its_size(corpus, capsys):  # noqa: F811
    big_png(corpus.root / corpus.rows["internal"][0][0], 20000, 10000)
    _, report = run(corpus, capsys, external=False)
    message = find(report, "image_too_large", line=2)["message"]
    assert "20000x10000 = 200000000 pixels, over the budget of" in message, message
    assert "DOS" not in message and "Image size" not in message


def test_unlisted_problems_say_how_to_see_them(corpus, capsys):  # noqa: F811
    for row in corpus.rows["internal"]:
        row[0] = "gone/" + row[0]  # 8 missing files
    corpus.rows["internal"] += [[f"gone/x{k}.png", "0", "iP9", "iS9", "internal"] for k in range(8)]
    args = [*corpus.args(external=False), "--classes", "benign,tumour", "--min-per-class", "2"]
    assert validate_command(args) == 1
    assert "more 'file_missing' (all are in the JSON report: rerun with --report FILE or --json)" \
        in capsys.readouterr().out
    assert validate_command([*args, "--report", str(corpus.tmp / "r.json")]) == 1
    assert f"(see the JSON report '{corpus.tmp / 'r.json'}')" in capsys.readouterr().out


def test_workers_are_capped(corpus, capsys):  # noqa: F811
    rc = validate_command([*corpus.args(), "--classes", "a,b", "--workers", "100000"])
    assert rc == 2 and "--workers must be <= 64, got 100000" in capsys.readouterr().err


def test_long_paths_are_shortened_on_the_console_only(corpus, capsys):  # noqa: F811
    long = "internal/" + "/".join(["d" * 50] * 6) + "/end.png"
    corpus.rows["internal"][0][0] = long
    _, report = run(corpus, capsys, external=False)
    assert find(report, "file_missing", line=2)["file"] == long
    validate_command([*corpus.args(external=False), "--classes", "benign,tumour"])
    entry = next(e for e in capsys.readouterr().out.splitlines() if "[file_missing]" in e)
    assert long not in entry and "…" in entry and "/end.png'" in entry
