"""Time data validation end to end on a 20,000-row manifest of 64x64 PNG patches.

    python bench/validate.py [--rows 20000] [--out bench/results/validate.json] [--workers N]

End to end = what `pathtrail validate` does after start-up: read and schema-check the manifest,
check every file (resolve, read, sha256, full PNG decode, mode, size, tissue fraction), the cohort
checks, the report and its text form. Target: < 60 s on the 2-core CI machine. The patches are
freshly written, so they are in the page cache: this measures CPU cost, not a cold disk.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import pandera
import PIL
from PIL import Image

from pathtrail.core.files import write_json
from pathtrail.core.hashing import canonical_json
from pathtrail.data.images import default_workers
from pathtrail.data.report import format_report
from pathtrail.data.validation import Cohort, Rules, validate_cohorts

TARGET_SECONDS = 60.0
PATCHES_PER_PATIENT = 20


def synthetic_patch(index: int, size: int) -> np.ndarray:
    """A smooth pink/purple texture with pixel noise: compresses like real H&E (~7-10 kB PNG)."""
    rng = np.random.default_rng(index)
    coarse = rng.random((size // 8 + 1, size // 8 + 1, 1))
    smooth = np.kron(coarse, np.ones((8, 8, 1)))[:size, :size]
    base = np.array([200.0, 120.0, 190.0]) + 50 * smooth * np.array([1.0, 1.5, 0.8])
    return np.clip(base + rng.normal(0, 12, (size, size, 3)), 0, 255).astype(np.uint8)


def write_corpus(root: Path, rows: int, size: int, workers: int) -> Path:
    def write(i: int) -> list:
        patient = i // PATCHES_PER_PATIENT
        rel = f"site_{patient % 3}/P{patient:05d}/{i:06d}.png"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(synthetic_patch(i, size)).save(root / rel, compress_level=6)
        return [rel, ["benign", "tumour"][patient % 2], f"P{patient:05d}",
                f"P{patient:05d}-S{i % 2}", f"site_{patient % 3}"]

    with ThreadPoolExecutor(workers) as pool:
        table = list(pool.map(write, range(rows), chunksize=256))
    manifest = root / "internal.csv"
    pd.DataFrame(table, columns=["path", "label", "patient_id", "slide_id", "site"]).to_csv(
        manifest, index=False)
    return manifest


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--out", default="bench/results/validate.json")
    args = parser.parse_args(argv)
    workers = args.workers or default_workers()

    with tempfile.TemporaryDirectory(prefix="pathtrail-bench-") as tmp:
        root = Path(tmp)
        started = time.perf_counter()
        manifest = write_corpus(root, args.rows, args.size, workers)
        generate = time.perf_counter() - started
        mb = sum(p.stat().st_size for p in root.rglob("*.png")) / 1e6

        started = time.perf_counter()
        result = validate_cohorts([Cohort("internal", manifest, root)],
                                  Rules(("benign", "tumour"), args.size), workers=workers)
        format_report(result.report)
        canonical_json(result.report)
        seconds = time.perf_counter() - started

    report = {
        "rows": args.rows,
        "patch_size": args.size,
        "png_megabytes": round(mb, 1),
        "workers": workers,
        "cpus": len(os.sched_getaffinity(0)),
        "seconds": round(seconds, 2),
        "ms_per_image": round(1000 * seconds / args.rows, 3),
        "images_per_second": round(args.rows / seconds, 1),
        "generate_seconds": round(generate, 2),
        "target_seconds": TARGET_SECONDS,
        "passed": seconds < TARGET_SECONDS and result.ok,
        "errors": len(result.errors),
        "warnings": len(result.warnings),
        "versions": {"python": platform.python_version(), "numpy": np.__version__,
                     "pandas": pd.__version__, "pandera": pandera.__version__,
                     "pillow": PIL.__version__},
        "machine": platform.machine(),
    }
    write_json(report, args.out)
    print(canonical_json(report), end="")


if __name__ == "__main__":
    main()
