"""The card's validation checklist and the result-based reasons against release, from the card's own values."""

from __future__ import annotations

from typing import Any

from pathtrail.card.values import fmt, get, number


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
            "External cohort evaluated (AUROC with 95% CI recorded; the release criteria judge the value)",
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
            + "; loaders keyed on (seed, epoch, sample index) with their own generators, so loader "
            "workers (runtime knobs, in the audit trail) change no result",
        )
    )
    execution = get(card, "environment.execution")
    execution = execution if isinstance(execution, dict) and isinstance(execution.get("stages"), dict) else {}
    lapses = [f"{stage}: {'; '.join((rec or {}).get('problems') or ['lifted' if (rec or {}).get('lifted') else 'not recorded'])}"
              for stage, rec in sorted((execution.get("stages") or {}).items())
              if not (rec and rec.get("honoured") is True and rec.get("lifted") is False)]
    items.append(
        _item(
            "Reproducible execution contract honoured by every stage",
            execution.get("honoured") is True,
            f"execution.threads={get(params, 'execution.threads')}, execution.cpu_isa={get(params, 'execution.cpu_isa')}"
            + (f"; not honoured: {', '.join(lapses)}" if lapses else
               "; same bits on any x86-64 CPU with AVX2, whatever its core count"
               if get(params, "execution.cpu_isa") == "avx2" else ""),
        )
    )
    return items


def gate_reasons(card: dict[str, Any]) -> list[str]:
    """Why the card cannot be a release candidate on its results: a failed compile gate, a failed
    checklist line, a failed or unlocked release criterion (each with its value and threshold)."""
    reasons = []
    cc = card.get("compile_check") or {}
    if cc.get("status") == "failed" or cc.get("passed") is False:
        reasons.append(
            "compile-check gate failed: "
            + ("; ".join(cc.get("failures") or []) or "see compile_check")
        )
    reasons += [
        f"checklist item failed: {c['item']} ({c['evidence']})"
        for c in card["checklist"]
        if not c["passed"]
    ]
    release = card.get("release") or {}
    reasons += [
        f"release criterion {name} failed: {r.get('why') or r.get('criterion')}"
        for name, r in sorted((release.get("results") or {}).items())
        if not r.get("passed")
    ]
    lock = release.get("locked_before_evaluation") or {}
    changed = lock.get("changed_after_test") or []
    if changed:
        reasons.append(
            "release criteria changed after this model's test data had been opened: earlier evaluate runs of "
            "the same weights locked other criteria (trail seq "
            + ", ".join(str(c.get("seq")) for c in changed[:5]) + "); criteria are fixed before a model is "
            "evaluated, so retrain (or restore the earlier criteria) to release"
        )
    if not lock.get("matches"):
        reasons.append(
            "release criteria not proven fixed before evaluation: "
            + (f"the evaluate run locked criteria sha256 {str(lock.get('criteria_sha256'))[:12]}… (trail seq "
               f"{lock.get('seq')}), these are {str(release.get('criteria_sha256'))[:12]}…"
               if lock.get("seq") is not None else "no criteria_locked entry in the latest evaluate run")
            + "; rerun `dvc repro`"
        )
    return reasons
