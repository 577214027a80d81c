"""The `ensemble` card section: members (name, architecture, sha256, compile gate), the
meta-learner (kind, params, seed, sha256) and the ensemble's metrics beside each member's.

Built by the ensemble stage into `model_cards/ensemble/card.json` and rendered into `card.md`
beside it; every string is escaped where it reaches the Markdown (`card.text.cell`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pathtrail.card.text import bullets, metric_table, table, with_ci

SCHEMA = 1


def gate_of(report: Mapping[str, Any]) -> dict[str, Any]:
    """A member's compile gate from its compile_check report: `gate_ok` as the release criterion
    `compile_check.gate_ok` reads it (passed, or compile not used and the check did not fail)."""
    passed, status = report.get("passed"), report.get("status")
    ok = passed is True or (not report.get("use_compile") and status != "failed")
    return {"status": status, "passed": passed, "use_compile": report.get("use_compile"),
            "auroc_delta": report.get("auroc_delta"), "gate_ok": bool(ok)}


def ensemble_section(members: list[dict[str, Any]], meta: Mapping[str, Any], metrics: Mapping[str, Any],
                     params_sha256: str) -> dict[str, Any]:
    """The section (JSON-ready). `members`: name, source, arch, width, model_sha256, params_sha256,
    compile_check (its file) and gate; `meta`: the meta-learner's file content and sha256."""
    return {
        "schema": SCHEMA,
        "kind": "stacking",
        "task": "binary",
        "members": members,
        "gates_ok": all(m["gate"]["gate_ok"] for m in members),
        "meta_learner": dict(meta),
        "threshold": metrics.get("threshold"),
        "threshold_rule": metrics.get("threshold_rule"),
        "metrics": {k: metrics[k] for k in ("internal_test", "external") if k in metrics},
        "member_metrics": metrics.get("members", {}),
        "ensemble_params_sha256": params_sha256,
    }


def render(section: Mapping[str, Any]) -> str:
    """The section as Markdown."""
    meta = section["meta_learner"]
    rows = [[m["name"], m["source"], m["arch"], m["width"], m["model_sha256"], m["gate"]["status"],
             m["gate"]["passed"], m["gate"]["auroc_delta"], m["gate"]["gate_ok"]] for m in section["members"]]
    out = ["# Stacking ensemble\n\n",
           ("A meta-learner fitted on its members' validation-split probabilities only; its threshold is "
            "locked on out-of-fold validation probabilities before the test split or external cohort is read.\n\n"),
           "## Members\n\n",
           table(["Member", "Source", "Architecture", "Width", "Weights sha256", "Compile check", "Passed",
                  "ΔAUROC", "Gate ok"], rows),
           "\n## Meta-learner\n\n",
           bullets([("Kind", meta.get("kind")), ("L2 penalty", meta.get("l2")), ("Folds", meta.get("folds")),
                    ("Fold seed", meta.get("seed")), ("Intercept", meta.get("intercept")),
                    *((f"Weight of {n}", c) for n, c in zip(meta.get("members", []), meta.get("coef", []),
                                                              strict=False)),
                    ("File sha256", meta.get("sha256")),
                    ("Threshold", section.get("threshold")), ("Threshold rule", section.get("threshold_rule")),
                    ("Ensemble params sha256", section.get("ensemble_params_sha256"))]),
           "\n## Results\n"]
    for cohort in ("internal_test", "external"):
        named = []
        if cohort in section["metrics"]:
            named.append(("ensemble", section["metrics"][cohort]))
        named += [(n, m[cohort]) for n, m in sorted(section["member_metrics"].items()) if cohort in m]
        if named:
            out += [f"\n### {cohort.replace('_', ' ')}\n\n", metric_table(named, "Model")]
    summary = [[n, with_ci(m.get("internal_test", {}), "auroc"), with_ci(m.get("external", {}), "auroc")]
               for n, m in [("ensemble", section["metrics"]), *sorted(section["member_metrics"].items())]]
    out += ["\n### AUROC at a glance\n\n", table(["Model", "Internal test", "External"], summary)]
    return "".join(out)
