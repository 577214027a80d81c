"""`pathtrail.pipeline.<stage>.run(params, paths)` works without argparse, DVC or a working folder,
and gives the same bytes as the stage entry point."""

from __future__ import annotations

import importlib
from dataclasses import fields
from pathlib import Path

import pytest

from conftest import tiny_params, write_params
from pathtrail.core.hashing import sha256_path
from pathtrail.pipeline import demo_data, normalize, split, stain_fit, validate
from pathtrail.provenance.audit import chain_problems, read_entries

FIRST_STAGES = (demo_data, validate, split, stain_fit, normalize)


def rooted(module, root: Path):
    """The stage's default paths, moved below `root`."""
    return module.Paths(**{f.name: str(root / f.default) if f.default else f.default
                           for f in fields(module.Paths)})


def test_runs_chain_in_any_folder_and_match_the_stages(tmp_path, monkeypatch):
    lib, cli = tmp_path / "lib", tmp_path / "cli"
    params = tiny_params(lib)
    trail = tmp_path / "lib_trail.jsonl"
    counts = demo_data.run(params, rooted(demo_data, lib), trail=str(trail))
    assert counts["internal"] > 0 and counts["external"] > 0
    result = validate.run(params, rooted(validate, lib), trail=str(trail))
    assert result.ok and len(result.tables["internal"]) == counts["internal"]
    summary = split.run(params, rooted(split, lib), trail=str(trail))
    assert sum(s["patches"] for s in summary.values()) == counts["internal"]
    reference = stain_fit.run(params, rooted(stain_fit, lib), trail=str(trail))
    assert reference["fit_paths"]
    report = normalize.run(params, rooted(normalize, lib), trail=str(trail))
    assert report["cohorts"]["internal"]["patches"] == counts["internal"]
    entries = read_entries(trail)
    assert chain_problems(entries) == [] and len(entries) == 2 * len(FIRST_STAGES)

    # the same stages through their entry points, in a working folder, give the same bytes
    cli.mkdir()
    monkeypatch.chdir(cli)
    write_params(cli, tiny_params(cli))
    for module in FIRST_STAGES:
        name = module.__name__.rsplit(".", 1)[1]
        importlib.import_module(f"stages.{name}").main(["--log-file", f"logs/{name}.jsonl"])
    for rel in ("data/raw", "data/validated", "data/split", "models/stain_reference.json", "data/store"):
        assert sha256_path(lib / rel) == sha256_path(cli / rel), rel


def test_a_run_reports_bad_params_by_key(tmp_path):
    from pathtrail.core.errors import PathTrailError

    params = tiny_params(tmp_path)
    params["data"]["split"]["val_fraction"] = 2.0
    with pytest.raises(PathTrailError, match=r"data\.split\.val_fraction"):
        split.run(params, rooted(split, tmp_path), trail=str(tmp_path / "t.jsonl"))
    assert read_entries(tmp_path / "t.jsonl") == []  # params are checked before the stage starts
