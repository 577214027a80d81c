"""What `pathtrail predict` writes, and how: every file staged aside and published together.

For `--out preds.csv`:
- `preds.csv`: one row per patch, the evaluate stage's `predictions/<cohort>.csv` format (`path,
  patient_id, slide_id, site, label, prob_<class>...`, probabilities at 10 decimals), so the demo's
  external manifest gives `predictions/external.csv` byte for byte;
- `preds.decisions.csv`: one row per patch, its score and the decision at the card's locked
  threshold (`prob >= threshold` is the positive class; K > 2 classes: the most probable one);
- `preds.slides.csv`, `preds.patients.csv`: the evaluate stage's aggregation
  (`evaluation.report.aggregate`: mean probability per slide / patient, the highest label), each
  decided at the same threshold, as evaluate's slide and patient levels are;
- `preds.json`: the sidecar: the card (path, name, sha256 of its file, commit, status), the model's
  and stain reference's sha256, threshold, aggregation rule, input manifest sha256, counts, the
  execution record, the drift section, and every other output's sha256;
- `preds.drift.png`: the drift figure.
No wall-clock value is written, so a rerun gives the same bytes. The files are written in a
staging folder beside them and moved into place, with SIGTERM / SIGINT held, only when all were
written: a refusal or a failure leaves no new file (tests/stages/test_predict.py).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pathtrail.core.errors import PathTrailError
from pathtrail.core.files import current_umask
from pathtrail.core.output_paths import output_problem
from pathtrail.core.staging import signals_held
from pathtrail.core.text import printable
from pathtrail.evaluation.report import aggregate
from pathtrail.train.inputs import probability_table

AGGREGATION = ("mean probability of the patches (slide: per slide_id, patient: per patient_id), "
               "decided at the card's threshold; label: the highest patch label")
SIBLINGS = {"decisions": ".decisions.csv", "slides": ".slides.csv", "patients": ".patients.csv",
            "sidecar": ".json", "drift_plot": ".drift.png"}


def output_paths(out: str | Path, kinds: tuple[str, ...] = tuple(SIBLINGS)) -> dict[str, Path]:
    """`predictions` (OUT itself, a .csv) and its siblings, named from OUT's stem."""
    out = Path(out)
    if out.suffix.lower() != ".csv" or not out.stem:
        raise PathTrailError(f"--out '{printable(str(out))}': name a .csv file, e.g. --out preds.csv "
                             "(the other outputs are named from it: preds.json, preds.slides.csv, ...)")
    stem = out.with_suffix("")
    return {"predictions": out, **{k: Path(f"{stem}{SIBLINGS[k]}") for k in kinds}}


def check_output_paths(outputs: list[Path], inputs: list[Path]) -> None:
    """Refuse, before any work, an output that would replace an input, lie in an input folder (the
    data root), or replace something that is not a file."""
    for k, out in enumerate(outputs):
        problem = output_problem(out, inputs, outputs[:k] + outputs[k + 1:], within=False)
        if problem is None and out.exists() and not out.is_file():
            problem = "exists and is not a regular file"
        if problem:
            raise PathTrailError(f"output '{printable(str(out))}' {problem}; nothing was written. "
                                 "Pass another --out, outside the data root and away from the inputs")


@contextlib.contextmanager
def published(outputs: list[Path]) -> Iterator[Callable[[Path], Path]]:
    """Yield `where(output)`: the staged path to write `output` at; on success every staged file is
    moved into place (signals held), on an exception none is, and the staging folder goes."""
    folder = outputs[0].parent
    folder.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{outputs[0].name}.", suffix=".staging", dir=folder))
    os.chmod(staging, 0o777 & ~current_umask())
    try:
        yield lambda p: staging / Path(p).name
        missing = [p for p in outputs if not (staging / p.name).is_file()]
        if missing:
            raise RuntimeError(f"outputs not written: {missing}")
        with signals_held():
            for p in outputs:
                os.replace(staging / p.name, p)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def decisions(probs: np.ndarray, threshold: float | None, classes: list[str]) -> list[str]:
    """The class each row is decided as: binary at `threshold` (`prob >= threshold` is positive, as in
    `evaluation.metrics`), K > 2 classes by the largest probability."""
    if probs.shape[1] == 2:
        if threshold is None:
            raise PathTrailError("the card has no locked threshold for its binary model; rebuild it")
        return [classes[1] if p >= threshold else classes[0] for p in probs[:, 1]]
    return [classes[int(k)] for k in np.argmax(probs, axis=1)]


def prob_columns(classes: list[str]) -> list[str]:
    return [f"prob_{c}" for c in classes]


def patch_tables(table: pd.DataFrame, probs: np.ndarray, classes: list[str],
                 threshold: float | None) -> dict[str, pd.DataFrame]:
    """predictions (evaluate's format), per-patch decisions, and the slide and patient aggregates."""
    out = {"predictions": probability_table(table, probs, classes)}
    score = probs[:, 1] if probs.shape[1] == 2 else probs.max(axis=1)
    out["decisions"] = table[["path", "patient_id", "slide_id", "site"]].assign(
        score=np.round(score, 10), decision=decisions(probs, threshold, classes))
    cols = prob_columns(classes)
    frame = pd.DataFrame(probs, columns=cols).assign(label=table.label.to_numpy(),
                                                     patient_id=table.patient_id.to_numpy(),
                                                     slide_id=table.slide_id.to_numpy())
    for level, by in (("slides", "slide_id"), ("patients", "patient_id")):
        agg = aggregate(frame, by=by, prob_cols=cols)
        agg["decision"] = decisions(agg[cols].to_numpy(), threshold, classes)
        agg[cols] = agg[cols].round(10)
        agg = agg.rename(columns={"n_samples": "n_patches"})
        keys = [by, "patient_id"] if by != "patient_id" else [by]
        if by != "patient_id":
            agg = agg.drop(columns=["mixed_patients"])
        out[level] = agg[[*keys, "n_patches", "label", "mixed_labels", *cols, "decision"]]
    return out


def level_counts(tables: dict[str, pd.DataFrame], classes: list[str]) -> dict[str, Any]:
    """Decisions per class at each level, for the sidecar and the summary line."""
    return {level: {c: int((tables[name]["decision"] == c).sum()) for c in classes}
            for level, name in (("patch", "decisions"), ("slide", "slides"), ("patient", "patients"))}
