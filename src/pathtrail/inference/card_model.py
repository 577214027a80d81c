"""The model a card describes, loaded only when its files are the card's.

`load_card_model` reads the card once (its sha256 is taken from the bytes it parses), then the
model weights and the stain reference it names, each read once into memory and hashed: a file
whose sha256 differs from the card's record is refused before anything is scored, naming the file,
both hashes and the fix. The weights are unpickled only after the hash matched, with
`weights_only=True`. The card itself is checked for edits the card can reveal alone: its params
against its `params_sha256`, its training params against the hash the weights carry
(`review.card_release.training_params_problems`), its two model hashes against each other, and
its threshold against the `metrics/eval.json` it records, when that file is present, and its stain
params against those its normalization report records (tests/stages/test_predict.py::test_*_refused).

`release_gate` is `--require-release`: the card must be RELEASED, i.e. `pathtrail verify
--release` passes on the repository it lies in (a RELEASE CANDIDATE with a valid signature by a
trusted key over files that have not changed since).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pathtrail.card.values import RELEASED, get
from pathtrail.core.errors import PathTrailError
from pathtrail.core.files import repo_path, write_bytes
from pathtrail.core.hashing import digest, loads_unique, sha256_bytes
from pathtrail.core.text import printable
from pathtrail.data.access import Refusal, read_regular

MAX_CARD_BYTES = 64 << 20
MAX_REFERENCE_BYTES = 16 << 20
MAX_MODEL_BYTES = 16 << 30
DEFAULT_MODEL = "models/model.pt"


@dataclass(frozen=True)
class CardModel:
    """A card and the files it names, checked: the model (loaded), the stain reference (parsed)."""

    card_path: Path
    card: dict[str, Any]
    card_sha256: str
    root: Path
    model: Any  # torch.nn.Module, in eval mode
    metadata: dict[str, Any]
    model_path: Path
    model_sha256: str
    reference: dict[str, Any]
    reference_path: Path
    reference_sha256: str

    @property
    def params(self) -> dict[str, Any]:
        return self.card["params"]

    @property
    def classes(self) -> list[str]:
        return [str(c) for c in self.metadata["classes"]]

    @property
    def threshold(self) -> float | None:
        return get(self.card, "metrics.eval.threshold")

    def describe(self) -> dict[str, Any]:
        """What every output's sidecar says about the card and the files it was checked against."""
        return {"card": {"path": self.card_path.as_posix(), "name": self.card.get("name"),
                         "sha256": self.card_sha256, "git_commit": get(self.card, "provenance.git_commit"),
                         "git_dirty": get(self.card, "provenance.git_dirty"),
                         "release_status": self.card.get("release_status")},
                "model": {"path": self.model_path.as_posix(), "sha256": self.model_sha256},
                "stain_reference": {"path": self.reference_path.as_posix(), "sha256": self.reference_sha256},
                "threshold": self.threshold, "threshold_rule": get(self.card, "metrics.eval.threshold_rule"),
                "classes": self.classes}


def read_bounded(path: str | Path, limit: int, what: str) -> bytes:
    data = read_regular(path, limit)
    if isinstance(data, Refusal):
        raise PathTrailError(f"{what} '{printable(str(path))}': {data.reason} ({data.hint})")
    return data


def read_card(path: str | Path) -> tuple[dict[str, Any], str]:
    """(the card JSON, the sha256 of the bytes it was parsed from); refuses what is not a card."""
    raw = read_bounded(path, MAX_CARD_BYTES, "--card")
    try:
        card = loads_unique(raw)
    except (UnicodeError, ValueError, RecursionError) as exc:
        raise PathTrailError(f"--card '{printable(str(path))}': not readable as JSON ({type(exc).__name__}); "
                             "pass a model card, model_cards/NAME.json") from None
    missing = [k for k in ("params", "params_sha256", "model.sha256", "model.classes",
                           "provenance.stain_reference.sha256", "metrics.eval")
               if not isinstance(card, dict) or get(card, k) is None]
    if missing:
        raise PathTrailError(f"--card '{printable(str(path))}': not a PathTrail model card (no "
                             f"{', '.join(missing)}); pass model_cards/NAME.json as the model_card stage wrote it")
    return card, sha256_bytes(raw)


def card_file(root: Path, rel: Any, what: str) -> Path:
    path, problem = repo_path(root, rel, what)
    if problem or path is None:
        raise PathTrailError(f"{problem}; pass the file with its option")
    return path


def model_path_of(card: dict[str, Any]) -> str:
    """The weights file the card names: the input recorded with the model's sha256."""
    inputs = get(card, "provenance.inputs") or {}
    named = [k for k, v in inputs.items() if v == get(card, "model.sha256") and str(k).endswith(".pt")] \
        if isinstance(inputs, dict) else []
    return named[0] if named else DEFAULT_MODEL


def checked_bytes(path: Path, expected: Any, what: str, card_path: Path, limit: int, fix: str) -> tuple[bytes, str]:
    data = read_bounded(path, limit, what)
    sha = sha256_bytes(data)
    if sha != expected:
        raise PathTrailError(
            f"{what} '{printable(str(path))}' has sha256 {sha[:16]}… but the card '{printable(str(card_path))}' "
            f"records {str(expected)[:16]}…: it is not the card's file, so nothing was scored. {fix}")
    return data, sha


def load_card_model(card_path: str | Path, workdir: Path, *, root: str | Path = ".",
                    model: str | Path | None = None, stain_reference: str | Path | None = None) -> CardModel:
    """Read and check the card, its weights and its stain reference (see the module docstring).
    `workdir` receives a private copy of the checked weights, which is what is loaded."""
    from pathtrail.review.card_release import training_params_problems
    from pathtrail.train.model_file import read_model

    card_path, root = Path(card_path), Path(root)
    card, card_sha = read_card(card_path)
    problems = []
    if digest(card["params"]) != card["params_sha256"]:
        problems.append("its params are not those its params_sha256 was computed from")
    if get(card, "provenance.model_sha256") not in (None, get(card, "model.sha256")):
        problems.append("model.sha256 and provenance.model_sha256 differ")
    fix_model = (f"Restore the card's weights (`dvc pull` or `dvc checkout {model_path_of(card)}`), or pass "
                 "the card that describes these weights.")
    mpath = Path(model) if model is not None else card_file(root, model_path_of(card), "the card's model")
    data, model_sha = checked_bytes(mpath, get(card, "model.sha256"), "model", card_path, MAX_MODEL_BYTES, fix_model)
    copy = write_bytes(data, workdir / "model.pt")
    del data
    problems += training_params_problems(card, copy)
    rel = get(card, "provenance.stain_reference.path")
    rpath = Path(stain_reference) if stain_reference is not None else card_file(root, rel, "the card's stain reference")
    raw, ref_sha = checked_bytes(rpath, get(card, "provenance.stain_reference.sha256"), "stain reference",
                                 card_path, MAX_REFERENCE_BYTES,
                                 f"Restore it (`dvc pull` or `dvc checkout {rel}`), or pass the card it belongs to.")
    problems += threshold_problems(card, root) + normalization_problems(card)
    if problems:
        raise PathTrailError(f"the card '{printable(str(card_path))}' was edited after it was built: "
                             + "; ".join(printable(p) for p in problems)
                             + ". Nothing was scored; rebuild it (`dvc repro -s model_card`) or restore it from git")
    try:
        net, meta = read_model(copy)
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise PathTrailError(f"model '{printable(str(mpath))}': its sha256 is the card's, but it cannot be "
                             f"loaded as a PathTrail model ({type(exc).__name__}: {printable(str(exc))[:160]})") from None
    return CardModel(card_path, card, card_sha, root, net, meta, mpath, model_sha, json.loads(raw), rpath, ref_sha)


def threshold_problems(card: dict[str, Any], root: Path) -> list[str]:
    """The card's threshold is the one in the metrics/eval.json it records (when that file is here)."""
    recorded = (get(card, "provenance.inputs") or {}).get("metrics/eval.json")
    path, problem = repo_path(root, "metrics/eval.json", "metrics")
    if recorded is None or problem or path is None or not path.is_file():
        return []
    data = read_bounded(path, MAX_CARD_BYTES, "metrics")
    if sha256_bytes(data) != recorded:
        return [(f"metrics/eval.json here is not the one the card records (sha256 {sha256_bytes(data)[:12]}…, "
                f"card {str(recorded)[:12]}…)")]
    try:
        threshold = loads_unique(data).get("threshold")
    except (UnicodeError, ValueError, AttributeError):
        return ["metrics/eval.json is not readable"]
    shown = get(card, "metrics.eval.threshold")
    return [] if threshold == shown else [f"its threshold {shown} is not metrics/eval.json's {threshold}"]


def normalization_problems(card: dict[str, Any]) -> list[str]:
    """The card's stain params are those its normalization report was made with."""
    report = get(card, "data.normalization") or {}
    pairs = (("enable_stain_norm", "enabled"), ("scope", "scope"), ("fallback", "fallback"))
    return [f"params stain.{p} = {get(card, f'params.stain.{p}')!r} but its normalization ran with {report[r]!r}"
            for p, r in pairs if r in report and get(card, f"params.stain.{p}") != report[r]]


def release_gate(card_path: str | Path, root: str | Path = ".", trusted_keys: list[str] | None = None) -> dict[str, Any]:
    """`--require-release`: the card's repository passes `pathtrail verify --release` (see the module
    docstring); returns what the sidecar records, or raises naming the first problems."""
    from pathtrail.review.verify import verify

    root, where = Path(root).resolve(), Path(card_path).resolve()
    if where.parent != root / "model_cards":
        raise PathTrailError(f"--require-release: the card '{printable(str(card_path))}' is not in "
                             f"{printable(str(root / 'model_cards'))}; run from the repository that holds it, "
                             "or pass --root")
    report = verify(root, release=True, trusted_keys=trusted_keys)
    if not report.ok:
        shown = report.problems[:5] or ([report.hint] if report.hint else [])
        raise PathTrailError("--require-release: the card is not RELEASED (`pathtrail verify --release` fails): "
                             + "; ".join(printable(str(p)) for p in shown)
                             + ". Nothing was scored; sign a release candidate (`pathtrail sign`), or drop "
                               "--require-release")
    notes = [n for c in report.checks for n in c.notes if "VALID signature" in n]
    return {"required": True, "status": RELEASED, "signatures": notes}
