"""Render the model card Markdown from the card JSON alone (no other input, no clock).

Hugging Face front matter (`model-index`, one result per cohort and per site, CIs in each metric's
`args`), then the sections of Mitchell et al.'s Model Cards, the seed's validation checklist,
figures, the environment, provenance and every flag. `pathtrail verify` calls `render_markdown`
on the stored JSON and compares the result with the stored Markdown byte for byte.
"""

from __future__ import annotations

import html
import re
from typing import Any

import yaml

from pathtrail.card import sections, status_text
from pathtrail.card.labels import per_label
from pathtrail.card.reporting import render_reporting
from pathtrail.card.text import cohorts
from pathtrail.card.values import get, number
from pathtrail.core.text import md_inline, printable

# (eval.json key, Hugging Face metric type, display name); CIs come from `<key>_ci_low/_ci_high`.
INDEX_METRICS = (
    ("auroc", "roc_auc", "AUROC"),
    ("auprc", "average_precision", "AUPRC"),
    ("sensitivity", "recall", "Sensitivity"),
    ("specificity", "specificity", "Specificity"),
    ("balanced_accuracy", "balanced_accuracy", "Balanced accuracy"),
    ("brier", "brier_score", "Brier score"),
    ("ece", "expected_calibration_error", "ECE"),
)
_NUMBERISH = re.compile(r"^[-+]?[0-9._]*[0-9][0-9a-fA-F._:+-]*$|^[-+]?\.?(inf|nan)$", re.IGNORECASE)


class _SafeQuotingDumper(yaml.SafeDumper):
    """A safe dumper that quotes any string a YAML 1.1 or 1.2 reader could take for a number."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    style = "'" if _NUMBERISH.match(value) else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_SafeQuotingDumper.add_representer(str, _str)


def dump_yaml(obj: Any) -> str:
    return yaml.dump(
        obj,
        Dumper=_SafeQuotingDumper,
        sort_keys=True,
        allow_unicode=True,
        default_flow_style=False,
        width=100,
    )


def render_markdown(card: dict[str, Any]) -> str:
    parts = [
        f"---\n{dump_yaml(front_matter(card))}---\n",
        status_text.banner(card),
        f"# Model card: {md_inline(card['name'])}\n",
        sections.model_details(card),
        sections.intended_use(card),
        sections.factors(card),
        sections.metrics(card),
        sections.evaluation_data(card),
        sections.training_data(card),
        sections.quantitative(card),
        per_label(card),
        sections.checklist(card),
        status_text.release_criteria(card),
        render_reporting(card.get("reporting") or {}),
        sections.figures(card),
        sections.ethics(card),
        sections.caveats(card),
        sections.environment(card),
        sections.provenance(card),
        sections.every_flag(card),
    ]
    return "\n".join(p.rstrip("\n") + "\n" for p in parts if p)


# ----------------------------------------------------------------------------------- front matter
def front_matter(card: dict[str, Any]) -> dict[str, Any]:
    prov = card["provenance"]
    meta: dict[str, Any] = {
        "library_name": "pytorch",
        "pipeline_tag": "image-classification",
        "tags": ["histopathology", "image-classification", "pathtrail", "model-card"],
        "pathtrail": {
            "release_status": card["release_status"],
            "git_commit": prov.get("git_commit"),
            "git_dirty": prov.get("git_dirty"),
            "params_sha256": card["params_sha256"],
            "model_sha256": prov.get("model_sha256"),
            "audit_chain_head": get(card, "audit.chain_head"),
        },
    }
    results = [
        r for r in (_index_result(name, name, metrics) for name, metrics in cohorts(card)) if r
    ]
    results += [
        r
        for r in (
            _index_result(plain(f"site {site}"), plain(f"per_site.{site}"), m, INDEX_METRICS[:1])
            for site, m in sorted((get(card, "metrics.eval.per_site") or {}).items())
        )
        if r
    ]
    if results:
        meta["model-index"] = [{"name": plain(str(card["name"])), "results": results}]
    return meta


def plain(text: str) -> str:
    """A user string for the YAML front matter: one line, control characters visible, and `<` `>`
    `&` as entities, so a renderer that shows front matter as Markdown gets no HTML from it."""
    return html.escape(printable(text), quote=False)


def _index_result(
    name: str, kind: str, m: dict[str, Any], which: tuple[tuple[str, str, str], ...] = INDEX_METRICS
) -> dict[str, Any] | None:
    """One model-index result: the cohort's metrics, then its patient-level AUROC."""
    metrics = [_index_metric(m, key, hf, label) for key, hf, label in which]
    patient = m.get("patient_level") or {}
    metrics.append(_index_metric(patient, "auroc", "roc_auc", "Patient-level AUROC"))
    metrics = [x for x in metrics if x]
    if not metrics:
        return None
    return {
        "task": {"type": "image-classification", "name": "Image Classification"},
        "dataset": {"name": name, "type": kind},
        "metrics": metrics,
    }


def _index_metric(m: dict[str, Any], key: str, hf_type: str, label: str) -> dict[str, Any] | None:
    value = number(m.get(key))
    if value is None:
        return None
    args = {
        k: m.get(f"{key}{suffix}") for k, suffix in (("ci_low", "_ci_low"), ("ci_high", "_ci_high"))
    }
    args |= {
        "ci_level": m.get("ci_level"),
        "n_samples": m.get("n_samples"),
        "n_patients": m.get("n_patients"),
    }
    out = {"type": hf_type, "name": label, "value": value}
    args = {k: v for k, v in args.items() if v is not None}
    return out | {"args": args} if args else out
