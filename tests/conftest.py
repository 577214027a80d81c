"""Shared fixtures: the repo root, small params, and an isolated audit trail per test."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("DVC_NO_ANALYTICS", "1")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _isolated_trail(tmp_path, monkeypatch):
    """No test ever appends to the repository's own audit trail."""
    monkeypatch.setenv("PATHTRAIL_AUDIT_TRAIL", str(tmp_path / "audit" / "trail.jsonl"))


@pytest.fixture
def repo_params() -> dict:
    from fake_pipeline import committed_params

    return committed_params()


def tiny_params(tmp_path: Path, **overrides) -> dict:
    """The committed params shrunk to a seconds-long run, with data paths inside tmp_path."""
    from fake_pipeline import committed_params

    p = committed_params()
    d = p["data"]
    d["demo"].update(patients_per_site=8, external_patients=8, patches_per_patient=6, max_slides_per_patient=2)
    d["data_root"] = str(tmp_path / "data/raw")
    d["internal_manifest"] = str(tmp_path / "data/raw/internal.csv")
    d["external_manifest"] = str(tmp_path / "data/raw/external.csv")
    p["runtime"]["num_workers"] = 0
    d["min_per_class"] = 2
    p["train"].update(epochs=2, batch_size=16)
    p["eval"]["n_bootstrap"] = 200
    p["compile_check"]["n_bootstrap"] = 200
    p["stain"]["fit_max_patches"] = 16
    p["card"]["intended_use"] = str(REPO / p["card"]["intended_use"])
    for dotted, value in overrides.items():
        node = p
        *parents, leaf = dotted.split(".")
        for k in parents:
            node = node[k]
        node[leaf] = value
    return p


def write_params(tmp_path: Path, params: dict) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path
