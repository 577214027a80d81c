"""Time `PatchStore` item access: index arrays vs the DataFrame lookups they replaced.

    python bench/store.py [--patches 20000] [--size 64] [--out bench/results/store.json]

Writes a synthetic store with `StoreWriter` in a temporary folder, then reads every patch in a
shuffled order through `PatchStore.patch` (what a DataLoader worker does per item) and through the
former lookup (`index.at[row, "shard"]`, `index.at[row, "offset"]`), interleaved, and checks that
both return the same bytes. Both sides run in this process, so other load on the machine moves
them together; the medians over repeats are recorded. Target: a few microseconds per item.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from pathtrail.core.files import write_json
from pathtrail.data.store import StoreWriter, open_store

_MAPS: dict[int, np.ndarray] = {}


def dataframe_patch(store, row: int) -> np.ndarray:
    """The former item access: two DataFrame lookups, then a slice of the np.memmap, copied."""
    shard, offset = int(store.index.at[row, "shard"]), int(store.index.at[row, "offset"])
    arr = _MAPS.get(shard)
    if arr is None:
        arr = np.load(store.root / f"shard_{shard:05d}.npy", mmap_mode="r")
        _MAPS[shard] = arr
    return np.array(arr[offset])


def write_store(root: Path, patches: int, size: int, shard_size: int) -> None:
    rng = np.random.default_rng(0)
    writer = StoreWriter(root, shard_size, (size, size, 3))
    for start in range(0, patches, 1024):
        n = min(1024, patches - start)
        rows = pd.DataFrame({"path": [f"p/{i:07d}.png" for i in range(start, start + n)],
                             "label": rng.integers(0, 2, n)})
        writer.add(rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8), rows)
    writer.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patches", type=int, default=20_000)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--shard-size", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default="bench/results/store.json")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        write_store(Path(tmp), args.patches, args.size, args.shard_size)
        store = open_store(tmp)
        order = np.random.default_rng(1).permutation(args.patches)
        for row in order[:64]:  # warm: maps open, pages cached
            assert np.array_equal(store.patch(int(row)), dataframe_patch(store, int(row)))
        sides = {"arrays": store.patch, "dataframe": lambda r: dataframe_patch(store, r)}
        micros: dict[str, list[float]] = {name: [] for name in sides}
        for _ in range(args.repeats):
            for name, get in sides.items():
                started = time.perf_counter()
                for row in order:
                    get(int(row))
                micros[name].append((time.perf_counter() - started) / args.patches * 1e6)
    arrays, frame = statistics.median(micros["arrays"]), statistics.median(micros["dataframe"])
    _MAPS.clear()
    report = {
        "patches": args.patches,
        "patch_shape": [args.size, args.size, 3],
        "shard_size": args.shard_size,
        "repeats": args.repeats,
        "us_per_item_arrays_median": round(arrays, 2),
        "us_per_item_dataframe_median": round(frame, 2),
        "us_per_item_arrays_all": [round(v, 2) for v in micros["arrays"]],
        "us_per_item_dataframe_all": [round(v, 2) for v in micros["dataframe"]],
        "speedup": round(frame / arrays, 1),
        "same_bytes": True,
        "load_average_1min": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
    }
    write_json(report, args.out)
    print(f"PatchStore.patch: {arrays:.1f} us per item (arrays) vs {frame:.1f} us (DataFrame "
          f"lookups), {report['speedup']}x -> {args.out}")


if __name__ == "__main__":
    main()
