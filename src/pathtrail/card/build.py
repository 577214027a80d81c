"""The model card: a pure function from the pipeline's outputs to a JSON record and its Markdown.

`build_card(CardInputs) -> (card, markdown)`. The inputs are plain values (the stage reads the
files); nothing here reads a clock, the environment or the disk, so the same inputs always give the
same bytes. The Markdown is rendered from the card JSON alone (`pathtrail.card.render.render_markdown`),
and the JSON stores `markdown_sha256`, the sha256 of the Markdown's UTF-8 bytes. `pathtrail verify`
re-renders the Markdown from the JSON and compares it byte for byte, so every number shown in the
Markdown is proven to come from the JSON, and the JSON's numbers are compared with the metrics
files.

The audit `chain_head` recorded in a card is the hash of the last trail entry of a stage other than
`model_card` when the card was built: it commits to every pipeline run the card summarises (the
chain covers all entries before it), and re-running only the card stage gives the same card.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pathtrail.card.checklist import checklist, gate_reasons
from pathtrail.card.labels import label_fields
from pathtrail.card.release import criteria_results, is_demo_data, release_facts, warnings
from pathtrail.card.render import render_markdown
from pathtrail.card.reporting import reporting_checklists
from pathtrail.card.status import MEANINGS, decide
from pathtrail.card.values import CARD_FORMAT, CARD_STAGE, VALIDATION_KEYS, get
from pathtrail.core.hashing import canonical_json, digest, sha256_bytes

# What the card's hashes cover (a reader compares them with the files' own).
PARAMS_SCOPE = "every section of params.yaml as shown in `params` (absolute paths redacted)"
TRAINING_PARAMS_SCOPE = ("the data, model, train and execution sections, as hashed into models/model.pt by the "
                         "train stage (a disabled train.stain_augment left out)")


@dataclass(frozen=True)
class CardInputs:
    """Everything a card is built from. Optional inputs may be None/empty: the card then says so."""

    params: dict[str, Any]
    intended_use: str = ""
    train_metrics: dict[str, Any] | None = None
    compile_check: dict[str, Any] | None = None
    eval_metrics: dict[str, Any] | None = None
    validation: dict[str, Any] | None = None
    split: dict[str, Any] | None = None
    normalization: dict[str, Any] | None = None
    stain_reference: dict[str, Any] = field(default_factory=dict)  # path, sha256, fit_patches, ...
    model_sha256: str | None = None
    model_metadata: dict[str, Any] = field(default_factory=dict)  # models/model.pt's metadata
    epochs: list[dict[str, Any]] = field(default_factory=list)
    figures: dict[str, str] = field(
        default_factory=dict
    )  # path relative to the card folder -> sha256
    input_hashes: dict[str, str | None] = field(default_factory=dict)  # every file read -> sha256
    dvc_lock: dict[str, Any] | None = None  # parsed dvc.lock
    manifests: dict[str, dict[str, Any]] = field(default_factory=dict)
    chain_head: str | None = None
    chain_head_entry: dict[str, Any] = field(default_factory=dict)  # seq, stage, action of that entry
    criteria_lock: dict[str, Any] | None = None  # the evaluate run's `criteria_locked` entry (seq, sha256)
    upstream_dirty: list[str] = field(default_factory=list)  # stage runs the trail records as dirty
    execution: dict[str, Any] = field(default_factory=dict)  # execution_record(entries)
    trail: str = "audit/trail.jsonl"
    git: dict[str, Any] = field(default_factory=dict)  # provenance.GitState.as_dict()
    environment: dict[str, Any] = field(default_factory=dict)  # provenance.environment()


def build_card(inputs: CardInputs) -> tuple[dict[str, Any], str]:
    """The card JSON (as it will be written: JSON-normalised) and its Markdown text."""
    card = normalise(assemble(inputs))
    markdown = render_markdown(card)
    card["markdown_sha256"] = sha256_bytes(markdown.encode("utf-8"))
    return card, markdown


def normalise(obj: Any) -> Any:
    """What the object becomes after a JSON round trip (tuples to lists, NaN to None)."""
    return json.loads(canonical_json(obj))


def assemble(inp: CardInputs) -> dict[str, Any]:
    params = inp.params
    name = get(params, "card.name") or "model"
    compile_check = inp.compile_check or {}
    meta = inp.model_metadata or {}
    demo = is_demo_data(inp.dvc_lock, params)
    card: dict[str, Any] = {
        "card_format": CARD_FORMAT,
        "name": name,
        "intended_use": inp.intended_use.strip(),
        "model": {
            "arch": get(params, "model.arch"),
            "width": get(params, "model.width"),
            "dropout": get(params, "model.dropout"),
            "classes": get(params, "data.classes"),
            "sha256": inp.model_sha256,
            "training_params_sha256": meta.get("params_sha256"),
            "initial_weights_sha256": meta.get("local_weights_sha256"),  # model.weights_path's file (None: random)
            "training_params_scope": TRAINING_PARAMS_SCOPE,
        },
        "params": params,
        "params_sha256": digest(params),
        "params_scope": PARAMS_SCOPE,
        "metrics": {"eval": inp.eval_metrics, "train": inp.train_metrics},
        "training_curves": inp.epochs,
        "compile_check": inp.compile_check,
        "data": {
            "validation": {k: inp.validation[k] for k in VALIDATION_KEYS if k in inp.validation}
            if inp.validation
            else None,
            "split": inp.split,
            "normalization": _normalization(inp.normalization),
            "demo": demo,
        },
        "figures": dict(sorted(inp.figures.items())),
        "environment": {
            **inp.environment,
            "determinism": determinism(params),
            "execution": inp.execution or {"honoured": False, "stages": {}},
            "compile": compile_settings(params, compile_check),
        },
        "provenance": {
            **{
                k: inp.git.get(k)
                for k in (
                    "git_commit",
                    "git_branch",
                    "git_remote_url",
                    "git_dirty",
                    "git_modified",
                    "git_commit_date",
                    "git_changed",
                    "git_n_changed",
                    "params_changed",
                )
            },
            "upstream_dirty": inp.upstream_dirty,
            "dvc_lock": lock_stage_hashes(inp.dvc_lock),
            "manifests": inp.manifests,
            "stain_reference": inp.stain_reference,
            "model_sha256": inp.model_sha256,
            "inputs": dict(sorted(inp.input_hashes.items())),
        },
        "audit": {"chain_head": inp.chain_head, **{f"chain_head_{k}": v for k, v in inp.chain_head_entry.items()},
                  "trail": inp.trail},
    }
    card |= label_fields(params, inp.eval_metrics)  # multi-label and multi-class models only (card.labels)
    card["release"] = release_section(inp, params, demo)
    card["checklist"] = checklist(card)
    card["release_status"], card["release_reasons"] = status_of(card)
    card["status_meanings"] = dict(MEANINGS)
    card["reporting"] = reporting_checklists(card)
    return card


def release_section(inp: CardInputs, params: dict[str, Any], demo: bool) -> dict[str, Any]:
    """The pre-specified criteria with their verdicts, the facts they read, the lock, and warnings."""
    release = get(params, "release") or {}
    facts = release_facts(eval_metrics=inp.eval_metrics, compile_check=inp.compile_check,
                          normalization=inp.normalization, split=inp.split, params=params,
                          intended_use=inp.intended_use, demo=demo)
    verdicts = criteria_results(release.get("criteria") or {}, facts)
    lock = inp.criteria_lock or {}
    verdicts["locked_before_evaluation"] = {
        "seq": lock.get("seq"),
        "criteria_sha256": lock.get("criteria_sha256"),
        "changed_after_test": lock.get("changed_after_test") or [],
        "matches": bool(lock) and lock.get("criteria_sha256") == verdicts["criteria_sha256"],
    }
    shown = {k: v for k, v in facts.items() if not k.startswith(("internal_test.", "external.", "per_site.",
                                                                   "domain_shift."))}
    return {**verdicts, "facts": shown,
            "warnings": warnings(eval_metrics=inp.eval_metrics, split=inp.split, facts=facts,
                                 min_patients=int(release.get("min_ci_patients") or 0),
                                 max_fallback=float(release.get("max_fallback_fraction") or 1.0))}


def status_of(card: dict[str, Any]) -> tuple[str, list[str]]:
    """The status from the card's own fields (the card stage and `pathtrail verify` both call it)."""
    prov = card["provenance"]
    source: list[str] = []
    if not prov.get("git_commit"):
        source.append("no git commit: the code is not under version control")
    if prov.get("git_dirty"):
        modified = prov.get("git_modified") or []
        shown = ", ".join(modified[:10]) + (f" and {len(modified) - 10} more" if len(modified) > 10 else "")
        source.append(f"source differs from its commit: {shown or 'unknown'}")
    source += [f"ran from modified source: {u}" for u in prov.get("upstream_dirty") or []]
    if not card["model"].get("sha256"):
        source.append("model weights hash missing")
    return decide(source_reasons=source, params_changed=list(prov.get("params_changed") or []),
                  gate_reasons=gate_reasons(card))


def _normalization(report: dict[str, Any] | None) -> dict[str, Any] | None:
    """The normalization report, with the reference's list of fit-patch hashes summarised (the
    reference file's own sha256 is `provenance.stain_reference.sha256`)."""
    if not report:
        return report
    out = {k: v for k, v in report.items() if k != "reference_sha256"}
    fit = report.get("reference_sha256")
    if isinstance(fit, list):
        out["reference_fit_patches"] = len(fit)
        out["reference_fit_patches_sha256"] = digest(fit)
    return out


def upstream_dirty(entries: Iterable[dict[str, Any]]) -> list[str]:
    """The latest successful run of each stage (not the card's) whose start entry says the source
    was modified: "stage (trail seq N): files"."""
    out = []
    for stage, start in sorted(latest_successful_starts(entries).items()):
        if stage != CARD_STAGE and start.get("git_dirty"):
            files = ", ".join(map(str, (start.get("git_modified") or [])[:5])) or "unknown files"
            out.append(f"stage {stage} (trail seq {start.get('seq')}): {files}")
    return out


def execution_record(entries: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """The execution contract as each upstream stage's latest successful run honoured it (from the
    `execution` record of its start entry): {honoured, stages: {stage: {...} or None}}. `honoured`
    only when every stage recorded it, none lifted it (threads 0, cpu_isa native) and none reports
    a problem."""
    fields = ("params", "lifted", "honoured", "threads", "aten_cpu_capability", "problems")
    stages: dict[str, Any] = {}
    for stage, start in sorted(latest_successful_starts(entries).items()):
        if stage != CARD_STAGE:
            ex = start.get("execution")
            stages[stage] = {k: ex.get(k) for k in fields} if isinstance(ex, dict) else None
    ok = bool(stages) and all(v and v.get("honoured") is True and v.get("lifted") is False
                              for v in stages.values())
    return {"honoured": ok, "stages": stages}


MODEL = "models/model.pt"


def criteria_lock(entries: Iterable[dict[str, Any]]) -> dict[str, Any] | None:
    """The `criteria_locked` entry of the latest successful evaluate run: {seq, criteria_sha256,
    changed_after_test}. The last lists earlier evaluate runs of the same model (same weights sha256
    at their start) that locked other criteria: once a model's test data was opened, criteria
    changed for it are no longer pre-specified."""
    starts: dict[Any, dict[str, Any]] = {}
    locks: list[tuple[dict[str, Any], Any]] = []  # (criteria_locked entry, model sha256 of its run)
    found = None
    for e in entries:
        if e.get("stage") != "evaluate":
            continue
        if e.get("action") == "start":
            starts[e.get("run_id")] = e
        elif e.get("action") == "criteria_locked":
            model = ((starts.get(e.get("run_id")) or {}).get("inputs") or {}).get(MODEL)
            locks.append((e, model))
        elif e.get("action") == "end" and e.get("outcome") == "ok":
            found = next((lk for lk in reversed(locks) if lk[0].get("run_id") == e.get("run_id")), None)
    if not found:
        return None
    lock, model = found
    earlier = [{"seq": e.get("seq"), "criteria_sha256": e.get("criteria_sha256")}
               for e, m in locks if e.get("seq") is not None and lock.get("seq") is not None
               and e["seq"] < lock["seq"] and model and m == model
               and e.get("criteria_sha256") != lock.get("criteria_sha256")]
    return {"seq": lock.get("seq"), "criteria_sha256": lock.get("criteria_sha256"), "changed_after_test": earlier}


# ----------------------------------------------------------------------------- derived sections
def determinism(params: dict[str, Any]) -> dict[str, Any]:
    keys = (
        "train.seed",
        "train.deterministic",
        "train.cudnn_benchmark",
        "train.allow_tf32",
        "train.amp",
        "data.split.seed",
        "eval.seed",
        "compile_check.fallback_random",
        "execution.threads",
        "execution.cpu_isa",
    )
    return {k: get(params, k) for k in keys}


def compile_settings(params: dict[str, Any], report: dict[str, Any]) -> dict[str, Any]:
    return {
        "use_compile": get(params, "train.use_compile"),
        "compile_mode": get(params, "train.compile_mode"),
        "backend": report.get("backend"),
        "fallback_random": get(params, "compile_check.fallback_random"),
        "checked_with_torch": report.get("torch_version"),
    }


def lock_stage_hashes(lock: dict[str, Any] | None) -> dict[str, dict[str, dict[str, Any]]]:
    """Per dvc.lock stage, the md5 of each dep and out (the card's own stage is left out: its lock
    entry is written only after it runs, so what is there belongs to an earlier card)."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for stage, body in sorted(((lock or {}).get("stages") or {}).items()):
        if stage == CARD_STAGE:
            continue
        out[stage] = {
            kind: {str(item.get("path")): item.get("md5") for item in body.get(kind) or []}
            for kind in ("deps", "outs")
        }
    return out


def manifest_hashes(
    validation: dict[str, Any] | None, entries: list[dict[str, Any]]
) -> dict[str, dict[str, Any]]:
    """Each cohort's manifest path and sha256: from the validation report when it records one,
    else from the start entry of the latest successful `validate` run in the audit trail."""
    started = latest_successful_starts(entries).get("validate", {}).get("inputs") or {}
    out: dict[str, dict[str, Any]] = {}
    for cohort, summary in sorted(((validation or {}).get("cohorts") or {}).items()):
        if not isinstance(summary, dict) or "manifest" not in summary:
            continue
        path = str(summary["manifest"])
        sha, source = summary.get("manifest_sha256"), "validation report"
        if sha is None and started.get(path):
            sha, source = started[path], "audit trail (validate start entry)"
        out[cohort] = {"path": path, "sha256": sha, "source": source if sha else None}
    return out


def latest_successful_starts(entries: Iterable[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per stage, the start entry of its latest run that ended `ok`."""
    starts: dict[str, dict[str, Any]] = {}
    out: dict[str, dict[str, Any]] = {}
    for e in entries:
        if e.get("action") == "start":
            starts[e.get("run_id")] = e
        elif e.get("action") == "end" and e.get("outcome") == "ok" and e.get("run_id") in starts:
            out[e.get("stage")] = starts[e["run_id"]]
    return out


def card_chain_head(entries: list[dict[str, Any]], genesis: str) -> tuple[str, dict[str, Any]]:
    """The hash of the last entry not written by the card stage itself (see the module docstring),
    and that entry's seq, stage and action (so a reader can find it in the trail)."""
    for e in reversed(entries):
        if e.get("stage") != CARD_STAGE and e.get("entry_hash"):
            return str(e["entry_hash"]), {"seq": e.get("seq"), "stage": e.get("stage"), "action": e.get("action")}
    return genesis, {"seq": None, "stage": None, "action": None}


def read_epochs(path: str | Path) -> list[dict[str, Any]]:
    """Rows of `plots/train/epochs.csv` with numbers parsed (ints stay ints, empty cells None)."""
    with open(path, encoding="utf-8", newline="") as f:
        return [{k: _parse_cell(v) for k, v in row.items()} for row in csv.DictReader(f)]


def _parse_cell(text: str | None) -> Any:
    if text is None or text == "":
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text
