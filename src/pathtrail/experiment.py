"""Glue shared by the stages that train or score: params, store rows and loaders in one place."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from pathtrail.io import read_table, sha256_path
from pathtrail.loaders import KeyedBatchSampler, PatchDataset, make_loader
from pathtrail.params import params_sha256, read_params
from pathtrail.settings import DataParams, ModelParams, TrainParams
from pathtrail.store import PatchStore, open_store
from pathtrail.training import Split


@dataclass
class TrainingInputs:
    data: DataParams
    model: ModelParams
    train: TrainParams
    store: PatchStore
    tables: dict[str, pd.DataFrame]
    splits: dict[str, Split]
    fingerprint: str


def load_training_inputs(params_path: str, store_dir: str, split_dir: str) -> TrainingInputs:
    from pathtrail.params import load_section

    data = load_section(params_path, "data", DataParams)
    model = load_section(params_path, "model", ModelParams)
    train = load_section(params_path, "train", TrainParams)
    store = open_store(store_dir)
    tables = {name: read_table(Path(split_dir) / f"{name}.csv") for name in ("train", "val")}
    splits = {n: Split(store.rows_for(t.path), t.label.to_numpy(np.int64)) for n, t in tables.items()}
    raw = read_params(params_path)
    fingerprint = params_sha256({
        "params": {k: raw[k] for k in ("data", "model", "train")},
        "store_index": sha256_path(Path(store_dir) / "index.csv"),
        "splits": {n: sha256_path(Path(split_dir) / f"{n}.csv") for n in tables},
    })
    return TrainingInputs(data, model, train, store, tables, splits, fingerprint)


def score_loader(store: PatchStore, table: pd.DataFrame, data: DataParams, batch_size: int, seed: int):
    """A non-shuffled, non-augmented loader over `table`'s patches (its own generator)."""
    rows = store.rows_for(table.path)
    ds = PatchDataset(store, rows, table.label.to_numpy(np.int64), augment=False, seed=seed)
    sampler = KeyedBatchSampler(len(rows), batch_size, seed, shuffle=False)
    return make_loader(ds, sampler, num_workers=0, prefetch_factor=2, persistent_workers=False,
                       pin_memory=False, seed=seed)


def probability_table(table: pd.DataFrame, probs: np.ndarray, classes: list[str]) -> pd.DataFrame:
    """path, patient_id, slide_id, site, label, prob_<class>... (the predictions/<cohort>.csv format)."""
    out = table[["path", "patient_id", "slide_id", "site", "label"]].copy()
    for k, name in enumerate(classes):
        out[f"prob_{name}"] = np.round(probs[:, k], 10)
    return out
