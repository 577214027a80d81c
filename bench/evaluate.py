"""Time `evaluate_cohort` end to end: 50,000 predictions, ~5,000 patients, B = 2,000.

    python bench/evaluate.py [--out bench/results/evaluate.json] [--repeats 3]

Target: < 10 s per call on the 2-core CI machine (other jobs may share the cores; the minimum over
repeats is the figure least disturbed by them).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import numpy as np
import torch

from pathtrail.core.files import write_json
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
    args = parser.parse_args(argv)

    cohort = synthetic_cohort(args.samples, args.patients)
    seconds = []
    for _ in range(args.repeats):
        started = time.perf_counter()
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
        seconds.append(time.perf_counter() - started)
    report = {
        "n_samples": args.samples,
        "n_patients": result["n_patients"],
        "n_bootstrap": args.bootstrap,
        "seconds_min": round(min(seconds), 3),
        "seconds_median": round(statistics.median(seconds), 3),
        "seconds_all": [round(s, 3) for s in seconds],
        "target_seconds": 10.0,
        "auroc": result["auroc"],
        "auroc_ci": [result["auroc_ci_low"], result["auroc_ci_high"]],
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
    }
    write_json(report, args.out)
    print(
        f"evaluate_cohort: {report['seconds_min']:.2f} s (min of {args.repeats}; "
        f"median {report['seconds_median']:.2f} s) -> {args.out}"
    )


if __name__ == "__main__":
    main()
