"""The model card: a pure function from the pipeline's outputs to a JSON record and its Markdown.

`build_card(CardInputs) -> (card, markdown)`. The inputs are plain values (the stage reads the
files); nothing here reads a clock, the environment or the disk, so the same inputs always give the
same bytes. The Markdown is rendered from the card JSON alone (`card_markdown.render_markdown`),
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

from pathtrail.io import canonical_json, sha256_bytes
from pathtrail.params import params_sha256

CARD_FORMAT = 1
CARD_STAGE = "model_card"
RELEASE_CANDIDATE = "RELEASE CANDIDATE"
DRAFT = "DRAFT – NOT FOR RELEASE"
COHORTS = ("internal_test", "external")
VALIDATION_KEYS = (
    "status",
    "n_errors",
    "n_warnings",
    "error_counts",
    "warning_counts",
    "cohorts",
    "rules",
)


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
    stain_reference_sha256: str | None = None
    model_sha256: str | None = None
    epochs: list[dict[str, Any]] = field(default_factory=list)
    figures: dict[str, str] = field(
        default_factory=dict
    )  # path relative to the card folder -> sha256
    input_hashes: dict[str, str | None] = field(default_factory=dict)  # every file read -> sha256
    dvc_lock: dict[str, Any] | None = None  # parsed dvc.lock
    manifests: dict[str, dict[str, Any]] = field(default_factory=dict)
    chain_head: str | None = None
    trail: str = "audit/trail.jsonl"
    git: dict[str, Any] = field(default_factory=dict)  # provenance.GitState.as_dict()
    environment: dict[str, Any] = field(default_factory=dict)  # provenance.environment()


def build_card(inputs: CardInputs) -> tuple[dict[str, Any], str]:
    """The card JSON (as it will be written: JSON-normalised) and its Markdown text."""
    from pathtrail.card_markdown import render_markdown

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
        },
        "params": params,
        "params_sha256": params_sha256(params),
        "metrics": {"eval": inp.eval_metrics, "train": inp.train_metrics},
        "training_curves": inp.epochs,
        "compile_check": inp.compile_check,
        "data": {
            "validation": {k: inp.validation[k] for k in VALIDATION_KEYS if k in inp.validation}
            if inp.validation
            else None,
            "split": inp.split,
            "normalization": inp.normalization,
        },
        "figures": dict(sorted(inp.figures.items())),
        "environment": {
            **inp.environment,
            "determinism": determinism(params),
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
                )
            },
            "dvc_lock": lock_stage_hashes(inp.dvc_lock),
            "manifests": inp.manifests,
            "stain_reference_sha256": inp.stain_reference_sha256,
            "model_sha256": inp.model_sha256,
            "inputs": dict(sorted(inp.input_hashes.items())),
        },
        "audit": {"chain_head": inp.chain_head, "trail": inp.trail},
    }
    card["checklist"] = checklist(card)
    card["release_status"], card["release_reasons"] = release_status(card)
    return card


# ----------------------------------------------------------------------------------- small helpers
def get(tree: Any, dotted: str, default: Any = None) -> Any:
    """`tree["a"]["b"]` for "a.b"; `default` when any step is missing."""
    node = tree
    for key in dotted.split("."):
        if not isinstance(node, dict) or key not in node:
            return default
        node = node[key]
    return node


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted keys for nested mappings; lists and scalars are leaves; an empty mapping is a leaf."""
    if not isinstance(tree, dict) or (not tree and prefix):
        return {prefix: tree}
    out: dict[str, Any] = {}
    for key in sorted(tree, key=str):
        out |= flatten(tree[key], f"{prefix}.{key}" if prefix else str(key))
    return out


def number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def fmt(value: Any, digits: int = 6) -> str:
    x = number(value)
    return "n/a" if x is None else f"{x:.{digits}f}"


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
        "data.num_workers",
        "data.persistent_workers",
        "compile_check.fallback_random",
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


def card_chain_head(entries: list[dict[str, Any]], genesis: str) -> str:
    """The hash of the last entry not written by the card stage itself (see the module docstring)."""
    for e in reversed(entries):
        if e.get("stage") != CARD_STAGE and e.get("entry_hash"):
            return str(e["entry_hash"])
    return genesis


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


# ------------------------------------------------------------------------ checklist and release
def _item(item: str, passed: bool, evidence: str) -> dict[str, Any]:
    return {"item": item, "passed": bool(passed), "evidence": evidence}


def checklist(card: dict[str, Any]) -> list[dict[str, Any]]:
    """The seed document's validation checklist, each line decided from the card's own values."""
    params, cc = card["params"], card.get("compile_check") or {}
    eval_metrics = get(card, "metrics.eval") or {}
    status = cc.get("status", "missing" if not cc else "unknown")
    auc_e, auc_c, delta = (
        number(cc.get("auroc_eager")),
        number(cc.get("auroc_compiled")),
        number(cc.get("auroc_delta")),
    )
    tol = (
        number(cc.get("auc_tolerance"))
        or number(get(params, "compile_check.auc_tolerance"))
        or 0.001
    )
    items = [
        _item(
            "Trained with and without torch.compile",
            status in ("passed", "failed") and auc_e is not None and auc_c is not None,
            f"compile_check status {status}; validation AUROC eager {fmt(auc_e)}, compiled {fmt(auc_c)}",
        ),
        _item(
            f"AUROC within ±{tol:g} (eager vs compiled)",
            delta is not None and abs(delta) <= tol,
            f"ΔAUROC {fmt(delta)} (paired 95% CI {fmt(cc.get('auroc_delta_ci_low'))} to "
            f"{fmt(cc.get('auroc_delta_ci_high'))}); tolerance ±{tol:g}",
        ),
    ]
    loss_checks = [
        (key, number(cc.get(key)), number(get(params, f"compile_check.{tol_key}")))
        for key, tol_key in (
            ("loss_step0_delta", "loss_step0_tolerance"),
            ("loss_max_abs_delta", "loss_max_tolerance"),
            ("loss_mean_abs_delta", "loss_mean_tolerance"),
        )
    ]
    same_length = cc.get("loss_steps_eager") is not None and cc.get("loss_steps_eager") == cc.get(
        "loss_steps_compiled"
    )
    items.append(
        _item(
            "Loss curves match (eager vs compiled)",
            same_length
            and all(v is not None and t is not None and v <= t for _, v, t in loss_checks),
            "; ".join(f"{k} {fmt(v, 8)} (tolerance {fmt(t, 8)})" for k, v, t in loss_checks)
            + f"; steps eager {cc.get('loss_steps_eager')}, compiled {cc.get('loss_steps_compiled')}",
        )
    )
    ext = eval_metrics.get("external") or {}
    ext_vals = [number(ext.get(k)) for k in ("auroc", "auroc_ci_low", "auroc_ci_high")]
    items.append(
        _item(
            "External cohort validated (AUROC with 95% CI)",
            all(v is not None for v in ext_vals),
            f"external AUROC {fmt(ext_vals[0], 4)} (95% CI {fmt(ext_vals[1], 4)} to {fmt(ext_vals[2], 4)}), "
            f"{ext.get('n_samples', 'n/a')} samples, {ext.get('n_patients', 'n/a')} patients",
        )
    )
    env, prov = card["environment"], card["provenance"]
    items.append(
        _item(
            "PyTorch version and commit hash documented",
            bool(
                env.get("torch_version") and env.get("torch_git_version") and prov.get("git_commit")
            ),
            f"torch {env.get('torch_version')} (PyTorch commit {env.get('torch_git_version')}); "
            f"code commit {prov.get('git_commit')}",
        )
    )
    norm = get(card, "data.normalization") or {}
    cohorts = {k: v for k, v in sorted((norm.get("cohorts") or {}).items()) if isinstance(v, dict)}
    fallback = "; ".join(
        f"{name}: {int(v.get('fallback') or 0)} of {int(v.get('patches') or 0)} patches fell back "
        f"({int(v.get('fallback_slide') or 0)} to their slide's matrix)"
        for name, v in cohorts.items()
    ) or "no per-cohort counts"
    items.append(
        _item(
            "Stain normalization on",
            norm.get("enabled") is True and get(params, "stain.enable_stain_norm") is True,
            f"normalization report enabled={norm.get('enabled')}, scope {norm.get('scope')}; "
            f"stain.enable_stain_norm={get(params, 'stain.enable_stain_norm')}; fallback rule "
            f"{get(params, 'stain.fallback')}; {fallback}",
        )
    )
    seeds = {k: get(params, k) for k in ("train.seed", "data.split.seed", "eval.seed")}
    items.append(
        _item(
            "Seeds and worker seeding recorded",
            all(isinstance(v, int) and not isinstance(v, bool) for v in seeds.values()),
            ", ".join(f"{k}={v}" for k, v in seeds.items())
            + f"; loaders keyed on (seed, epoch, sample index) with their own generators "
            f"(num_workers={get(params, 'data.num_workers')}, "
            f"persistent_workers={get(params, 'data.persistent_workers')})",
        )
    )
    return items


def release_status(card: dict[str, Any]) -> tuple[str, list[str]]:
    """RELEASE CANDIDATE only with a clean, committed tree, a passed gate and a fully passed checklist."""
    prov, reasons = card["provenance"], []
    if not prov.get("git_commit"):
        reasons.append("no git commit: the code is not under version control")
    if prov.get("git_dirty"):
        modified = prov.get("git_modified") or []
        shown = ", ".join(modified[:10]) + (
            f" and {len(modified) - 10} more" if len(modified) > 10 else ""
        )
        reasons.append(f"working tree has uncommitted changes: {shown or 'unknown'}")
    cc = card.get("compile_check") or {}
    if cc.get("status") == "failed" or cc.get("passed") is False:
        reasons.append(
            "compile-check gate failed: "
            + ("; ".join(cc.get("failures") or []) or "see compile_check")
        )
    if not card["model"].get("sha256"):
        reasons.append("model weights hash missing")
    reasons += [
        f"checklist item failed: {c['item']} ({c['evidence']})"
        for c in card["checklist"]
        if not c["passed"]
    ]
    return (DRAFT if reasons else RELEASE_CANDIDATE), reasons
