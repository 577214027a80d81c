"""Every speed option against the baseline on the same data, in one run; and a batch-size sweep.

    python bench/optimizations.py [--out bench/results/optimizations.json] [--epochs 4]
                                  [--patients 12] [--sweep 16,32,64,128,256,512] [--memory-budget-mb 4096]

Data: the demo generator (the committed `data.demo` section, `--patients` per internal site and
for the external site, `--patches` each), split by patient (3/4 train, 1/4 validation); the
external site is scored too. The patches are put in two stores once: Macenko-normalized (fitted on
the training patches, as the stain_fit / normalize stages do) and raw.

Variants (`VARIANTS`): the baseline is the committed training params (fp32, eager, contiguous,
AdamW's default kernels, in-process loading, normalized patches); each other variant changes one
option (and `all_on` the throughput profile's set). Each is trained by `pathtrail.train.loop.fit`
in a fresh process (so peak memory is its own: the process's peak RSS, or CUDA's allocator peak),
under the same execution settings (`--threads`, default the contract's 1 thread), the same seed and
epochs. Reported per variant: samples/s over all epochs (compile time included) and over the epochs
after the first (`steady`), speed-up against the baseline, peak memory, best validation AUROC and
external AUROC with their difference from the baseline, and whether the weights are bitwise the
baseline's. Options that need CUDA (fp16, TF32, cuDNN benchmark, max-autotune) are listed as
skipped on a CPU, with the reason.

Batch-size sweep: for each size, `--sweep-steps` optimizer steps after one warm-up step, in a
fresh process: samples/s and peak memory; "fits" means no CUDA out-of-memory (on CUDA) or a peak
RSS under `--memory-budget-mb` (on a CPU); the largest size that fits is reported.
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
from typing import Any

import numpy as np
import pandas as pd
import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from pathtrail.config.loading import from_dict
from pathtrail.config.sections import DemoParams, ModelParams, RuntimeParams, TrainParams
from pathtrail.core.files import write_json
from pathtrail.core.hashing import digest

CUDA_ONLY = {"amp_fp16", "tf32", "cudnn_benchmark", "compile_max_autotune"}
# name -> (train overrides, runtime overrides, store)
VARIANTS: dict[str, tuple[dict[str, Any], dict[str, Any], str]] = {
    "baseline": ({}, {}, "normalized"),
    "amp_bf16": ({"amp": "bf16"}, {}, "normalized"),
    "amp_fp16": ({"amp": "fp16"}, {}, "normalized"),
    "channels_last": ({"channels_last": True}, {}, "normalized"),
    "compile_default": ({"use_compile": True, "compile_mode": "default"}, {}, "normalized"),
    "compile_reduce_overhead": ({"use_compile": True, "compile_mode": "reduce-overhead"}, {}, "normalized"),
    "compile_max_autotune": ({"use_compile": True, "compile_mode": "max-autotune"}, {}, "normalized"),
    "adamw_foreach": ({"optimizer_impl": "foreach"}, {}, "normalized"),
    "adamw_fused": ({"optimizer_impl": "fused"}, {}, "normalized"),
    "tf32": ({"allow_tf32": True}, {}, "normalized"),
    "cudnn_benchmark": ({"cudnn_benchmark": True, "deterministic": False}, {}, "normalized"),
    "workers_2": ({}, {"num_workers": 2, "prefetch_factor": 2}, "normalized"),
    "workers_2_prefetch_4_persistent": ({}, {"num_workers": 2, "prefetch_factor": 4, "persistent_workers": True},
                                        "normalized"),
    "stain_norm_off": ({}, {}, "raw"),
    "all_on": ({"amp": "bf16", "channels_last": True, "use_compile": True, "optimizer_impl": "fused",
                "deterministic": False, "cudnn_benchmark": True, "allow_tf32": True},
               {"num_workers": 2, "prefetch_factor": 4, "persistent_workers": True}, "normalized"),
}


# ------------------------------------------------------------------------------------------ data
def committed() -> dict[str, Any]:
    return yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))


def build_data(work: Path, patients: int, patches: int) -> dict[str, Any]:
    """The demo cohort in a normalized and a raw store, with patient-level train/val/external rows."""
    from pathtrail.data.demo import generate_cohorts
    from pathtrail.data.store import StoreWriter
    from pathtrail.stain import MacenkoNormalizer

    p = committed()
    demo = from_dict(DemoParams, {**p["data"]["demo"], "patients_per_site": patients, "external_patients": patients,
                                  "patches_per_patient": patches}, "data.demo")
    cohorts = generate_cohorts(demo)
    rows = [(c, q) for c in ("internal", "external") for q in cohorts[c]]
    images = np.stack([q.image for _, q in rows])
    patients_in = sorted({q.patient_id for c, q in rows if c == "internal"})
    val_patients = set(patients_in[::4])
    role = ["external" if c == "external" else "val" if q.patient_id in val_patients else "train" for c, q in rows]
    labels = np.array([q.label for _, q in rows], np.int64)
    train_idx = [i for i, r in enumerate(role) if r == "train"]
    stain = p["stain"]
    t0 = time.perf_counter()
    normalizer = MacenkoNormalizer(io=stain["io"], alpha=stain["alpha"], beta=stain["beta"],
                                   min_tissue_fraction=stain["min_tissue_fraction"], fallback=stain["fallback"],
                                   chunk_size=stain["chunk_size"]).fit(
        [images[i] for i in train_idx[:: max(1, len(train_idx) // stain["fit_max_patches"])]])
    normalized = normalizer.normalize(images)
    normalize_s = time.perf_counter() - t0
    paths = [f"p{i:05d}.png" for i in range(len(rows))]
    for name, pixels in (("normalized", normalized), ("raw", images)):
        writer = StoreWriter(work / name, shard_size=256, patch_shape=images.shape[1:])
        writer.add(np.ascontiguousarray(pixels), pd.DataFrame({"path": paths, "label": labels}))
        writer.close()
    meta = {"role": role, "labels": labels.tolist(), "n": {r: role.count(r) for r in ("train", "val", "external")},
            "normalize_patches_per_s": round(len(rows) / normalize_s, 1), "patch_size": demo.patch_size}
    (work / "data.json").write_text(json.dumps(meta))
    return meta


# ------------------------------------------------------------------------------- one variant
def _params(train_over: dict[str, Any], runtime_over: dict[str, Any], epochs: int, batch: int | None = None):
    p = committed()
    t = {**p["train"], "epochs": epochs, "distributed": {"nproc_per_node": 1},
         "early_stopping": {"patience": epochs + 1, "min_delta": 0.0}, **train_over}
    if batch is not None:
        t["batch_size"] = batch
    m = {**p["model"], "weights_path": None}
    r = {**p["runtime"], "num_workers": 0, "persistent_workers": False, "pin_memory": True, **runtime_over}
    return from_dict(TrainParams, t, "train"), from_dict(ModelParams, m, "model"), from_dict(RuntimeParams, r, "runtime")


def _splits(work: Path, store_name: str):
    from pathtrail.data.store import open_store
    from pathtrail.train.loop import Split

    meta = json.loads((work / "data.json").read_text())
    role, labels = np.array(meta["role"]), np.array(meta["labels"], np.int64)
    rows = {r: np.flatnonzero(role == r) for r in ("train", "val", "external")}
    return open_store(work / store_name), {r: Split(ix, labels[ix]) for r, ix in rows.items()}


def _peak_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def run_variant(work: Path, name: str, epochs: int) -> dict[str, Any]:
    """Train one variant through `fit` in this (fresh) process; its figures."""
    from pathtrail.train.loop import fit
    from pathtrail.train.scoring import auroc, predict

    train_over, runtime_over, store_name = VARIANTS[name]
    tp, mp, rp = _params(train_over, runtime_over, epochs)
    store, splits = _splits(work, store_name)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    t0 = time.perf_counter()
    result = fit(store, splits["train"], splits["val"], tp, mp, rp, num_classes=2, fingerprint=name,
                 device=device)
    wall = time.perf_counter() - t0
    from pathtrail.data.loaders import KeyedBatchSampler, PatchDataset, make_loader
    from pathtrail.train.models import build_from_params

    net = build_from_params(mp, 2)
    net.load_state_dict(result.state_dict)
    ext = splits["external"]
    loader = make_loader(PatchDataset(store, ext.rows, ext.labels, False, tp.seed),
                         KeyedBatchSampler(len(ext.rows), 256, tp.seed, shuffle=False),
                         num_workers=0, prefetch_factor=2, persistent_workers=False, pin_memory=False, seed=tp.seed)
    probs = predict(net.to(device), loader, None, device)[0]
    later = [h["samples_per_s"] for h in result.history[1:]]
    return {
        "samples_per_s": round(result.monitor["samples_per_s"], 2),
        "steady_samples_per_s": round(float(np.median(later)), 2) if later else None,
        "first_epoch_s": round(len(splits["train"].rows) / result.history[0]["samples_per_s"], 2),
        "wall_s": round(wall, 2),
        "peak_memory_mb": _peak_mb(device),
        "val_auroc": round(result.best_val_auroc, 6),
        "external_auroc": round(auroc(ext.labels, probs), 6),
        "weights_sha256": digest({k: v.cpu().numpy().tobytes().hex() for k, v in sorted(result.state_dict.items())}),
        "compile": {k: v for k, v in result.compile.items() if k in ("requested", "used", "mode", "error")},
        "device": device.type,
    }


def run_batch(work: Path, batch: int, steps: int) -> dict[str, Any]:
    """`steps` optimizer steps at `batch` after one warm-up step; samples/s and peak memory."""
    from pathtrail.train import distributed as D
    from pathtrail.train.loop import build_run
    from pathtrail.train.steps import optimizer_step

    tp, mp, rp = _params({}, {}, 1, batch)
    store, splits = _splits(work, "normalized")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    run, _ = build_run(store, splits["train"], splits["val"], tp, mp, rp, num_classes=2, use_compile=False,
                       fallback_random=True, device=device, world=D.SINGLE)
    run.model.train()
    g = torch.Generator().manual_seed(0)
    x = torch.rand((batch, 3, *store.patch(0).shape[:2]), generator=g).to(device)  # sized as the patches
    y = (torch.arange(batch) % 2).to(device)
    try:
        optimizer_step(run, x, y, True, 0.0)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        for _ in range(steps):
            optimizer_step(run, x, y, True, 0.0)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        elapsed = time.perf_counter() - t0
    except torch.OutOfMemoryError:
        return {"batch_size": batch, "fits": False, "reason": "CUDA out of memory"}
    return {"batch_size": batch, "samples_per_s": round(batch * steps / elapsed, 2),
            "peak_memory_mb": _peak_mb(device), "device": device.type}


def run_inference(work: Path, mode: str, repeats: int = 3) -> dict[str, Any]:
    """Scoring every patch with `eval.compile_mode=mode` (the evaluate / predict path): samples/s of
    the first pass (compiling included) and the best later pass, and the largest difference from
    eager scores."""
    import pandas as pd

    from pathtrail.train.compiling import scoring_module
    from pathtrail.train.inputs import score_table
    from pathtrail.train.models import build_from_params

    tp, mp, _ = _params({}, {}, 1)
    store, splits = _splits(work, "normalized")
    rows = np.concatenate([splits[r].rows for r in ("val", "external")])
    table = pd.DataFrame({"path": store.index.path.to_numpy()[rows], "label": 0})
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(tp.seed)
    net = build_from_params(mp, 2).eval()
    eager = score_table(net, store, table, None, 256, 0, device=device)
    model, info = scoring_module(net, mode, device)
    seconds = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        probs = score_table(model, store, table, None, 256, 0, device=device)
        seconds.append(time.perf_counter() - t0)
    return {"mode": mode, "n": len(rows), "first_pass_samples_per_s": round(len(rows) / seconds[0], 1),
            "samples_per_s": round(len(rows) / min(seconds[1:]), 1),
            "max_abs_diff_vs_eager": float(np.abs(probs - eager).max()), **info}


# ------------------------------------------------------------------------------------ driver
def _child(args: list[str], threads: int) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    if threads > 0:
        env |= {k: str(threads) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")}
    done = subprocess.run([sys.executable, __file__, *args], env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        return {"error": (done.stderr.strip().splitlines() or ["exit " + str(done.returncode)])[-1][:500]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def compare(results: dict[str, dict[str, Any]]) -> None:
    base = results["baseline"]
    for r in results.values():
        if "samples_per_s" not in r or "samples_per_s" not in base:
            continue
        r["speedup"] = round(r["samples_per_s"] / base["samples_per_s"], 3)
        if r.get("steady_samples_per_s") and base.get("steady_samples_per_s"):
            r["steady_speedup"] = round(r["steady_samples_per_s"] / base["steady_samples_per_s"], 3)
        r["val_auroc_delta"] = round(r["val_auroc"] - base["val_auroc"], 6)
        r["external_auroc_delta"] = round(r["external_auroc"] - base["external_auroc"], 6)
        r["same_weights_as_baseline"] = r["weights_sha256"] == base["weights_sha256"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=str(REPO / "bench/results/optimizations.json"))
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--patients", type=int, default=12)
    ap.add_argument("--patches", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1, help="intra-op threads per run (0: every core)")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--sweep", default="16,32,64,128,256,512")
    ap.add_argument("--sweep-steps", type=int, default=3)
    ap.add_argument("--memory-budget-mb", type=float, default=4096)
    ap.add_argument("--child-variant")
    ap.add_argument("--child-batch", type=int)
    ap.add_argument("--child-inference")
    ap.add_argument("--work")
    args = ap.parse_args()
    if args.child_variant:
        print(json.dumps(run_variant(Path(args.work), args.child_variant, args.epochs)))
        return
    if args.child_inference:
        print(json.dumps(run_inference(Path(args.work), args.child_inference)))
        return
    if args.child_batch:
        print(json.dumps(run_batch(Path(args.work), args.child_batch, args.sweep_steps)))
        return
    cuda = torch.cuda.is_available()
    with tempfile.TemporaryDirectory(prefix="pathtrail-opt-") as tmp:
        work = Path(tmp)
        data = build_data(work, args.patients, args.patches)
        results: dict[str, dict[str, Any]] = {}
        for name in args.variants.split(","):
            if name in CUDA_ONLY and not cuda:
                results[name] = {"skipped": "needs CUDA (this run is on a CPU)"}
                continue
            print(f"variant {name} ...", file=sys.stderr, flush=True)
            results[name] = _child(["--child-variant", name, "--work", str(work), "--epochs", str(args.epochs)],
                                   args.threads)
        compare(results)
        sweep = []
        for batch in (int(b) for b in args.sweep.split(",")):
            print(f"batch {batch} ...", file=sys.stderr, flush=True)
            row = _child(["--child-batch", str(batch), "--work", str(work), "--sweep-steps", str(args.sweep_steps)],
                         args.threads)
            row.setdefault("batch_size", batch)
            if "fits" not in row:
                row["fits"] = "error" not in row and (cuda or row["peak_memory_mb"] <= args.memory_budget_mb)
            sweep.append(row)
        inference = {}
        for mode in ("none", "default", "reduce-overhead"):
            print(f"scoring with eval.compile_mode={mode} ...", file=sys.stderr, flush=True)
            inference[mode] = _child(["--child-inference", mode, "--work", str(work)], args.threads)
        for r in inference.values():
            if "samples_per_s" in r and "samples_per_s" in inference["none"]:
                r["speedup"] = round(r["samples_per_s"] / inference["none"]["samples_per_s"], 3)
    fitting = [r["batch_size"] for r in sweep if r["fits"]]
    out = {
        "data": {k: data[k] for k in ("n", "normalize_patches_per_s", "patch_size")},
        "epochs": args.epochs, "threads": args.threads, "variants": results,
        "batch_sweep": {"rows": sweep, "largest_that_fits": max(fitting) if fitting else None,
                        "memory_budget_mb": None if cuda else args.memory_budget_mb,
                        "steps": args.sweep_steps},
        "inference": inference,
        "machine": {"cpus": os.cpu_count(), "load_average_at_end": [round(x, 2) for x in os.getloadavg()], "cpu_model": platform.processor() or platform.machine(),
                    "torch": torch.__version__, "cuda": torch.cuda.get_device_name(0) if cuda else None},
    }
    write_json(out, args.out)
    print(table(out))


def table(out: dict[str, Any]) -> str:
    lines = ["| variant | samples/s | steady | speed-up | peak MB | val AUROC (Δ) | external AUROC (Δ) | same weights |",
             "|---|---|---|---|---|---|---|---|"]
    for name, r in out["variants"].items():
        if "samples_per_s" not in r:
            lines.append(f"| {name} | {r.get('skipped') or r.get('error')} |  |  |  |  |  |  |")
            continue
        lines.append(f"| {name} | {r['samples_per_s']} | {r.get('steady_samples_per_s')} | {r.get('speedup')}x | "
                     f"{r['peak_memory_mb']} | {r['val_auroc']:.4f} ({r.get('val_auroc_delta', 0):+.4f}) | "
                     f"{r['external_auroc']:.4f} ({r.get('external_auroc_delta', 0):+.4f}) | "
                     f"{r.get('same_weights_as_baseline')} |")
    lines += ["", "| batch size | samples/s | peak MB | fits |", "|---|---|---|---|"]
    lines += [f"| {r['batch_size']} | {r.get('samples_per_s', '–')} | {r.get('peak_memory_mb', '–')} | {r['fits']} |"
              for r in out["batch_sweep"]["rows"]]
    lines += ["", "| eval.compile_mode | compiled | first pass samples/s | samples/s | speed-up | max abs diff |",
              "|---|---|---|---|---|---|"]
    lines += [f"| {m} | {r.get('compiled')} | {r.get('first_pass_samples_per_s')} | {r.get('samples_per_s')} | "
              f"{r.get('speedup')} | {r.get('max_abs_diff_vs_eager')} |" for m, r in out["inference"].items()]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
