"""Peak memory and time of tiling one large slide: the memory follows the patch batch, not the slide.

    python bench/tile.py [--size 20000] [--mpp 0.5] [--patch-size 224] [--twice] [--out bench/results/tile.json]

Writes a synthetic pyramidal tiled TIFF (`tests/synthetic_slides.py`: real H&E texture,
background, a pen stroke, a blurred region; 0.25 µm/px, JPEG tiles, levels down to < 2,048 px),
then tiles it at `--mpp` in a separate process (`pathtrail.wsi.tiling.tile_slide_table` with the
committed `data=slides` params, one worker), whose peak RSS is read from the kernel
(`ru_maxrss` of the child). Target: < 1 GB for a 20,000 x 20,000 slide (1.2 GB of pixels at
level 0). `--twice` tiles it a second time and checks that the two outputs are the same bytes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # the synthetic slide writer the tests use

from pathtrail.core.files import write_json
from synthetic_slides import write_slide

TARGET_MB = 1024

CHILD = r"""
import json, sys, time
sys.path.insert(0, sys.argv[1] + "/tests")
from wsi_helpers import slide_params, tile_params
from pathtrail.core.hashing import sha256_path
from pathtrail.wsi.tiling import tile_slide_table
from pathlib import Path
work, mpp, patch = Path(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
out, qc = work / sys.argv[5], work / (sys.argv[5] + "_qc")
out.mkdir(); qc.mkdir()
start = time.perf_counter()
result = tile_slide_table({"internal": work / "slides.csv"}, work, out, tile_params(mpp=mpp),
                          classes=slide_params()["data"]["classes"], patch_size=patch, qc_dir=qc)
seconds = time.perf_counter() - start
print(json.dumps({"seconds": seconds, "slide": result.report["slides"][0],
                  "sha256": sha256_path(out), "qc_sha256": sha256_path(qc)}))
"""


def tile_in_child(work: Path, mpp: float, patch: int, name: str) -> dict:
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    done = subprocess.run([sys.executable, "-c", CHILD, str(REPO), str(work), str(mpp), str(patch), name],
                          capture_output=True, text=True, check=True)
    peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    result = json.loads(done.stdout.strip().splitlines()[-1])
    # ru_maxrss of the children is the largest of any child so far: the first run is the only one
    result["peak_rss_mb"] = round(peak_kb / 1024, 1) if peak_kb > before else None
    return result


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=20_000)
    p.add_argument("--mpp", type=float, default=0.5)
    p.add_argument("--patch-size", type=int, default=224)
    p.add_argument("--twice", action="store_true")
    p.add_argument("--out", default=str(REPO / "bench/results/tile.json"))
    args = p.parse_args(argv)
    levels = 1
    while args.size / 2 ** (levels - 1) > 2048:
        levels += 1
    with tempfile.TemporaryDirectory(prefix="pathtrail-bench-tile-") as tmp:
        work = Path(tmp)
        start = time.perf_counter()
        write_slide(work / "slide.tif", args.size, args.size, mpp=0.25, levels=levels, compression="jpeg")
        write_seconds = time.perf_counter() - start
        (work / "slides.csv").write_text("path,label,patient_id,slide_id,site\n"
                                         "slide.tif,tumour,P1,S1,site_a\n")
        first = tile_in_child(work, args.mpp, args.patch_size, "a")
        second = tile_in_child(work, args.mpp, args.patch_size, "b") if args.twice else None
        slide_bytes = os.path.getsize(work / "slide.tif")
    s = first["slide"]
    results = {
        "slide": {"width": args.size, "height": args.size, "mpp": 0.25, "levels": levels,
                  "compression": "jpeg", "file_mb": round(slide_bytes / 2**20, 1),
                  "level0_pixels_mb": round(args.size * args.size * 3 / 2**20, 1),
                  "write_seconds": round(write_seconds, 1)},
        "tile": {"mpp": args.mpp, "patch_size": args.patch_size, "seconds": round(first["seconds"], 1),
                 "grid": s["grid"], "kept": s["kept"], "rejected": s["rejected"], "level": s["level"],
                 "peak_rss_mb": first["peak_rss_mb"], "target_mb": TARGET_MB,
                 "passed": first["peak_rss_mb"] is not None and first["peak_rss_mb"] < TARGET_MB},
        "identical_twice": None if second is None else (first["sha256"], first["qc_sha256"]) == (
            second["sha256"], second["qc_sha256"]),
        "machine": {"cpus": os.cpu_count(), "load_avg_1min": round(os.getloadavg()[0], 2),
                    "python": platform.python_version(), "platform": platform.platform()},
    }
    write_json(results, args.out)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
