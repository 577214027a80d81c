"""Patient-grouped, label-stratified train/val/test split of a validated table.

All patches of a patient land in one split (patches of one patient are not independent: a split by
patch leaks the patient's tissue, stain and scanner into the test set). Within that constraint the
class proportions are kept as equal as possible with scikit-learn's `StratifiedGroupKFold`, in two
steps: the test split is one of k_test = round(1 / test_fraction) folds of all patients, the val
split one of k_val = round((1 - test_fraction) / val_fraction) folds of the rest. The fractions are
therefore met to the nearest 1/k (0.2 and 0.2 exactly, in patients); the achieved ones are recorded.
The folds' shuffling is seeded from (seed, step), so a split depends only on the table's content,
the seed and the fractions, not on row order.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold

from pathtrail.core.errors import PathTrailError

SPLITS = ("train", "val", "test")
_TEST_STEP, _VAL_STEP = 0, 1  # purpose tags of the keyed fold seeds


class SplitError(PathTrailError, ValueError):
    """The table cannot be split as asked; the message says why and what to change."""


def split_by_patient(table: pd.DataFrame, val_fraction: float, test_fraction: float,
                     seed: int, classes: Sequence[str] | None = None) -> dict[str, pd.DataFrame]:
    """{"train", "val", "test"} -> rows of `table` (same columns, sorted by path).

    `table` needs the columns path, label (class index) and patient_id. Raises SplitError when a
    class has patches from fewer than three patients, or when the folds leave a split without a
    class or empty. `classes` (names by index) only makes the messages readable.
    """
    if not (0 < val_fraction < 1 and 0 < test_fraction < 1 and val_fraction + test_fraction < 1):
        raise SplitError(f"fractions val={val_fraction}, test={test_fraction} must be in (0, 1) "
                         "and sum to less than 1")
    table = table.sort_values("path", ignore_index=True)
    names = _namer(classes)
    _require_patients_per_class(table, names)
    k_test = max(2, round(1 / test_fraction))
    k_val = max(2, round((1 - test_fraction) / val_fraction))
    rest, test = _one_fold(table, k_test, _fold_seed(seed, _TEST_STEP), "test")
    train, val = _one_fold(rest, k_val, _fold_seed(seed, _VAL_STEP), "val")
    splits = {"train": train, "val": val, "test": test}
    for name, part in splits.items():
        missing = sorted(set(table["label"]) - set(part["label"]))
        if missing:
            raise SplitError(
                f"the {name} split gets no patient with class "
                f"{', '.join(names(i) for i in missing)}"
                f" (seed {seed}, val_fraction {val_fraction}, test_fraction {test_fraction}); add "
                "patients of that class, or change data.split.seed or the fractions")
    return {name: part.sort_values("path", ignore_index=True) for name, part in splits.items()}


def _fold_seed(seed: int, step: int) -> int:
    return int(np.random.SeedSequence([seed, step]).generate_state(1)[0])


def _one_fold(table: pd.DataFrame, k: int, seed: int,
              what: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(rest, fold 0) of a k-fold patient-grouped, label-stratified partition of `table`."""
    n_patients = table["patient_id"].nunique()
    if n_patients < k:
        raise SplitError(f"only {n_patients} patients are left for the {what} split, which needs "
                         f"at least {k} (1 / its fraction); add patients or raise its fraction")
    folds = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    with warnings.catch_warnings():  # "least populated class has fewer members than n_splits"
        warnings.simplefilter("ignore", UserWarning)
        keep, fold = next(folds.split(np.zeros(len(table)), table["label"].to_numpy(),
                                      table["patient_id"].to_numpy()))
    return table.iloc[keep].reset_index(drop=True), table.iloc[fold].reset_index(drop=True)


def _require_patients_per_class(table: pd.DataFrame, names: Any) -> None:
    patients = table.groupby("label")["patient_id"].nunique()
    short = {int(label): int(n) for label, n in patients.items() if n < len(SPLITS)}
    if short:
        listed = ", ".join(f"'{names(label)}' ({n})" for label, n in sorted(short.items()))
        raise SplitError(f"too few patients per class for a patient-level train/val/test split: "
                         f"{listed}; each class needs patches from at least {len(SPLITS)} "
                         "patients (one per split). Add patients of these classes.")


def _namer(classes: Sequence[str] | None) -> Any:
    known = list(classes or [])
    return lambda i: known[int(i)] if 0 <= int(i) < len(known) else str(i)


def split_summary(splits: dict[str, pd.DataFrame], classes: Sequence[str]) -> dict[str, Any]:
    """Counts of patches, patients and slides per split, per class and per site, and achieved fractions."""
    total_patches = sum(len(t) for t in splits.values())
    total_patients = sum(t["patient_id"].nunique() for t in splits.values())
    out = {}
    for name, part in splits.items():
        by_class = {c: {"patches": int((part["label"] == i).sum()),
                        "patients": int(part.loc[part["label"] == i, "patient_id"].nunique())}
                    for i, c in enumerate(classes)}
        out[name] = {
            "patches": len(part),
            "patients": int(part["patient_id"].nunique()),
            "slides": int(part["slide_id"].nunique()) if "slide_id" in part else None,
            "fraction_of_patches": round(len(part) / total_patches, 4) if total_patches else None,
            "fraction_of_patients": round(part["patient_id"].nunique() / total_patients, 4)
            if total_patients else None,
            "classes": by_class,
        }
        if "site" in part:
            out[name]["sites"] = {str(site): {"patches": len(rows), "patients": int(rows["patient_id"].nunique())}
                                  for site, rows in part.groupby("site", sort=True)}
    return out
