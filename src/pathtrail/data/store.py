"""The normalized patch store: a few sharded uint8 arrays plus an index table.

A handful of `.npy` shards (not one file per patch) keeps DVC hashing fast at 100k+ patches, and
memory-mapped reads make it cheap for DataLoader workers. Shards are written one at a time as
patches stream in, so memory stays bounded by one shard whatever the cohort size.
"""

from __future__ import annotations

import io as _io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from pathtrail.core.files import read_table, write_bytes, write_csv

INDEX = "index.csv"


def load_rgb(path: str | Path, size: int | None = None) -> np.ndarray:
    """Decode one patch as uint8 (H, W, 3); grayscale/RGBA are converted, `size` resizes if needed."""
    with Image.open(path) as img:
        img = img.convert("RGB")
        if size is not None and img.size != (size, size):
            img = img.resize((size, size), Image.Resampling.BILINEAR)
        return np.asarray(img, dtype=np.uint8)


class StoreWriter:
    """Append patches in order; call `close()` to write the last shard and the index."""

    def __init__(self, root: Path, shard_size: int, patch_shape: tuple[int, int, int]) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.shard_size = shard_size
        self.buffer = np.empty((shard_size, *patch_shape), dtype=np.uint8)
        self.fill = 0
        self.shard = 0
        self.rows: list[pd.DataFrame] = []

    def add(self, patches: np.ndarray, rows: pd.DataFrame) -> None:
        if len(patches) != len(rows):
            raise ValueError("patches and rows differ in length")
        rows = rows.reset_index(drop=True)
        start = 0
        while start < len(patches):
            take = min(self.shard_size - self.fill, len(patches) - start)
            self.buffer[self.fill : self.fill + take] = patches[start : start + take]
            part = rows.iloc[start : start + take].copy()
            part.insert(0, "offset", np.arange(self.fill, self.fill + take))
            part.insert(0, "shard", self.shard)
            self.rows.append(part)
            self.fill += take
            start += take
            if self.fill == self.shard_size:
                self._flush()

    def _flush(self) -> None:
        if self.fill == 0:
            return
        buf = _io.BytesIO()
        np.save(buf, self.buffer[: self.fill], allow_pickle=False)
        write_bytes(buf.getvalue(), self.root / f"shard_{self.shard:05d}.npy")
        self.shard += 1
        self.fill = 0

    def close(self) -> pd.DataFrame:
        self._flush()
        index = pd.concat(self.rows, ignore_index=True) if self.rows else pd.DataFrame()
        write_csv(index, self.root / INDEX)
        return index


@dataclass
class PatchStore:
    """Read side: `index` rows (by position) point at (shard, offset); arrays are memory-mapped lazily.

    Item access reads two int64 arrays taken from the index once, not the DataFrame: a few
    microseconds per patch instead of tens (`bench/store.py`).
    """

    root: Path
    index: pd.DataFrame

    def __post_init__(self) -> None:
        self._shards: dict[int, np.ndarray] = {}
        self._row_of = {p: i for i, p in enumerate(self.index["path"])}
        self._shard_of = self.index["shard"].to_numpy(dtype=np.int64)
        self._offset_of = self.index["offset"].to_numpy(dtype=np.int64)

    def __getstate__(self) -> dict:
        # DataLoader workers re-open memory maps themselves instead of pickling them.
        return {"root": self.root, "index": self.index}

    def __setstate__(self, state: dict) -> None:
        self.root, self.index = state["root"], state["index"]
        self.__post_init__()

    def rows_for(self, paths: pd.Series | list[str]) -> np.ndarray:
        """Store row numbers of `paths`; a path missing from the store is an error naming it."""
        try:
            return np.array([self._row_of[p] for p in paths], dtype=np.int64)
        except KeyError as e:
            raise KeyError(f"patch {e.args[0]!r} is not in the store at {self.root}; rerun `dvc repro normalize`") from None

    def patch(self, row: int) -> np.ndarray:
        shard, offset = int(self._shard_of[row]), int(self._offset_of[row])
        arr = self._shards.get(shard)
        if arr is None:
            # a plain ndarray over the map: np.memmap's per-slice bookkeeping costs microseconds
            arr = np.load(self.root / f"shard_{shard:05d}.npy", mmap_mode="r").view(np.ndarray)
            self._shards[shard] = arr
        return arr[offset].copy()  # a private, writable copy

    def patches(self, rows: np.ndarray) -> np.ndarray:
        return np.stack([self.patch(int(r)) for r in rows]) if len(rows) else np.empty((0,))


def open_store(root: str | Path) -> PatchStore:
    root = Path(root)
    if not (root / INDEX).is_file():
        raise FileNotFoundError(f"no patch store at {root} (missing {INDEX}); run `dvc repro normalize`")
    return PatchStore(root, read_table(root / INDEX))
