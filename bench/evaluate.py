"""Time `evaluate_cohort` end to end: 50,000 predictions, ~5,000 patients, B = 2,000.

    python bench/evaluate.py [--out bench/results/evaluate.json] [--repeats 3]

Target: < 2 s per call on the 2-core CI machine. Other jobs may share the cores, so the same run
also times the per-sample rank statistics that the tie-group formulation replaced
(`bootstrap_reference.py`), interleaved with the current code, and checks that both give the same
result dict (bitwise: every CI equal); both sides leave torchmetrics' argument checks off (our
own input validation does them). The minimum over repeats is the figure least disturbed by other
load; the load average at the start and the process CPU time are recorded. It runs under the
evaluate stage's execution contract: one BLAS thread, AVX2 kernels, one torch thread (`--threads`).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

from pathtrail.core.execution import environment_for

# The evaluate stage's execution contract (one BLAS / OpenMP thread, AVX2 kernels) before numpy loads
os.environ.update(environment_for({"threads": 1, "cpu_isa": "avx2"}))

import numpy as np
import torch

from bootstrap_reference import ReferenceRanking
from pathtrail.core.files import write_json
from pathtrail.evaluation import bootstrap
from pathtrail.evaluation.report import evaluate_cohort


def synthetic_cohort(n_samples: int, n_patients: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Patient-level labels, a shared patient effect, 2 slides per patient, 2-decimal ties."""
    rng = np.random.default_rng(seed)
    patient = np.sort(rng.integers(0, n_patients, n_samples))
    label = (rng.random(n_patients) < 0.3).astype(np.int64)
    effect = rng.normal(0.0, 0.7, n_patients)
    logit = 1.5 * label[patient] - 1.0 + effect[patient] + rng.normal(0.0, 0.7, n_samples)
    prob = np.round(1.0 / (1.0 + np.exp(-logit)), 3)
    slide = patient * 2 + rng.integers(0, 2, n_samples)
    return {"labels": label[patient], "probs": prob, "patient_ids": patient, "slide_ids": slide}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="bench/results/evaluate.json")
    parser.add_argument("--samples", type=int, default=50_000)
    parser.add_argument("--patients", type=int, default=5_000)
    parser.add_argument("--bootstrap", type=int, default=2_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1: the execution contract the evaluate stage runs under)")
    parser.add_argument("--no-reference", dest="reference", action="store_false",
                        help="skip timing the per-sample reference")
    args = parser.parse_args(argv)

    cohort = synthetic_cohort(args.samples, args.patients)

    torch.set_num_threads(args.threads)
    cpu: dict[str, list[float]] = {"current": [], "reference": []}

    def once(side: str) -> tuple[float, dict]:
        started, cpu_started = time.perf_counter(), time.process_time()
        result = evaluate_cohort(
            cohort["labels"],
            cohort["probs"],
            cohort["patient_ids"],
            0.5,
            n_bootstrap=args.bootstrap,
            seed=0,
            ece_bins=10,
            slide_ids=cohort["slide_ids"],
        )
        cpu[side].append(time.process_time() - cpu_started)
        return time.perf_counter() - started, result

    current = bootstrap._Ranking
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    seconds, reference_seconds = [], []
    for _ in range(args.repeats):
        took, result = once("current")
        seconds.append(took)
        if args.reference:
            bootstrap._Ranking = ReferenceRanking
            try:
                took, reference = once("reference")
            finally:
                bootstrap._Ranking = current
            reference_seconds.append(took)
            if reference != result:
                raise SystemExit("the current and the reference bootstrap disagree")
    report = {
        "n_samples": args.samples,
        "n_patients": result["n_patients"],
        "n_bootstrap": args.bootstrap,
        "seconds_min": round(min(seconds), 3),
        "seconds_median": round(statistics.median(seconds), 3),
        "seconds_all": [round(s, 3) for s in seconds],
        "cpu_seconds_min": round(min(cpu["current"]), 3),
        "target_seconds": 2.0,
        "auroc": result["auroc"],
        "auroc_ci": [result["auroc_ci_low"], result["auroc_ci_high"]],
        "cpu_count": os.cpu_count(),
        "load_average_1min": None if load is None else round(load, 2),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
    }
    if reference_seconds:
        report |= {
            "reference_seconds_min": round(min(reference_seconds), 3),
            "reference_seconds_median": round(statistics.median(reference_seconds), 3),
            "reference_seconds_all": [round(s, 3) for s in reference_seconds],
            "reference_cpu_seconds_min": round(min(cpu["reference"]), 3),
            "speedup_median": round(statistics.median(reference_seconds) / statistics.median(seconds), 2),
            "identical_to_reference": True,
        }
    write_json(report, args.out)
    line = (f"evaluate_cohort: {report['seconds_min']:.2f} s (min of {args.repeats}; "
            f"median {report['seconds_median']:.2f} s)")
    if reference_seconds:
        line += (f"; per-sample reference {report['reference_seconds_min']:.2f} s "
                 f"(median {report['reference_seconds_median']:.2f} s), same result")
    print(f"{line} -> {args.out}")


if __name__ == "__main__":
    main()
