"""Training curves and summary metrics as plain tables (DVC plots read the CSVs)."""

from __future__ import annotations

from typing import Any

import pandas as pd

from pathtrail.train.loop import FitResult

TIMING_KEYS = ("samples_per_s", "data_wait_fraction", "peak_memory_mb")


def epoch_table(history: list[dict[str, Any]]) -> pd.DataFrame:
    """Per-epoch curves without the timing columns (those vary run to run: audit trail only)."""
    return pd.DataFrame(history).drop(columns=list(TIMING_KEYS), errors="ignore").round(8)


def monitor(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per-epoch samples/s, data-wait fraction and peak memory, for the audit trail and the log."""
    return [{"epoch": h["epoch"], **{k: round(h[k], 4) for k in TIMING_KEYS}} for h in history]


def step_table(steps: list[dict[str, Any]]) -> pd.DataFrame:
    return pd.DataFrame(steps).round(8)


def train_metrics(r: FitResult) -> dict[str, Any]:
    """metrics/train.json: model-quality figures only; speed figures go to the audit trail.

    Throughput and memory vary run to run, so they are kept out of this tracked, hashed file.
    """
    return {
        "best_epoch": r.best_epoch,
        "best_val_auroc": round(r.best_val_auroc, 8),
        "best_val_loss": round(r.best_val_loss, 8),
        "epochs_run": r.epochs_run,
        "early_stopped": r.early_stopped,
        "final_train_loss": round(r.history[-1]["train_loss"], 8),
        "compile_used": bool(r.compile.get("used")),
    }
