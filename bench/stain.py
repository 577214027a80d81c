"""Time Macenko stain normalization: torchstain's per-patch loop vs pathtrail's batched kernels.

    python bench/stain.py [--out bench/results/stain.json] [--data auto|he|demo]
                          [--sizes 64 224] [--patches 512] [--ts-patches 128] [--repeats 7]
                          [--devices cpu cuda] [--threads 1]

Patches are tiles of the real H&E scan tests/data/he/source.png (reference: a 256x256 crop of
target.png) or, without it, synthetic demo patches (reference: internal-site patches). For each
patch size and device it times, after one warm-up, --repeats interleaved rounds of:
torchstain's TorchMacenkoNormalizer called patch by patch (on the first --ts-patches patches;
patches it raises on are timed too and counted as failures), MacenkoNormalizer.normalize on the
whole batch (per-patch estimates) and MacenkoNormalizer.normalize_slide (one estimate). Each
round times the three back to back, so the speedups (medians of the per-round ratios) compare
the sides under the same load: on a shared machine absolute figures move, ratios much less.
Torch runs on --threads threads (default 1, as the execution contract). Agreement: mean / max
absolute pixel difference against torchstain on the patches torchstain does not fail, over all of
them and over those pathtrail does not fall back on, and the max difference from the float64
evaluation of each patch's own map. The kernels' compile (or cache load) time is recorded. The
defaults take about a minute on a 2-core machine. The JSON report (sorted keys) is written
atomically.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from pathtrail.stain import MacenkoNormalizer, fast, ops

REPO = Path(__file__).resolve().parents[1]
HE_DIR = REPO / "tests/data/he"
REF_BOX = (100, 150, 256)  # y, x, size of the reference crop of target.png


# ------------------------------------------------------------------------------------- data
def _load_png(path: Path) -> np.ndarray:
    from PIL import Image

    return np.ascontiguousarray(np.asarray(Image.open(path).convert("RGB")))


def _variants(tiles: np.ndarray, n: int) -> np.ndarray:
    """`n` patches: the tiles, then their rotations and flips (same stain, other pixel order)."""
    out, k = [tiles], 0
    while sum(len(t) for t in out) < n:
        k += 1
        rotated = np.rot90(tiles, k % 4, axes=(1, 2))
        out.append(np.ascontiguousarray(rotated[:, ::-1] if k >= 4 else rotated))
    return np.concatenate(out)[:n]


def he_data(size: int, n: int) -> tuple[np.ndarray, np.ndarray, str]:
    source = _load_png(HE_DIR / "source.png")
    y, x, s = REF_BOX
    reference = _load_png(HE_DIR / "target.png")[y:y + s, x:x + s].copy()
    step = max(8, size // 4)
    h, w, _ = source.shape
    tiles = np.stack([source[i:i + size, j:j + size] for i in range(0, h - size + 1, step)
                      for j in range(0, w - size + 1, step)])
    return _variants(tiles, n), reference, f"he: tiles of tests/data/he/source.png, step {step}"


def demo_data(size: int, n: int) -> tuple[np.ndarray, np.ndarray, str]:
    from pathtrail.config.sections import DemoParams
    from pathtrail.data.demo import generate_cohorts

    per_patient = 16
    patients = max(2, -(-n // (2 * per_patient)))
    params = DemoParams(seed=0, patch_size=size, internal_sites=["site_a"], external_site="site_x",
                        patients_per_site=patients, external_patients=patients,
                        patches_per_patient=per_patient, max_slides_per_patient=2)
    cohorts = generate_cohorts(params)
    internal = np.stack([p.image for p in cohorts["internal"]])
    patches = np.concatenate([internal, np.stack([p.image for p in cohorts["external"]])])
    rng = np.random.default_rng(0)
    patches = patches[rng.permutation(len(patches))][:n]
    # the reference: internal patches pooled into one image
    return patches, np.concatenate(list(internal[:16])), "demo: synthetic internal + external"


# ------------------------------------------------------------------------------------ timing
def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def interleaved(sides: dict[str, Callable[[], object]], repeats: int, device: str
                ) -> dict[str, list[float]]:
    """Seconds of each side in `repeats` rounds (after one warm-up round), the sides run back to
    back within a round, so that a round's ratios are taken under the same machine load."""
    seconds: dict[str, list[float]] = {name: [] for name in sides}
    for round_ in range(repeats + 1):
        for name, fn in sides.items():
            started = time.perf_counter()
            fn()
            _sync(device)
            if round_:
                seconds[name].append(time.perf_counter() - started)
    return seconds


def float64_max_diff(norm: MacenkoNormalizer, x: torch.Tensor) -> int:
    """Max |normalize - trunc(clip(io * exp(-M @ OD), 0, 255))| in float64, M each patch's map."""
    flat = x.cpu().reshape(len(x), -1, 3)
    cache = norm._cache(flat.device)
    est = norm._estimate(flat, ops.Scratch())[1]
    ok = est.valid
    unmix = torch.where(ok[:, None, None], est.unmix, cache["ref_unmix"])
    max_conc = torch.where(ok[:, None], est.max_conc, cache["ref_max"])
    maps = ops.od_map(cache["ref_stains"], cache["ref_max"], unmix, max_conc)
    od = -torch.log((flat.double() + 1) / norm.io)
    want = (norm.io * torch.exp(-(od @ maps.transpose(1, 2)))).clamp(0, 255).to(torch.uint8)
    got = norm.normalize(x).cpu().reshape(want.shape)
    return int((got.int() - want.int()).abs().max()) if len(x) else 0


def timing(n: int, seconds: list[float]) -> dict:
    median, best = statistics.median(seconds), min(seconds)
    return {"seconds_median": round(median, 5), "seconds_min": round(best, 5),
            "seconds_all": [round(t, 5) for t in seconds],
            "patches_per_s": round(n / median, 1), "patches_per_s_best": round(n / best, 1)}


def torchstain_loop(patches: torch.Tensor, reference: torch.Tensor):
    """A function running torchstain patch by patch, and the per-patch results (None = raised)."""
    from torchstain.torch.normalizers.macenko import TorchMacenkoNormalizer

    ts = TorchMacenkoNormalizer()
    ts.fit(reference.permute(2, 0, 1))
    results: list[torch.Tensor | None] = [None] * len(patches)

    def run() -> None:
        for i, patch in enumerate(patches):
            try:
                results[i] = ts.normalize(I=patch.permute(2, 0, 1), Io=240, alpha=1, beta=0.15,
                                          stains=True)[0]
            except Exception:  # noqa: BLE001 - torchstain raises several kinds on blank patches
                results[i] = None

    return run, results


def bench_one(patches: np.ndarray, reference: np.ndarray, device: str, args) -> dict:
    x = torch.from_numpy(patches).to(device)
    ref = torch.from_numpy(reference).to(device)
    n = len(x)
    norm = MacenkoNormalizer(chunk_size=args.chunk_size).fit(ref)
    out: dict = {"patches": n, "device": device}

    m = min(args.ts_patches, n)
    try:
        run, results = torchstain_loop(x[:m], ref)
    except ImportError as err:
        run, results = None, []
        out["torchstain"] = {"error": f"torchstain not importable: {err}"}
    sides = {"pathtrail_normalize": lambda: norm.normalize(x),
             "pathtrail_normalize_slide": lambda: norm.normalize_slide(x)}
    if run is not None:
        sides["torchstain"] = run
    try:
        seconds = interleaved(sides, args.repeats, device)
    except Exception as err:  # noqa: BLE001 - e.g. torchstain not supporting this device
        sides.pop("torchstain", None)
        out["torchstain"] = {"error": f"{type(err).__name__}: {err}"}
        seconds, run = interleaved(sides, args.repeats, device), None
    batched = norm.normalize(x)
    out["pathtrail_normalize"] = {**timing(n, seconds["pathtrail_normalize"]),
                                  "fallback": norm.last_stats["fallback"]}
    out["pathtrail_normalize_slide"] = timing(n, seconds["pathtrail_normalize_slide"])
    out["float64_max_abs_diff"] = float64_max_diff(norm, x)
    if run is None:
        return out
    ok = [i for i, r in enumerate(results) if r is not None]
    out["torchstain"] = {"patches": m, **timing(m, seconds["torchstain"]), "failed": m - len(ok)}
    for name, key in (("normalize", "pathtrail_normalize"),
                      ("slide", "pathtrail_normalize_slide")):
        ratios = [(t_ts / m) / (t_pt / n) for t_ts, t_pt in zip(seconds["torchstain"],
                                                                 seconds[key], strict=True)]
        out[f"speedup_{name}_vs_torchstain"] = round(statistics.median(ratios), 1)  # per round
        out[f"speedup_{name}_vs_torchstain_all"] = [round(r, 2) for r in ratios]
        out[f"speedup_{name}_vs_torchstain_best"] = round(  # the minima's ratio
            out[key]["patches_per_s_best"] / out["torchstain"]["patches_per_s_best"], 1)

    # agreement, on the patches torchstain does not fail; fallbacks are learned patch by patch
    fell_back = []
    for i in ok:
        norm.normalize(x[i:i + 1])
        fell_back.append(bool(norm.last_stats["fallback"]))
    diffs = [(torch.stack([results[i] for i in ok]).cpu().to(torch.int32)
              - batched[ok].cpu().to(torch.int32)).abs()] if ok else []

    def summary(mask: list[bool]) -> dict:
        if not diffs or not any(mask):
            return {"patches": 0}
        d = diffs[0][torch.tensor(mask)]
        per_patch = d.float().mean((1, 2, 3))
        return {"patches": int(sum(mask)), "mean_abs_diff": round(float(d.float().mean()), 4),
                "max_abs_diff": int(d.max()),
                "worst_patch_mean_abs_diff": round(float(per_patch.max()), 4)}

    out["agreement"] = {"all_torchstain_ok": summary([True] * len(ok)),
                        "no_pathtrail_fallback": summary([not f for f in fell_back])}
    return out


# -------------------------------------------------------------------------------------- main
def machine_info(devices: list[str]) -> dict:
    from importlib.metadata import PackageNotFoundError, version

    try:  # the distribution's version: torchstain 1.4.1 still says __version__ = "1.3.0"
        ts_version = version("torchstain")
    except PackageNotFoundError:
        try:
            import torchstain
            ts_version = getattr(torchstain, "__version__", None)
        except ImportError:
            ts_version = None
    info = {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "processor": platform.processor() or None,
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "numpy": np.__version__,
        "numba": version("numba"),
        "torchstain": ts_version,
        "devices": devices,
        "cuda_available": torch.cuda.is_available(),
        # other jobs on the machine slow every figure down; this says how busy it was
        "load_average_1min": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
    }
    if torch.cuda.is_available():
        info["cuda_device"] = torch.cuda.get_device_name(0)
        info["cuda_version"] = torch.version.cuda
    return info


def write_json_atomic(obj: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(json.dumps(obj, sort_keys=True, indent=2) + "\n")
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 would stick to the result
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(REPO / "bench/results/stain.json"))
    parser.add_argument("--data", choices=["auto", "he", "demo"], default="auto")
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 224])
    parser.add_argument("--patches", type=int, default=512, help="patches per size (pathtrail)")
    parser.add_argument("--ts-patches", type=int, default=128,
                        help="patches torchstain normalizes one by one (it is the slow side)")
    parser.add_argument("--repeats", type=int, default=7, help="interleaved rounds")
    parser.add_argument("--chunk-size", type=int, default=64)
    parser.add_argument("--devices", nargs="+", default=None,
                        help="default: cpu, and cuda when available")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    compile_seconds = fast.compile_time()  # numba: compile, or load from its cache
    devices = args.devices or ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    devices = [d for d in devices if not d.startswith("cuda") or torch.cuda.is_available()]
    data = args.data
    if data == "auto":
        data = "he" if (HE_DIR / "source.png").is_file() else "demo"

    import logging

    import structlog  # keep the normalizer's per-call debug lines out of the timings' output
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))

    started = time.perf_counter()
    results = []
    for size in args.sizes:
        patches, reference, description = (he_data if data == "he" else demo_data)(size,
                                                                                   args.patches)
        for device in devices:
            row = bench_one(patches, reference, device, args)
            row.update(size=size, data=description)
            results.append(row)
            ts = row.get("torchstain", {})
            agree = row.get("agreement", {}).get("no_pathtrail_fallback", {})
            print(f"{size:>4}px {device:>4}: torchstain {ts.get('patches_per_s', '-')} patches/s"
                  f" ({ts.get('failed', '-')} failed) | normalize "
                  f"{row['pathtrail_normalize']['patches_per_s']} patches/s "
                  f"(x{row.get('speedup_normalize_vs_torchstain', '-')}, "
                  f"{row['pathtrail_normalize']['fallback']} fallbacks) | normalize_slide "
                  f"{row['pathtrail_normalize_slide']['patches_per_s']} patches/s "
                  f"(x{row.get('speedup_slide_vs_torchstain', '-')}) | vs torchstain: mean "
                  f"{agree.get('mean_abs_diff', '-')}, max {agree.get('max_abs_diff', '-')} "
                  f"on {agree.get('patches', 0)} patches; vs float64 max "
                  f"{row['float64_max_abs_diff']}", flush=True)
    report = {
        "benchmark": "stain",
        "settings": {"data": data, "sizes": args.sizes, "patches": args.patches,
                     "ts_patches": args.ts_patches, "repeats": args.repeats,
                     "threads": args.threads, "chunk_size": args.chunk_size,
                     "io": 240, "alpha": 1.0, "beta": 0.15},
        "machine": machine_info(devices),
        "kernels_compile_seconds": round(compile_seconds, 2),
        "results": results,
        "seconds_total": round(time.perf_counter() - started, 2),
    }
    write_json_atomic(report, Path(args.out))
    print(f"wrote {args.out} in {report['seconds_total']} s", file=sys.stderr)
    return report


if __name__ == "__main__":
    main()
