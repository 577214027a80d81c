"""Input checks and small helpers of `MacenkoNormalizer` (arrays in, arrays out, sample, digest)."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Hashable, Sequence

import numpy as np
import torch
from torch import Tensor

Array = np.ndarray | Tensor


def is_array(obj: object) -> bool:
    return isinstance(obj, (np.ndarray, Tensor))


def as_tensor(data: Array, ndim: int, what: str) -> Tensor:
    """A uint8 torch view of a numpy array or tensor, with a checked (..., 3) shape."""
    if isinstance(data, np.ndarray):
        if not data.flags.writeable:
            data = data.copy()
        data = torch.from_numpy(np.ascontiguousarray(data))
    elif not isinstance(data, Tensor):
        raise TypeError(f"{what} must be a numpy array or a torch tensor, got {type(data).__name__}")
    if data.dtype != torch.uint8:
        raise TypeError(f"{what} must be uint8, got {data.dtype}")
    shape = "(N, H, W, 3)" if ndim == 4 else "(H, W, 3)"
    if data.ndim != ndim or data.shape[-1] != 3:
        raise ValueError(f"{what} must be shaped {shape} RGB, got {tuple(data.shape)}")
    return data.contiguous()


def slide_id_list(slide_ids: Sequence[Hashable] | None, n: int) -> list[Hashable] | None:
    """`slide_ids` as a list of n hashable ids (arrays and tensors by value), or None."""
    if slide_ids is None:
        return None
    if isinstance(slide_ids, (str, bytes)):
        raise TypeError("slide_ids must be a sequence of ids, one per patch, not a string")
    ids = slide_ids.tolist() if isinstance(slide_ids, (np.ndarray, Tensor)) else list(slide_ids)
    if len(ids) != n:
        raise ValueError(f"slide_ids must give one id per patch: got {len(ids)} for {n} patches")
    for sid in ids:
        if not isinstance(sid, Hashable):
            raise TypeError(f"slide_ids must be hashable, got {type(sid).__name__}")
    return ids


def strided_sample(pixels: Tensor, limit: int) -> Tensor:
    """At most `limit` pixels of (n, P, 3), evenly strided over all of them -> (1, S, 3)."""
    flat = pixels.reshape(-1, 3)
    return flat[:: max(1, math.ceil(len(flat) / limit))].unsqueeze(0)


def like(result: Tensor, template: Array) -> Array:
    return result.numpy() if isinstance(template, np.ndarray) else result


def image_sha256(image: Tensor) -> str:
    """sha256 of an image's shape ("HxWx3:") followed by its raw C-order uint8 bytes."""
    digest = hashlib.sha256("x".join(map(str, image.shape)).encode() + b":")
    digest.update(image.cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()
