"""Tiling synthetic pyramidal TIFFs (written here, textured from real H&E): counts per reason,
determinism, both backends, MPP metadata, bad files and hostile slide tables."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from pathtrail.core.files import read_table
from pathtrail.core.hashing import sha256_path
from pathtrail.wsi.grid import read_overview
from pathtrail.wsi.reader import SlideError, open_slide
from pathtrail.wsi.slide_table import SlideTableError
from pathtrail.wsi.tiling import REASONS, slide_folder, tile_slide_table
from synthetic_slides import write_slide
from wsi_helpers import tile_params, write_table

CLASSES = ("benign", "tumour")
W, H = 1024, 768  # level 0 at 0.25 µm/px; at tile.mpp 1.0 a 32-px patch covers 128 level-0 px


@pytest.fixture(scope="module")
def slides(tmp_path_factory):
    root = tmp_path_factory.mktemp("slides")
    write_slide(root / "s1.tif", W, H, mpp=0.25, levels=3, seed=1)
    write_slide(root / "s2.tif", W, H, mpp=0.25, levels=3, seed=2)
    write_slide(root / "nompp.tif", W, H, mpp=None, levels=3, seed=3)
    return root


def one_table(tmp_path, root, rows, name="internal.csv", **kw):
    return write_table(tmp_path / name, rows, **kw)


ROW = {"path": "s1.tif", "label": "tumour", "patient_id": "P1", "slide_id": "S1", "site": "site_a"}


def tile(tmp_path, root, tables, params=None, out="out", qc="qc", workers=0, patch_size=32):
    (tmp_path / out).mkdir()
    (tmp_path / qc).mkdir()
    return tile_slide_table(tables, root, tmp_path / out, params or tile_params(), classes=CLASSES,
                            patch_size=patch_size, qc_dir=tmp_path / qc, workers=workers)


def test_every_grid_patch_is_kept_or_rejected_for_one_reason(tmp_path, slides):
    regions = f"0,0,{W},{int(H * 0.9)}"  # the bottom row lies outside the annotation
    table = one_table(tmp_path, slides, [{**ROW, "regions": regions, "scanner": "X1"}],
                      columns=[*ROW, "regions", "scanner"])
    result = tile(tmp_path, slides, {"internal": table})
    s = result.report["slides"][0]
    assert s["grid"] == (W // 128) * (H // 128) == 48
    assert s["kept"] + sum(s["rejected"].values()) == s["grid"]
    assert all(s["rejected"][r] > 0 for r in REASONS), s["rejected"]  # the layout has all four
    assert s["level"] == 2 and s["level_mpp"] == 1.0 and s["read_size"] == 32
    manifest = result.manifests["internal"]
    assert len(manifest) == s["kept"]
    assert list(manifest.columns) == ["path", "label", "patient_id", "slide_id", "site", "x", "y",
                                      "level", "mpp", "mpp_source", "scanner"]
    assert set(manifest["scanner"]) == {"X1"} and set(manifest["mpp_source"]) == {"metadata"}
    written = read_table(tmp_path / "out/internal.csv")
    assert written["path"].tolist() == manifest["path"].tolist() and written["x"].tolist() == manifest["x"].tolist()
    for rel in manifest["path"]:
        assert Image.open(tmp_path / "out" / rel).size == (32, 32)
    assert (tmp_path / "qc" / s["qc"]).is_file()
    assert result.report["totals"]["internal"]["kept"] == s["kept"]


def test_a_subset_is_evenly_spaced_and_counted(tmp_path, slides):
    table = one_table(tmp_path, slides, [ROW])
    s = tile(tmp_path, slides, {"internal": table}, tile_params(max_patches_per_slide=3)).report["slides"][0]
    assert s["kept"] + s["rejected"]["blur"] <= 3 and s["not_sampled"] > 0
    assert s["kept"] + s["not_sampled"] + sum(s["rejected"].values()) == s["grid"]


def test_tiling_twice_gives_the_same_bytes_whatever_the_workers(tmp_path, slides):
    rows = [ROW, {**ROW, "path": "s2.tif", "slide_id": "S2", "patient_id": "P2", "label": "benign"}]
    table = one_table(tmp_path, slides, rows)
    a = tile(tmp_path, slides, {"internal": table}, out="a", qc="qa", workers=0)
    b = tile(tmp_path, slides, {"internal": table}, out="b", qc="qb", workers=2)
    assert sha256_path(tmp_path / "a") == sha256_path(tmp_path / "b")
    assert sha256_path(tmp_path / "qa") == sha256_path(tmp_path / "qb")
    assert a.report == b.report
    pd.testing.assert_frame_equal(a.manifests["internal"], b.manifests["internal"])
    assert list(a.manifests["internal"]["slide_id"].unique()) == ["S1", "S2"]  # table order


def test_openslide_and_tiffslide_cut_the_same_patches(tmp_path, slides):
    table = one_table(tmp_path, slides, [ROW])
    tile(tmp_path, slides, {"internal": table}, tile_params(backend="openslide"), out="o", qc="qo")
    tile(tmp_path, slides, {"internal": table}, tile_params(backend="tiffslide"), out="t", qc="qt")
    assert sha256_path(tmp_path / "o") == sha256_path(tmp_path / "t")


def test_a_target_between_levels_is_resampled_from_the_finer_one(tmp_path, slides):
    table = one_table(tmp_path, slides, [ROW])
    result = tile(tmp_path, slides, {"internal": table}, tile_params(mpp=0.8))
    s = result.report["slides"][0]
    assert s["level"] == 1 and s["read_size"] == round(32 * 0.8 / 0.5) == 51
    rel = result.manifests["internal"]["path"].iloc[0]
    assert Image.open(tmp_path / "out" / rel).size == (32, 32)


def test_a_slide_without_mpp_fails_unless_assume_mpp_is_set(tmp_path, slides):
    table = one_table(tmp_path, slides, [{**ROW, "path": "nompp.tif"}])
    with pytest.raises(SlideError, match=r"nompp\.tif.*no resolution.*tile\.assume_mpp"):
        tile(tmp_path, slides, {"internal": table})
    assert not any((tmp_path / "out").iterdir())  # nothing tiled
    result = tile(tmp_path, slides, {"internal": table}, tile_params(assume_mpp=0.25), out="o2", qc="q2")
    assert set(result.manifests["internal"]["mpp_source"]) == {"assumed"}
    assert result.report["slides_with_assumed_mpp"] == ["S1"]
    assert result.report["assume_mpp"] == 0.25


def test_a_target_finer_than_the_scan_is_a_clear_error(tmp_path, slides):
    table = one_table(tmp_path, slides, [ROW])
    with pytest.raises(SlideError, match=r"tile\.mpp 0\.1 is finer than the slide's level 0"):
        tile(tmp_path, slides, {"internal": table}, tile_params(mpp=0.1))


def test_bad_files_are_all_listed_before_anything_is_tiled(tmp_path, slides):
    root = tmp_path / "root"
    root.mkdir()
    shutil.copy(slides / "s1.tif", root / "good.tif")
    (root / "notes.tif").write_text("not a slide\n")
    (root / "empty.tif").write_bytes(b"")
    os.mkfifo(root / "pipe.tif")
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / "photo.png")
    (root / "broken.tif").write_bytes(b"II*\0" + bytes(range(256)) * 4)  # a TIFF header, then junk
    names = ["good.tif", "notes.tif", "empty.tif", "pipe.tif", "missing.tif", "photo.png", "broken.tif"]
    rows = [{**ROW, "path": n, "slide_id": f"S{i}", "patient_id": f"P{i}"} for i, n in enumerate(names)]
    table = one_table(tmp_path, root, rows)
    with pytest.raises(SlideError) as err:
        tile(tmp_path, root, {"internal": table})
    text = str(err.value)
    assert text.startswith("6 slide(s) cannot be tiled; nothing was tiled.")
    assert "notes.tif': not a whole-slide image" in text
    assert "empty.tif': is empty" in text
    assert "pipe.tif': is a named pipe (FIFO), not a file" in text  # refused from stat, never opened
    assert "missing.tif': does not exist" in text
    assert "photo.png': not a whole-slide image" in text
    assert "broken.tif': not a whole-slide image that openslide or tiffslide can read" in text
    assert "good.tif" not in text
    assert not any((tmp_path / "out").iterdir())


def test_a_symlink_out_of_the_slide_root_is_refused(tmp_path, slides):
    root = tmp_path / "root"
    root.mkdir()
    os.symlink(slides / "s1.tif", root / "link.tif")
    table = one_table(tmp_path, root, [{**ROW, "path": "link.tif"}])
    with pytest.raises(SlideError, match="resolves outside tile.slide_root"):
        tile(tmp_path, root, {"internal": table})


def test_hostile_slide_table_strings_are_listed_escaped(tmp_path, slides):
    rows = [
        {**ROW, "slide_id": "S1\x1b[31mRED", "site": "site_a"},
        {**ROW, "path": "s2.tif", "slide_id": "S1\x1b[31mRED"},   # the same slide twice
        {**ROW, "path": "../s1.tif", "slide_id": "S3"},           # leaves the root
        {**ROW, "path": "/etc/passwd", "slide_id": "S4"},         # absolute
        {**ROW, "path": "s1.tif", "slide_id": "S5", "label": "=HYPERLINK(1)"},  # not a class
        {**ROW, "path": "nompp.tif", "slide_id": "S6", "regions": "1,2,3"},     # malformed
        {**ROW, "path": "x.tif", "slide_id": " S7"},                # spaces around an id
    ]
    table = one_table(tmp_path, slides, rows, columns=[*ROW, "regions"])
    with pytest.raises(SlideTableError) as err:
        tile(tmp_path, slides, {"internal": table})
    text = str(err.value)
    assert "\x1b" not in text and "\\x1b[31mRED" in text
    for rule in ("duplicate_slide", "path_escapes_root", "path_absolute", "label_unknown",
                 "regions_malformed", "value_whitespace", "duplicate_path"):
        assert f"[{rule}]" in text, rule
    assert "nothing was tiled" in text


def test_a_slide_in_both_cohorts_and_reserved_columns_are_refused(tmp_path, slides):
    internal = one_table(tmp_path, slides, [ROW])
    external = one_table(tmp_path, slides, [{**ROW, "site": "site_c"}], name="external.csv")
    with pytest.raises(SlideTableError, match="slide_id 'S1' is in both the internal and the external"):
        tile(tmp_path, slides, {"internal": internal, "external": external})
    reserved = one_table(tmp_path, slides, [{**ROW, "x": "1"}], name="reserved.csv", columns=[*ROW, "x"])
    with pytest.raises(SlideTableError, match=r"\[column_reserved\] column 'x' is written by the tile stage"):
        tile(tmp_path, slides, {"internal": reserved}, out="o2", qc="q2")


def test_slide_folders_are_safe_and_distinct():
    names = {slide_folder(s) for s in ("../../etc", "a/b", "a_b", "a b", "", "..")}
    assert len(names) == 6
    assert all("/" not in n and not n.startswith(".") for n in names)


def test_open_slide_reads_levels_and_resolution(slides):
    with open_slide(str(slides / "s1.tif")) as s:
        assert s.backend == "openslide" and s.mpp == 0.25 and s.mpp_source == "metadata"
        assert s.dimensions == [(W, H), (W // 2, H // 2), (W // 4, H // 4)]
        assert s.read(0, 0, 0, 16, 8).shape == (8, 16, 3)


def test_the_overview_of_a_slide_without_small_levels_is_reduced_block_by_block(tmp_path):
    write_slide(tmp_path / "flat.tif", 1000, 700, mpp=0.5, levels=1, seed=4)
    with open_slide(str(tmp_path / "flat.tif")) as s:
        overview, scale = read_overview(s, 100, block=256)   # 10x10-pixel cells, blocks of 250
        whole = s.read(0, 0, 0, 1000, 700)
    want = np.asarray(Image.fromarray(whole).reduce(10))
    assert overview.shape == want.shape == (70, 100, 3)
    assert (overview == want).all()
    assert scale == (10.0, 10.0)
