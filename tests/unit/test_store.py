"""The patch store: rows written across shard boundaries read back by position, as private copies."""

from __future__ import annotations

import pickle

import numpy as np
import pandas as pd
import pytest

from pathtrail.data.store import StoreWriter, open_store


def _write(root, n=23, shard_size=5, chunk=4):
    rng = np.random.default_rng(0)
    patches = rng.integers(0, 256, (n, 4, 4, 3), dtype=np.uint8)
    writer = StoreWriter(root, shard_size, (4, 4, 3))
    for start in range(0, n, chunk):
        part = slice(start, start + chunk)
        writer.add(patches[part], pd.DataFrame({"path": [f"p{i:03d}.png" for i in range(n)][part]}))
    writer.close()
    return patches


def test_every_row_reads_back_its_patch(tmp_path):
    patches = _write(tmp_path)
    store = open_store(tmp_path)
    assert len(list(tmp_path.glob("shard_*.npy"))) == 5
    order = np.random.default_rng(1).permutation(len(patches))
    for row in order:
        got = store.patch(int(row))
        assert np.array_equal(got, patches[row]) and got.flags.writeable and type(got) is np.ndarray
    got[:] = 0  # a private copy: the store is unchanged
    assert np.array_equal(store.patch(int(order[-1])), patches[order[-1]])
    assert np.array_equal(store.patches(np.array([3, 0, 22])), patches[[3, 0, 22]])


def test_pickled_store_reopens_its_maps_and_names_missing_paths(tmp_path):
    patches = _write(tmp_path)
    store = open_store(tmp_path)
    store.patch(0)
    clone = pickle.loads(pickle.dumps(store))
    assert clone._shards == {}
    rows = clone.rows_for(["p007.png", "p021.png"])
    assert np.array_equal(clone.patches(rows), patches[[7, 21]])
    with pytest.raises(KeyError, match="'nope.png' is not in the store"):
        clone.rows_for(["nope.png"])
