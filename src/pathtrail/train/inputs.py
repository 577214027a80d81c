"""Glue shared by the stages that train or score: params, store rows and loaders in one place."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from pathtrail.config.loading import parse_section
from pathtrail.config.sections import (
    TRAINING_SECTIONS,
    DataParams,
    ModelParams,
    RuntimeParams,
    TrainParams,
    runtime_of,
)
from pathtrail.core.files import read_table
from pathtrail.core.hashing import digest, sha256_file, sha256_path
from pathtrail.data.loaders import KeyedBatchSampler, PatchDataset, make_loader
from pathtrail.data.store import PatchStore, open_store
from pathtrail.train.loop import Split
from pathtrail.train.scoring import predict


@dataclass
class TrainingInputs:
    data: DataParams
    model: ModelParams
    train: TrainParams
    runtime: RuntimeParams
    store: PatchStore
    tables: dict[str, pd.DataFrame]
    splits: dict[str, Split]
    fingerprint: str


def load_training_inputs(raw: Mapping[str, Any], store_dir: str, split_dir: str,
                         reference: str | None = None) -> TrainingInputs:
    """Typed params, the store and the train/val tables, and the resume fingerprint of them all.

    The fingerprint covers every params section train reads, the store's content (index and
    pixel shards), the split tables, the stain reference file and the library's source code, so
    a checkpoint is never resumed after any of them changed (test_checkpoint_file.py).
    """
    data = parse_section(raw, "data", DataParams)
    model = parse_section(raw, "model", ModelParams)
    train = parse_section(raw, "train", TrainParams)
    store = open_store(store_dir)
    tables = {name: read_table(Path(split_dir) / f"{name}.csv") for name in ("train", "val")}
    splits = {n: Split(store.rows_for(t.path), t.label.to_numpy(np.int64)) for n, t in tables.items()}
    fingerprint = digest({
        "params": {k: raw.get(k) for k in TRAINING_SECTIONS},
        "store": sha256_path(store_dir),
        "splits": {n: sha256_path(Path(split_dir) / f"{n}.csv") for n in tables},
        "stain_reference": sha256_path(reference) if reference else None,
        "code": library_code_sha256(),
    })
    return TrainingInputs(data, model, train, runtime_of(raw), store, tables, splits, fingerprint)


def library_code_sha256() -> str:
    """sha256 over the source of every pathtrail module this process has loaded (name, file hash).

    In the train stage that is the library code train runs: everything the stage imported by the
    time it reads its inputs (the training code imports nothing of pathtrail later). An edit to a
    module train does not load (a report, the CLI) leaves the fingerprint, and a resume, alone."""
    files = {name: getattr(m, "__file__", None) for name, m in list(sys.modules.items())
             if name == "pathtrail" or name.startswith("pathtrail.")}
    return digest({name: sha256_file(f) for name, f in sorted(files.items()) if f and f.endswith(".py")})


def score_loader(store: PatchStore, table: pd.DataFrame, data: DataParams, batch_size: int, seed: int):
    """A non-shuffled, non-augmented loader over `table`'s patches (its own generator)."""
    rows = store.rows_for(table.path)
    ds = PatchDataset(store, rows, table.label.to_numpy(np.int64), augment=False, seed=seed)
    sampler = KeyedBatchSampler(len(rows), batch_size, seed, shuffle=False)
    return make_loader(ds, sampler, num_workers=0, prefetch_factor=2, persistent_workers=False,
                       pin_memory=False, seed=seed)


def score_table(model: torch.nn.Module, store: PatchStore, table: pd.DataFrame, data: DataParams,
                batch_size: int, seed: int) -> np.ndarray:
    """Class probabilities of `table`'s patches, in table order, scored on the CPU."""
    return predict(model, score_loader(store, table, data, batch_size, seed), None, torch.device("cpu"))[0]


def probability_table(table: pd.DataFrame, probs: np.ndarray, classes: list[str]) -> pd.DataFrame:
    """path, patient_id, slide_id, site, label, prob_<class>... (the predictions/<cohort>.csv format)."""
    out = table[["path", "patient_id", "slide_id", "site", "label"]].copy()
    for k, name in enumerate(classes):
        out[f"prob_{name}"] = np.round(probs[:, k], 10)
    return out
