"""Release facts, the verdict of each pre-specified criterion, and the card's warnings.

`release_facts(...)` flattens what the pipeline measured into dotted names (the keys criteria use):

- `internal_test.<metric>`, `external.<metric>` (any number in metrics/eval.json for that cohort,
  e.g. `external.auroc_ci_low`, `external.n_patients`, `external.patient_level.auroc`),
  `per_site.<site>.<metric>`, `domain_shift.<metric>`;
- `normalization.fallback_fraction` (patches that fell back from stain normalization, all cohorts),
  `normalization.enabled`;
- `split.missing_test_sites`, `split.missing_val_sites` (internal sites absent from that split);
- `compile_check.passed`, `compile_check.gate_ok` (passed, or compile not used and not failed);
- `card.intended_use_written` (a statement that is not the template, nor the demo's text on other
  data), `card.name_chosen` (not the demo's name on other data), `data.demo`.
"""

from __future__ import annotations

import re
from typing import Any

from pathtrail.card.values import flatten, get, number
from pathtrail.config.criteria import check, parse_all
from pathtrail.core.hashing import digest

DEMO_NAME = "pathtrail-demo"
DEMO_MARK = "synthetic demo data"          # the demo's intended-use statement says so
TEMPLATE_MARKS = ("[REPLACE", "Replace this text")
_PLACEHOLDER = re.compile(r"\b(TODO|TBD|FIXME|XXX)\b")


def is_demo_data(lock: dict[str, Any] | None, params: dict[str, Any]) -> bool:
    """The validated data is exactly what the demo_data stage wrote: both manifests lie inside
    data_root, and validate's data_root dep has the md5 of demo_data's out (dvc.lock)."""
    stages = (lock or {}).get("stages") or {}
    root = str(get(params, "data.data_root") or "")
    manifests = [str(get(params, f"data.{k}_manifest") or "") for k in ("internal", "external")]
    if not root or not all(m.startswith(root.rstrip("/") + "/") for m in manifests):
        return False
    outs = {o.get("path"): o.get("md5") for o in (stages.get("demo_data") or {}).get("outs") or []}
    deps = {d.get("path"): d.get("md5") for d in (stages.get("validate") or {}).get("deps") or []}
    return bool(root) and outs.get(root) is not None and outs.get(root) == deps.get(root)


def intended_use_written(text: str, demo: bool) -> bool:
    body = text.strip()
    if not body or any(m.lower() in body.lower() for m in TEMPLATE_MARKS) or _PLACEHOLDER.search(body):
        return False
    return demo or DEMO_MARK not in body.lower()


def release_facts(*, eval_metrics: dict[str, Any] | None, compile_check: dict[str, Any] | None,
                  normalization: dict[str, Any] | None, split: dict[str, Any] | None,
                  params: dict[str, Any], intended_use: str, demo: bool) -> dict[str, Any]:
    ev, cc, norm = eval_metrics or {}, compile_check or {}, normalization or {}
    facts: dict[str, Any] = {}
    for cohort in ("internal_test", "external", "per_site", "domain_shift"):
        if isinstance(ev.get(cohort), dict):
            facts |= {k: v for k, v in flatten(ev[cohort], cohort).items()
                      if number(v) is not None or isinstance(v, bool)}
    counts = [c for c in (norm.get("cohorts") or {}).values() if isinstance(c, dict)]
    patches = sum(int(c.get("patches") or 0) for c in counts)
    fallback = sum(int(c.get("fallback") or 0) for c in counts)
    facts["normalization.enabled"] = norm.get("enabled") if isinstance(norm.get("enabled"), bool) else None
    facts["normalization.fallback_fraction"] = fallback / patches if patches else None
    for name, missing in missing_sites(split).items():
        facts[f"split.missing_{name}_sites"] = len(missing)
    status, used = cc.get("status"), get(params, "train.use_compile") is True
    facts["compile_check.passed"] = status == "passed" if status else None
    facts["compile_check.gate_ok"] = status == "passed" or (not used and status not in ("failed", None))
    name = str(get(params, "card.name") or "")
    facts["card.intended_use_written"] = intended_use_written(intended_use, demo)
    facts["card.name_chosen"] = bool(name) and (demo or name != DEMO_NAME)
    facts["data.demo"] = demo
    return dict(sorted(facts.items()))


def missing_sites(split: dict[str, Any] | None) -> dict[str, list[str]]:
    """Per split other than train: the training sites that have no patch in it."""
    splits = (split or {}).get("splits") or {}
    train = set((splits.get("train") or {}).get("sites") or {})
    return {name: sorted(train - set((body or {}).get("sites") or {}))
            for name, body in sorted(splits.items()) if name != "train" and isinstance(body, dict)}


def criteria_results(criteria: dict[str, str], facts: dict[str, Any]) -> dict[str, Any]:
    """{criteria_sha256, passed, n_passed, n_failed, results: {name: verdict}} (sorted by name)."""
    parsed = parse_all(criteria)
    results = {c.name: check(c, facts) for c in parsed}
    failed = [n for n, r in results.items() if not r["passed"]]
    return {"criteria_sha256": digest(dict(sorted(criteria.items()))), "passed": not failed,
            "n_passed": len(results) - len(failed), "n_failed": len(failed), "results": results}


def warnings(*, eval_metrics: dict[str, Any] | None, split: dict[str, Any] | None,
             facts: dict[str, Any], min_patients: int, max_fallback: float) -> list[str]:
    """What a reader must know even when every criterion passed (plain sentences, sorted by topic)."""
    out: list[str] = []
    ev = eval_metrics or {}
    named = [(c, ev.get(c)) for c in ("internal_test", "external")]
    named += [(f"site {s}", m) for s, m in sorted((ev.get("per_site") or {}).items())]
    for name, m in named:
        if isinstance(m, dict) and isinstance(m.get("n_patients"), int) and m["n_patients"] < min_patients:
            out.append(f"small cohort: the confidence intervals for {name} come from {m['n_patients']} patients "
                       f"(fewer than release.min_ci_patients = {min_patients}); treat them as rough")
    for split_name, missing in missing_sites(split).items():
        if missing:
            out.append(f"site coverage: training site(s) {', '.join(missing)} have no patient in the "
                       f"{split_name} split, so the internal {split_name} results say nothing about them")
    frac = facts.get("normalization.fallback_fraction")
    if isinstance(frac, float) and frac > max_fallback:
        out.append(f"stain normalization: {frac:.1%} of patches fell back from normalization (more than "
                   f"release.max_fallback_fraction = {max_fallback:.1%})")
    return out
