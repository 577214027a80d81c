"""The model file: a state_dict plus plain metadata, loadable with `weights_only=True`."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import torch

from pathtrail.core.errors import PathTrailError
from pathtrail.core.files import write_bytes
from pathtrail.train.models import build_model


def write_model(state_dict: dict[str, torch.Tensor], metadata: dict[str, Any], path: str | Path) -> Path:
    buf = io.BytesIO()
    torch.save({"state_dict": {k: v.detach().cpu() for k, v in state_dict.items()}, "metadata": metadata}, buf)
    return write_bytes(buf.getvalue(), path)


def load_model_file(path: str | Path) -> dict[str, Any]:
    """`{"state_dict", "metadata"}` of a model file written by `write_model` (plain data only)."""
    p = Path(path)
    if not p.is_file():
        raise PathTrailError(f"model file {p} not found; run `dvc repro train`")
    return torch.load(p, map_location="cpu", weights_only=True)


def read_model(path: str | Path) -> tuple[torch.nn.Module, dict[str, Any]]:
    blob = load_model_file(path)
    meta = blob["metadata"]
    model = build_model(meta["arch"], meta["num_classes"], meta["width"], meta["dropout"], vit=meta.get("vit"))
    model.load_state_dict(blob["state_dict"])
    model.eval()
    return model, meta
