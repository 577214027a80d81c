"""Local initial weights (`model.weights_path`): pretrained or earlier weights, never downloaded.

The file is read once, hashed (its sha256 goes to models/model.pt's `local_weights_sha256`, the
train stage's trail entry and the card) and loaded from those same bytes with `weights_only=True`,
so it can hold tensors and plain containers only, never code. It must fit the model: every weight
of the backbone present with its shape. Only the classifier (`models.HEADS`) may be absent or of
another shape (weights pretrained for another number of classes); it then keeps its random
initialisation. Anything else is refused with what differs (tests/unit/test_weights.py).
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pathtrail.core.errors import PathTrailError
from pathtrail.core.hashing import sha256_bytes

FIX = ("save it with torch.save(model.state_dict(), path) from a model built as model.arch / "
       "model.width / model.vit say, or set model.weights_path=null")


@dataclass(frozen=True)
class LoadedWeights:
    sha256: str
    loaded: int                                         # tensors taken from the file
    head_kept: list[str] = field(default_factory=list)  # classifier keys left at their initialisation


def read_weights_file(path: str | Path) -> tuple[dict[str, torch.Tensor], str]:
    """(state_dict, sha256) of a local weights file; a clear error for anything else."""
    p = Path(path)
    if not p.is_file():
        raise PathTrailError(f"model.weights_path: {p} is not a file (weights are never downloaded); "
                             "put the weights file there, or set model.weights_path=null")
    data = p.read_bytes()
    try:
        obj: Any = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - whatever the file is, the finding is the same
        raise PathTrailError(
            f"model.weights_path: {p} cannot be read with torch.load(weights_only=True) "
            f"({type(exc).__name__}): it is not a PyTorch weights file, or it holds pickled objects "
            f"other than tensors, which are never loaded; {FIX}") from None
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]  # a models/model.pt of this pipeline, or a training checkpoint
    if not (isinstance(obj, Mapping) and obj
            and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())):
        raise PathTrailError(f"model.weights_path: {p} holds no state_dict (a mapping of parameter names to "
                             f"tensors); {FIX}")
    state = dict(obj)
    if all(k.startswith("module.") for k in state):  # saved from a DDP-wrapped model
        state = {k.removeprefix("module."): v for k, v in state.items()}
    return state, sha256_bytes(data)


def load_local_weights(model: nn.Module, path: str | Path, *, arch: str, head: str | None) -> LoadedWeights:
    """Load `path` into `model` (built as `arch`, classifier keys starting with `head`)."""
    state, sha = read_weights_file(path)
    own = model.state_dict()

    def in_head(key: str) -> bool:
        return head is not None and key.startswith(head)

    unexpected = sorted(k for k in state if k not in own and not in_head(k))
    reshaped = sorted(k for k in state if k in own and state[k].shape != own[k].shape and not in_head(k))
    missing = sorted(k for k in own if k not in state and not in_head(k)
                     and not k.endswith("num_batches_tracked"))
    if unexpected or reshaped or missing:
        parts = []
        if unexpected:
            parts.append(f"{len(unexpected)} weight(s) the model lacks ({_first(unexpected)})")
        if reshaped:
            shapes = ", ".join(f"{k}: {tuple(state[k].shape)} in the file, {tuple(own[k].shape)} in the model"
                               for k in reshaped[:3])
            parts.append(f"{len(reshaped)} of another shape ({shapes})")
        if missing:
            parts.append(f"{len(missing)} the file lacks ({_first(missing)})")
        raise PathTrailError(f"model.weights_path: {path} does not fit model.arch={arch!r}: {'; '.join(parts)}. "
                             f"Only the classifier ({head or 'none'}) may differ; {FIX}")
    take = {k: v for k, v in state.items() if k in own and v.shape == own[k].shape}
    model.load_state_dict(take, strict=False)
    return LoadedWeights(sha, len(take), sorted(k for k in own if k not in take))


def _first(keys: list[str], n: int = 5) -> str:
    more = f", … {len(keys) - n} more" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more
