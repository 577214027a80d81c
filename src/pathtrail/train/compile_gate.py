"""Compare an eager and a compiled training run of the same model, seed and data.

The seed checklist, made automatic: validation AUROC within a tolerance, a paired bootstrap CI of
the AUROC difference, matching per-step loss curves, and prediction agreement.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from pathtrail.config.sections import CompileCheckParams
from pathtrail.evaluation.bootstrap import draw_patient_counts, percentile_ci, weighted_auroc_auprc
from pathtrail.train.scoring import auroc


@dataclass
class RunOutcome:
    """What one mode produced: per-step losses, validation and external probabilities."""

    losses: np.ndarray
    val_probs: np.ndarray
    external_probs: np.ndarray | None = None


def paired_delta_ci(labels: np.ndarray, eager: np.ndarray, compiled: np.ndarray, patients: np.ndarray,
                    n_bootstrap: int, seed: int) -> tuple[float, float]:
    """95% CI of AUROC(compiled) - AUROC(eager), resampling patients once for both (paired)."""
    _, codes = np.unique(patients, return_inverse=True)
    counts = draw_patient_counts(np.random.default_rng([seed, 0xC0DE]), int(codes.max()) + 1, n_bootstrap)
    weights = counts[:, codes]
    a_eager, _ = weighted_auroc_auprc(labels, eager, weights)
    a_comp, _ = weighted_auroc_auprc(labels, compiled, weights)
    return percentile_ci(a_comp - a_eager)


def agreement(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    return {
        "max_abs_prob_delta": float(np.max(np.abs(a - b))) if len(a) else 0.0,
        "label_flips": int(np.sum(a.argmax(1) != b.argmax(1))),
        "n": len(a),
    }


def compare(eager: RunOutcome, compiled: RunOutcome, labels: np.ndarray, patients: np.ndarray,
            p: CompileCheckParams, seed: int) -> dict[str, Any]:
    """All comparison figures plus `passed` and, when it fails, the reasons (what and by how much)."""
    auc_e, auc_c = auroc(labels, eager.val_probs), auroc(labels, compiled.val_probs)
    delta = auc_c - auc_e
    binary = np.ndim(labels) == 1 and eager.val_probs.shape[1] == 2
    ci = (paired_delta_ci(labels, eager.val_probs[:, 1], compiled.val_probs[:, 1], patients,
                          p.n_bootstrap, seed) if binary else (float("nan"), float("nan")))
    n = min(len(eager.losses), len(compiled.losses))
    diff = np.abs(eager.losses[:n] - compiled.losses[:n])
    result: dict[str, Any] = {
        "auroc_eager": auc_e,
        "auroc_compiled": auc_c,
        "auroc_delta": delta,
        "auroc_delta_ci_low": ci[0],
        "auroc_delta_ci_high": ci[1],
        "auc_tolerance": p.auc_tolerance,
        "loss_steps_compared": n,
        "loss_steps_eager": len(eager.losses),
        "loss_steps_compiled": len(compiled.losses),
        "loss_step0_delta": float(diff[0]) if n else float("nan"),
        "loss_max_abs_delta": float(diff.max()) if n else float("nan"),
        "loss_mean_abs_delta": float(diff.mean()) if n else float("nan"),
        "val_agreement": agreement(eager.val_probs, compiled.val_probs),
    }
    failures = []
    if np.ndim(labels) == 2:  # multi-label: each label's AUROC is held to the tolerance as well
        per_e, per_c = per_label_auroc(labels, eager.val_probs), per_label_auroc(labels, compiled.val_probs)
        result["auroc_per_label_eager"], result["auroc_per_label_compiled"] = per_e, per_c
        result["auroc_per_label_delta"] = [c - e for e, c in zip(per_e, per_c, strict=True)]
        failures += [f"label {k}: validation AUROC differs by {d:+.6f}; tolerance ±{p.auc_tolerance}"
                     for k, d in enumerate(result["auroc_per_label_delta"]) if not abs(d) <= p.auc_tolerance
                     and np.isfinite(d)]
    if eager.external_probs is not None and compiled.external_probs is not None:
        result["external_agreement"] = agreement(eager.external_probs, compiled.external_probs)
    if not abs(delta) <= p.auc_tolerance:
        failures.append(f"validation AUROC differs by {delta:+.6f} (eager {auc_e:.6f}, compiled {auc_c:.6f}); "
                        f"tolerance ±{p.auc_tolerance}")
    if n == 0 or len(eager.losses) != len(compiled.losses):
        failures.append(f"loss curves have different lengths ({len(eager.losses)} vs {len(compiled.losses)} steps)")
    if n and not result["loss_step0_delta"] <= p.loss_step0_tolerance:
        failures.append(f"step-0 loss differs by {result['loss_step0_delta']:.3g} "
                        f"(tolerance {p.loss_step0_tolerance})")
    if n and not result["loss_max_abs_delta"] <= p.loss_max_tolerance:
        failures.append(f"max per-step loss difference {result['loss_max_abs_delta']:.3g} "
                        f"exceeds {p.loss_max_tolerance}")
    if n and not result["loss_mean_abs_delta"] <= p.loss_mean_tolerance:
        failures.append(f"mean per-step loss difference {result['loss_mean_abs_delta']:.3g} "
                        f"exceeds {p.loss_mean_tolerance}")
    result["passed"] = not failures
    result["failures"] = failures
    return result


def per_label_auroc(labels: np.ndarray, probs: np.ndarray) -> list[float]:
    """Each label's AUROC (NaN where the label has one value on the validation split)."""
    return [auroc(labels[:, k].astype(np.int64), np.stack([1 - probs[:, k], probs[:, k]], axis=1))
            for k in range(labels.shape[1])]
