"""Training throughput of `pathtrail.train.loop.fit` on CUDA under the GPU speed options.

    python bench/train_gpu.py [--out bench/results/train_gpu.json] [--n 4096] [--batch 256]

Configurations: fp32 deterministic (the production profile), bf16 autocast, bf16 + channels-last,
bf16 + channels-last + torch.compile, and the benchmark profile (determinism off, cudnn.benchmark,
TF32). Each is trained for one epoch after a warm-up epoch; samples/s comes from fit's own monitor
(training loop only). Fused AdamW is used on CUDA in every configuration. Needs a CUDA device.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pathtrail.core.files import write_json
from pathtrail.train.loop import fit
from train import bench_params, machine, synthetic_store

CONFIGS = {
    "fp32_deterministic": {},
    "bf16": {"amp": "bf16"},
    "bf16_channels_last": {"amp": "bf16", "channels_last": True},
    "bf16_channels_last_compile": {"amp": "bf16", "channels_last": True, "use_compile": True},
    "benchmark_profile": {"amp": "bf16", "channels_last": True, "deterministic": False,
                          "cudnn_benchmark": True, "allow_tf32": True},
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="bench/results/train_gpu.json")
    parser.add_argument("--n", type=int, default=4096)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--width", type=int, default=32)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench/train_gpu.py needs a CUDA device", file=sys.stderr)
        return 2
    device = torch.device("cuda")
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        store, train, val = synthetic_store(Path(tmp) / "store", args.n)
        for name, change in CONFIGS.items():
            tp, mp, dp = bench_params(args.batch, args.width)
            tp = dataclasses.replace(tp, **{k: v for k, v in change.items() if k != "use_compile"})
            use_compile = change.get("use_compile", False)
            runs = []
            for _ in range(2):  # warm-up (compile, cudnn autotune, allocator), then measured
                torch.cuda.reset_peak_memory_stats()
                res = fit(store, train, val, tp, mp, dp, num_classes=2, fingerprint="bench", device=device,
                          use_compile=use_compile)
                runs.append(res)
            last = runs[-1]
            results[name] = {"samples_per_s": round(last.monitor["samples_per_s"], 1),
                             "peak_memory_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1),
                             "compile_used": bool(last.compile.get("used")),
                             "final_loss": round(float(last.steps[-1]["loss"]), 5)}
            print(name, results[name], flush=True)
    base = results["fp32_deterministic"]["samples_per_s"]
    for r in results.values():
        r["speedup_vs_fp32"] = round(r["samples_per_s"] / base, 2)
    info = machine() | {"gpu": torch.cuda.get_device_name(0), "cuda": torch.version.cuda,
                        "cudnn": torch.backends.cudnn.version()}
    write_json({"machine": info, "n_train": args.n, "batch": args.batch, "width": args.width,
                "configs": results}, args.out)
    print(f"-> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
