"""Hostile inputs that are small on disk but once cost minutes: a manifest repeating one path, a
TIFF chaining thousands of pages, a progressive JPEG repeating a scan; and look-alike ids."""

from __future__ import annotations

import io
import struct
import time
from pathlib import Path

import numpy as np
from PIL import Image
from test_validation import SIZE, corpus, find, run  # noqa: F401  (corpus: a fixture)

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
    assert rc == 1 and seconds < 20, seconds
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
