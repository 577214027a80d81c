"""Glue shared by the stages that train or score: params, store rows and loaders in one place."""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from pathtrail.config.label_section import is_multilabel
from pathtrail.config.loading import ParamsError, parse_section
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
from pathtrail.data.label_columns import label_matrix
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
    check_model_fits(model, data)
    store = open_store(store_dir)
    tables = {name: read_table(Path(split_dir) / f"{name}.csv") for name in ("train", "val")}
    splits = {n: Split(store.rows_for(t.path), table_labels(t, data, f"{split_dir}/{n}.csv"))
              for n, t in tables.items()}
    fingerprint = digest({
        "params": {k: raw.get(k) for k in TRAINING_SECTIONS},
        "store": sha256_path(store_dir),
        "splits": {n: sha256_path(Path(split_dir) / f"{n}.csv") for n in tables},
        "stain_reference": sha256_path(reference) if reference else None,
        "code": library_code_sha256(),
    })
    return TrainingInputs(data, model, train, runtime_of(raw), store, tables, splits, fingerprint)


def check_model_fits(model: ModelParams, data: DataParams) -> None:
    """The checks that need both sections, before any work: the ViT's image size is the patch size,
    and local weights are there (weights are never downloaded)."""
    if model.vit is not None and model.vit.image_size != data.patch_size:
        raise ParamsError(f"'model.vit.image_size' is {model.vit.image_size} but data.patch_size is "
                          f"{data.patch_size}: the ViT takes whole patches, so set model.vit.image_size="
                          f"{data.patch_size} (and a model.vit.patch_size that divides it)")
    if model.weights_path is not None and not Path(model.weights_path).is_file():
        raise ParamsError(f"'model.weights_path' is {model.weights_path!r}, which is not a file (weights are "
                          "never downloaded): put the weights there, or set model.weights_path=null")


def library_code_sha256() -> str:
    """sha256 over the source of every pathtrail module this process has loaded (name, file hash).

    In the train stage that is the library code train runs: everything the stage imported by the
    time it reads its inputs (the training code imports nothing of pathtrail later). An edit to a
    module train does not load (a report, the CLI) leaves the fingerprint, and a resume, alone."""
    files = {name: getattr(m, "__file__", None) for name, m in list(sys.modules.items())
             if name == "pathtrail" or name.startswith("pathtrail.")}
    return digest({name: sha256_file(f) for name, f in sorted(files.items()) if f and f.endswith(".py")})


def score_loader(store: PatchStore, table: pd.DataFrame, data: DataParams, batch_size: int, seed: int,
                 runtime: RuntimeParams | None = None):
    """A non-shuffled, non-augmented loader over `table`'s patches (its own generator), with
    `runtime`'s loader knobs (None: in this process, no pinning)."""
    rows = store.rows_for(table.path)
    ds = PatchDataset(store, rows, table_labels(table, data), augment=False, seed=seed)
    sampler = KeyedBatchSampler(len(rows), batch_size, seed, shuffle=False)
    knobs = runtime.loader if runtime is not None else {
        "num_workers": 0, "prefetch_factor": 2, "persistent_workers": False, "pin_memory": False}
    return make_loader(ds, sampler, **knobs, seed=seed)


def score_table(model: torch.nn.Module, store: PatchStore, table: pd.DataFrame, data: DataParams,
                batch_size: int, seed: int, *, runtime: RuntimeParams | None = None,
                device: torch.device | None = None) -> np.ndarray:
    """Class probabilities of `table`'s patches, in table order, scored on `device` (default: the
    CPU) through a loader with `runtime`'s knobs. The loader knobs change no bit of the result
    (tests/unit/test_scoring_loaders.py); the device may (README, "GPU users")."""
    device = device or torch.device("cpu")
    loader = score_loader(store, table, data, batch_size, seed, runtime)
    return predict(model.to(device), loader, None, device, multilabel=is_multilabel(data))[0]


def table_labels(table: pd.DataFrame, data: DataParams, what: str = "table") -> np.ndarray:
    """The training targets of a split table: class indices (N,), or the (N, L) 0/1 label matrix
    of `data.label_columns` in multi-label mode (checked: `data.label_columns.label_matrix`)."""
    if is_multilabel(data):
        return label_matrix(table, data.label_columns, what)
    return table.label.to_numpy(np.int64)


def probability_table(table: pd.DataFrame, probs: np.ndarray, classes: list[str],
                      label_columns: Sequence[str] = ()) -> pd.DataFrame:
    """path, patient_id, slide_id, site, label, prob_<class>... (the predictions/<cohort>.csv format).
    Multi-label: `classes` are the label names, and their 0/1 columns follow `label` as
    `label_<name>`."""
    out = table[["path", "patient_id", "slide_id", "site", "label"]].copy()
    for name in label_columns:  # prefixed: a user's label name never starts a CSV header
        out[f"label_{name}"] = table[name].to_numpy(np.int64)
    for k, name in enumerate(classes):
        out[f"prob_{name}"] = np.round(probs[:, k], 10)
    return out
