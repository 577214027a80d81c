"""Sharded normalize + store_merge, called as library functions: the merged outputs equal the
unsharded stage's bytes (per-slide scope here; the DVC `foreach` run in tests/e2e uses per-patch
scope), and an incomplete or inconsistent set of shards is refused by name."""

from __future__ import annotations

import shutil

import pytest

from conftest import tiny_params
from pathtrail.core.errors import PathTrailError
from pathtrail.core.files import read_json, read_table, write_json
from pathtrail.core.hashing import sha256_path
from pathtrail.data.shards import parse_shard, select_shard, shard_of
from pathtrail.pipeline import demo_data, normalize, split, stain_fit, store_merge, validate


def test_shard_of_is_a_fixed_function_of_the_slide_id():
    # sha256(slide_id)[:8] big-endian mod n: the same on every machine and Python (no hash() salt)
    assert shard_of(["S-P0000-S1", "site_a-P0001-S2", "x"], 1000).tolist() == [252, 505, 876]
    assert shard_of(["S-P0000-S1", "site_a-P0001-S2", "x"], 4).tolist() == [0, 1, 0]


@pytest.mark.parametrize("text", ["3/3", "-1/2", "1", "a/b", "1/0", ""])
def test_a_malformed_shard_is_refused_by_name(text):
    with pytest.raises(PathTrailError, match="--shard"):
        parse_shard(text)


def test_select_shard_keeps_whole_slides(tmp_path):
    import pandas as pd

    table = pd.DataFrame({"slide_id": [f"s{i % 7}" for i in range(50)], "path": [f"p{i}" for i in range(50)]})
    parts = [select_shard(table, (k, 3)) for k in range(3)]
    assert sum(map(len, parts)) == 50 and all(len(p) for p in parts)
    assert all(not set(a.slide_id) & set(b.slide_id) for i, a in enumerate(parts) for b in parts[i + 1:])
    assert select_shard(table, None) is table


def shard_paths(k: int) -> normalize.Paths:
    return normalize.Paths(shard=f"{k}/3", out=f"shards/{k}/store", report=f"shards/{k}/normalization.json",
                           figure=f"shards/{k}/figure.png")


def test_merged_shards_equal_the_unsharded_store_and_bad_sets_are_refused(tmp_path):
    params = tiny_params(tmp_path, **{"stain.scope": "slide", "stain.shard_size": 40})
    trail = str(tmp_path / "trail.jsonl")
    for module in (demo_data, validate, split, stain_fit):
        module.run(params, module.Paths(), trail=trail)
    normalize.run(params, normalize.Paths(out="one/store", report="one/report.json", figure="one/fig.png"), trail=trail)
    for k in range(3):
        assert normalize.run(params, shard_paths(k), trail=trail)["shard"] == f"{k}/3"
    merged = store_merge.Paths(shards="shards", out="merged/store", report="merged/report.json", figure="merged/fig.png")
    report = store_merge.run(params, merged, trail=trail)
    for rel in ("store", "report.json", "fig.png"):
        assert sha256_path(tmp_path / "merged" / rel) == sha256_path(tmp_path / "one" / rel), rel
    assert report["cohorts"]["internal"]["patches"] == len(read_table("data/validated/internal.csv"))

    again = store_merge.Paths(shards="shards", out="again/store", report="again/report.json", figure="again/fig.png")
    bad = read_json("shards/1/normalization.json")
    write_json({**bad, "scope": "patch"}, "shards/1/normalization.json")
    with pytest.raises(PathTrailError, match=r"shards/1/normalization.json: scope is 'patch', expected 'slide'"):
        store_merge.run(params, again, trail=trail)
    write_json(bad, "shards/1/normalization.json")
    shutil.rmtree("shards/2")
    with pytest.raises(PathTrailError, match=r"missing: \[2\]"):
        store_merge.run(params, again, trail=trail)
    assert not (tmp_path / "again").exists()  # nothing partial


def test_the_readme_fragment_lists_exactly_the_code_each_stage_runs():
    import re

    import yaml

    from conftest import REPO
    from imports_graph import stage_code_deps

    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text[text.index("### Scaling out preprocessing"):]  # the block tests/e2e runs with DVC
    stages = yaml.safe_load(re.search(r"```yaml\n(.*?)```", section, re.DOTALL).group(1))["stages"]
    specs = {"normalize": stages["normalize_shard"]["do"], "store_merge": stages["store_merge"]}
    for name, spec in specs.items():
        code = {d for d in spec["deps"] if isinstance(d, str) and d.startswith(("stages", "src/"))}
        assert code == stage_code_deps(name), name
        assert spec["cmd"].startswith(f"python -m stages.{name}")
