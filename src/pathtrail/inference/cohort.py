"""A new cohort through the pipeline's own code: validate, normalize, score (bitwise evaluate's).

Nothing here re-implements a step: the manifest is checked by `data.validation.validate_cohorts`
(the validate stage's check, as one cohort, with `min_per_class` 1: a cohort to score needs no
class balance), written and read back as the validate stage's table is, normalized by the
normalize stage's `normalize_cohorts` with the card's stain params and reference into a private
store, and scored by the evaluate stage's `score_cohort`. The card's params decide every step, so
the probabilities of the demo's external manifest are those in `predictions/external.csv`, bit for
bit (tests/stages/test_predict.py::test_predict_equals_evaluate_bit_for_bit).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pathtrail.config.loading import parse_section
from pathtrail.config.sections import DataParams, EvalParams, StainParams, runtime_of
from pathtrail.core.errors import PathTrailError
from pathtrail.core.files import read_table, write_csv
from pathtrail.core.parallel import resolve_workers
from pathtrail.data.report import ERRORS_SHOWN_PER_RULE, format_problems
from pathtrail.data.store import PatchStore, open_store
from pathtrail.data.validation import Cohort, Rules, validate_cohorts
from pathtrail.inference.card_model import CardModel
from pathtrail.pipeline.evaluate import score_cohort
from pathtrail.pipeline.normalize import Paths as NormalizePaths
from pathtrail.pipeline.normalize import normalize_cohorts, normalize_device
from pathtrail.stain import MacenkoNormalizer
from pathtrail.train.compiling import scoring_module
from pathtrail.train.scoring import scoring_device

COHORT = "new"


@dataclass
class ScoredCohort:
    table: pd.DataFrame  # the validated table as the validate stage writes it (sorted by path)
    probs: np.ndarray  # (n, K) class probabilities, float64, in table order
    data: DataParams  # the card's data params, with this cohort's data root
    stain: StainParams
    store: PatchStore
    validation: dict[str, Any]  # the validation report's counts
    normalization: dict[str, Any]  # the normalize report's fallback counts
    device: str


def validated_table(manifest: Path, data_root: Path, data: DataParams, workdir: Path) -> tuple[pd.DataFrame, dict]:
    """The manifest checked as the validate stage checks a cohort, as the table that stage writes
    and evaluate reads back (`write_csv` then `read_table`); every problem listed on failure."""
    rules = replace(Rules.from_params(data), min_per_class=1)
    result = validate_cohorts([Cohort(COHORT, manifest, data_root)], rules)
    report = result.report
    if not result.ok:
        listed = format_problems(report["errors"], ERRORS_SHOWN_PER_RULE, report["cohorts"],
                                 report["omitted"]["errors"])
        raise PathTrailError("\n".join([(f"{len(result.errors)} error(s) in the manifest; nothing was scored "
                                        "(`pathtrail validate` lists them the same way):"), *listed]))
    path = write_csv(result.tables[COHORT], workdir / "validated" / f"{COHORT}.csv")
    counts = {k: report[k] for k in ("n_warnings", "warning_counts")}
    return read_table(path), counts | {"table": path}


def score_manifest(cm: CardModel, manifest: str | Path, data_root: str | Path, workdir: Path, *,
                   workers: int = 0) -> ScoredCohort:
    """Validate, normalize (with the card's reference) and score a manifest's patches."""
    params = cm.params
    data = replace(parse_section(params, "data", DataParams), data_root=str(data_root))
    stain = parse_section(params, "stain", StainParams)
    ev = parse_section(params, "eval", EvalParams)
    if not Path(manifest).is_file():
        raise PathTrailError(f"--manifest '{manifest}': no such file")
    if not Path(data_root).is_dir():
        raise PathTrailError(f"--data-root '{data_root}': no such folder (the folder the manifest's paths start from)")
    table, validation = validated_table(Path(manifest), Path(data_root), data, workdir)
    table_path = validation.pop("table")
    store_paths = NormalizePaths(validated=str(table_path.parent), reference="", out=str(workdir / "store"),
                                 report=str(workdir / "normalization.json"),
                                 figure=str(workdir / "stain_before_after.png"))
    normalizer = MacenkoNormalizer.from_dict(cm.reference, fallback=stain.fallback)
    report = normalize_cohorts({COHORT: table_path}, normalizer, data, stain, store_paths,
                               workers=resolve_workers(workers), device=normalize_device())
    store = open_store(store_paths.out)
    runtime = replace(runtime_of({}), num_workers=workers, pin_memory=False)
    device = scoring_device()
    model, _ = scoring_module(cm.model, ev.compile_mode, device)
    probs = score_cohort(model, store, table, data, ev, runtime=runtime, device=device)
    if probs.shape != (len(table), len(cm.classes)):
        raise PathTrailError(f"the model scored {probs.shape[1]} classes, the card names {len(cm.classes)}")
    return ScoredCohort(table, probs, data, stain, store, validation, report["cohorts"][COHORT], device.type)
