"""The speed cost of the reproducible execution contract, both sides in one run.

    python bench/execution.py [--out bench/results/execution.json] [--repeats 5] [--steps 24]

Each side is a fresh process (the contract's variables only take effect before torch loads): the
same SmallCNN (width 32, 64x64 patches, batch 64, AdamW, deterministic algorithms) trains `--steps`
optimizer steps on the same synthetic batch stream, through the demo's training loop (`fit`).
Sides: `contract` (execution.threads=1, execution.cpu_isa=avx2, the default), `lifted`
(threads=0 = every usable core, cpu_isa=native, what profile=benchmark sets) and `threads_only`
(every core, kernels still pinned). Repeats are interleaved (the order alternates) so other load
hits every side alike; the figure is the median samples/s per side, and `cost_pct` = (lifted /
contract - 1) x 100. `same_weights` says whether the side's weights equal the contract's: only the
contract promises the same bits on another machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from pathtrail.core.execution import CONTRACT_VARIABLES, environment_for
from pathtrail.core.files import write_json

SIDES = {
    "contract": {"threads": 1, "cpu_isa": "avx2"},
    "threads_only": {"threads": 0, "cpu_isa": "avx2"},
    "lifted": {"threads": 0, "cpu_isa": "native"},
}

WORKER = r"""
import hashlib, json, sys, tempfile, time
from pathlib import Path
sys.path.insert(0, sys.argv[1] + "/bench"); sys.path.insert(0, sys.argv[1] + "/src")
import torch
threads = int(sys.argv[3])
if threads > 0:
    torch.set_num_threads(threads)
from train import bench_params, synthetic_store
from pathtrail.train.loop import fit
steps = int(sys.argv[2])
with tempfile.TemporaryDirectory() as tmp:
    store, train, val = synthetic_store(Path(tmp) / "store", 64 * steps)
    params = bench_params(64, 32)
    t0 = time.perf_counter()
    result = fit(store, train, val, *params, num_classes=2, fingerprint="bench")
    seconds = time.perf_counter() - t0
digest = hashlib.sha256(b"".join(v.numpy().tobytes() for _, v in sorted(result.state_dict.items()))).hexdigest()
print(json.dumps({"samples_per_s": 64 * steps / seconds, "weights_sha256": digest,
                  "threads": torch.get_num_threads(), "aten": torch.backends.cpu.get_cpu_capability()}))
"""


def run_side(side: str, steps: int) -> dict:
    contract = SIDES[side]
    env = {k: v for k, v in os.environ.items() if k not in CONTRACT_VARIABLES}
    env |= environment_for(contract)
    done = subprocess.run([sys.executable, "-c", WORKER, str(REPO), str(steps), str(contract["threads"])], check=False,
                          env=env, capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        raise SystemExit(f"{side} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(REPO / "bench/results/execution.json"))
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--steps", type=int, default=24)
    args = ap.parse_args(argv)
    runs: dict[str, list[dict]] = {s: [] for s in SIDES}
    order = list(SIDES)
    for i in range(args.repeats):
        for side in order if i % 2 == 0 else reversed(order):
            runs[side].append(run_side(side, args.steps))
            print(f"repeat {i + 1} {side}: {runs[side][-1]['samples_per_s']:.1f} samples/s", file=sys.stderr)
    median = {s: statistics.median(r["samples_per_s"] for r in runs[s]) for s in SIDES}
    ref = runs["contract"][0]["weights_sha256"]
    result = {
        "what": "training samples/s of the demo's SmallCNN under the execution contract vs lifted",
        "machine": {"cpu": platform.processor() or platform.machine(), "usable_cpus": len(os.sched_getaffinity(0)),
                    "python": platform.python_version()},
        "steps": args.steps, "repeats": args.repeats,
        "sides": {s: {"contract": SIDES[s], "median_samples_per_s": round(median[s], 1),
                      "threads": runs[s][0]["threads"], "aten_cpu_capability": runs[s][0]["aten"],
                      "same_weights_as_contract": all(r["weights_sha256"] == ref for r in runs[s]),
                      "samples_per_s": [round(r["samples_per_s"], 1) for r in runs[s]]} for s in SIDES},
        "cost_pct": round((median["lifted"] / median["contract"] - 1) * 100, 1),
        "threads_cost_pct": round((median["threads_only"] / median["contract"] - 1) * 100, 1),
    }
    write_json(result, args.out)
    print(json.dumps({k: result[k] for k in ("cost_pct", "threads_cost_pct")}))
    return 0


if __name__ == "__main__":
    with tempfile.TemporaryDirectory():
        raise SystemExit(main())
