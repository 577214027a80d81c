"""Slide groups for scaling preprocessing out: shard k of n holds whole slides, picked by a stable hash.

A shard is named "k/n" (0 <= k < n). A slide belongs to shard `sha256(slide_id) mod n`: the same
slide lands in the same shard on every machine, Python version and run (no `hash()` salt), and a
slide is never split, which per-slide stain estimates need. Sharded stages run as independent DVC
stages (`foreach` over k); a merge stage combines their outputs into exactly what the unsharded
stage writes (README, "Scaling out preprocessing"; tests/e2e/test_sharded_normalize.py).
"""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd

from pathtrail.core.errors import PathTrailError


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """"k/n" as (k, n); None stays None (no sharding). A malformed value is an error naming it."""
    if text is None:
        return None
    k, sep, n = str(text).partition("/")
    if sep and k.strip().isdigit() and n.strip().isdigit() and 0 <= int(k) < int(n):
        return int(k), int(n)
    raise PathTrailError(f"--shard {str(text)!r}: expected k/n with 0 <= k < n (e.g. --shard 0/4 for the "
                         "first of four shards)")


def shard_of(slide_ids: pd.Series | list[str], n: int) -> np.ndarray:
    """The shard (0..n-1) of each slide id: the first 8 bytes of its UTF-8 sha256, modulo n."""
    unique, inverse = np.unique(np.asarray(slide_ids, dtype=str), return_inverse=True)
    per_slide = [int.from_bytes(hashlib.sha256(s.encode()).digest()[:8], "big") % n for s in unique]
    return np.asarray(per_slide, dtype=np.int64)[inverse.reshape(-1)]


def select_shard(table: pd.DataFrame, shard: tuple[int, int] | None) -> pd.DataFrame:
    """The rows of `table` whose slide lies in `shard` (order kept); all rows when `shard` is None."""
    if shard is None:
        return table
    k, n = shard
    if len(table) == 0:
        return table
    return table[shard_of(table["slide_id"], n) == k]


def shard_name(shard: tuple[int, int]) -> str:
    return f"{shard[0]}/{shard[1]}"
