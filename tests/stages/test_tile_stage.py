"""The tile stage: outputs in place only on success, params checked, the README's dvc.yaml
fragment honest about the code it runs."""

from __future__ import annotations

import pytest
import yaml

from fake_pipeline import committed_params
from imports_graph import stage_code_deps
from pathtrail.core.errors import PathTrailError
from pathtrail.core.files import read_table
from pathtrail.pipeline import tile
from pathtrail.provenance.audit import read_entries
from slide_project import readme_tile_fragment
from synthetic_slides import write_slide_set
from wsi_helpers import slide_params


def readme_tile_stage() -> dict:
    return yaml.safe_load(readme_tile_fragment())["tile"]


def test_the_readme_tile_stage_depends_on_exactly_the_code_it_runs():
    stage = readme_tile_stage()
    assert stage["cmd"] == "python -m stages.tile"
    code = {d for d in stage["deps"] if d.startswith(("stages", "src/"))}
    assert code == stage_code_deps("tile")
    assert {"${tile.slide_root}", "${tile.internal_slides}", "${tile.external_slides}"} <= set(stage["deps"])
    outs = [o if isinstance(o, str) else next(iter(o)) for o in stage["outs"]]
    assert outs == ["data/raw", "reports/tiling.json", "reports/figures/tiling"]
    assert stage["params"] == ["execution", "tile", "data"]


def params_for(tmp_path, **tile_overrides):
    p = slide_params()
    p["runtime"]["num_workers"] = 0
    p["data"]["patch_size"] = 32
    p["tile"].update(mpp=1.0, **tile_overrides)
    return p


@pytest.fixture(scope="module")
def slide_folder(tmp_path_factory):
    return write_slide_set(tmp_path_factory.mktemp("slides") / "slides", internal_patients=2,
                           external_patients=2, width=768, height=512)


def test_the_stage_writes_patches_manifests_thumbnails_and_report(tmp_path, slide_folder):
    p = params_for(tmp_path, slide_root=str(slide_folder), internal_slides=str(slide_folder / "internal.csv"),
                   external_slides=str(slide_folder / "external.csv"))
    result = tile.run(p, tile.Paths(), trail=str(tmp_path / "trail.jsonl"))
    for cohort in ("internal", "external"):
        manifest = read_table(tmp_path / "data/raw" / f"{cohort}.csv")
        assert len(manifest) == result.report["totals"][cohort]["kept"] > 0
        assert (tmp_path / "data/raw" / manifest["path"].iloc[0]).is_file()
    assert len(list((tmp_path / "reports/figures/tiling").rglob("*.png"))) == 4
    assert (tmp_path / "reports/tiling.json").is_file()
    start, end = read_entries(tmp_path / "trail.jsonl")
    assert end["stage"] == "tile" and end["outcome"] == "ok"
    assert end["outputs"].keys() == {"data/raw", "reports/tiling.json", "reports/figures/tiling"}
    assert start["inputs"].keys() == {str(slide_folder), str(slide_folder / "internal.csv"),
                                      str(slide_folder / "external.csv")}


def test_a_failure_leaves_no_output_and_names_the_fix(tmp_path, slide_folder):
    bad = tmp_path / "bad.csv"
    bad.write_text("path,label,patient_id,slide_id,site\nnowhere.tif,tumour,P1,S1,site_a\n")
    p = params_for(tmp_path, slide_root=str(slide_folder), internal_slides=str(bad), external_slides=None)
    p["data"]["external_manifest"] = None
    with pytest.raises(PathTrailError, match="nowhere.tif': does not exist"):
        tile.run(p, tile.Paths(), trail=str(tmp_path / "trail.jsonl"))
    assert not list(tmp_path.rglob("*.png"))
    for out in ("data/raw", "reports/tiling.json", "reports/figures/tiling"):
        assert not (tmp_path / out).exists(), out


def test_manifests_elsewhere_than_the_stage_writes_are_refused(tmp_path, slide_folder):
    p = params_for(tmp_path, slide_root=str(slide_folder), internal_slides=str(slide_folder / "internal.csv"),
                   external_slides=str(slide_folder / "external.csv"))
    p["data"]["internal_manifest"] = "my/internal.csv"
    with pytest.raises(PathTrailError, match="data.internal_manifest is 'my/internal.csv' but the tile stage "
                       "writes 'data/raw/internal.csv'"):
        tile.run(p, tile.Paths(), trail=str(tmp_path / "trail.jsonl"))


def test_a_tile_params_typo_is_named(tmp_path):
    p = params_for(tmp_path)
    p["tile"]["mmp"] = 0.5
    with pytest.raises(PathTrailError, match="unknown params key.*'tile.mmp'"):
        tile.run(p, tile.Paths(), trail=str(tmp_path / "trail.jsonl"))


def test_the_demo_has_no_tile_section_and_slides_no_demo_section():
    demo, slides = committed_params(), slide_params()
    assert "tile" not in demo and "demo" in demo["data"]
    assert "demo" not in slides["data"] and slides["tile"]["assume_mpp"] is None
    assert {k: v for k, v in slides.items() if k not in ("data", "tile")} == {
        k: v for k, v in demo.items() if k != "data"}  # only the data source differs
