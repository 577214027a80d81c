"""The sections of the model card Markdown, each a function of the card JSON alone.

Mitchell et al.'s Model Cards sections (model details, intended use, factors, metrics, evaluation
and training data, quantitative analyses, ethical considerations, caveats), then the validation
checklist, figures, environment, provenance and the appendix of every flag.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from pathtrail.card.status_text import augmentation, compile_verdict, initial_weights, working_tree
from pathtrail.card.text import bullets, cell, cohorts, metric_table, num, table, text, with_ci
from pathtrail.card.values import flatten, get, number
from pathtrail.core.text import md_block, md_inline


def model_details(card: dict[str, Any]) -> str:
    m, prov, train = card["model"], card["provenance"], get(card, "metrics.train") or {}
    p = card["params"]
    return "## Model details\n\n" + bullets(
        [
            (
                "Architecture",
                (
                    f"{m.get('arch')} (width {m.get('width')}, dropout {m.get('dropout')}, "
                    f"gradient checkpointing {get(p, 'model.gradient_checkpointing')})"
                ),
            ),
            ("Classes", ", ".join(map(str, m.get("classes") or []))),
            ("Weights sha256", m.get("sha256")),
            ("Initial weights", initial_weights(card)),
            (
                "Code version",
                (
                    f"git commit {prov.get('git_commit')} on branch {prov.get('git_branch') or '(detached HEAD)'}, "
                    f"committed {prov.get('git_commit_date')}"
                ),
            ),
            ("Working tree", working_tree(prov)),
            ("Profile", get(p, "profile.name")),
            (
                "Training",
                (
                    f"{get(p, 'train.epochs')} epochs max, batch {get(p, 'train.batch_size')}, "
                    f"lr {get(p, 'train.lr')} ({get(p, 'train.scheduler')}), "
                    f"grad clip {get(p, 'train.grad_clip_norm')}, "
                    f"torch.compile {text(get(p, 'train.use_compile'))} ({compile_verdict(card)})"
                ),
            ),
            ("Augmentation", augmentation(p)),
            ("Best epoch", train.get("best_epoch")),
            ("Best validation AUROC", train.get("best_val_auroc")),
            ("Release status", card["release_status"]),
        ]
    )


def intended_use(card: dict[str, Any]) -> str:
    return (
        "## Intended use\n\n"
        + (md_block(card.get("intended_use") or "") or "_No intended-use statement was provided._")
        + "\n"
    )


def factors(card: dict[str, Any]) -> str:
    cohorts = get(card, "data.validation.cohorts") or {}
    sites = {c: sorted((s or {}).get("sites") or {}) for c, s in cohorts.items()}
    per_site = sorted(get(card, "metrics.eval.per_site") or {})
    lines = [
        "- **Acquisition site / stain protocol:** "
        + md_inline("; ".join(f"{c}: {', '.join(s) or '–'}" for c, s in sorted(sites.items())) or "–")
    ]
    external_sites = sorted(get(card, "metrics.eval.external_per_site") or {})
    lines.append(f"- **Evaluated per site (internal test):** {md_inline(', '.join(per_site) or '–')}"
                 + (f"; external: {md_inline(', '.join(external_sites))}" if external_sites else ""))
    lines.append(
        "- **Patient:** splits are grouped by patient; confidence intervals resample patients, and "
        "patient-level results use the mean probability of each patient's patches."
    )
    norm = get(card, "data.normalization") or {}
    lines.append(
        f"- **Stain normalization:** enabled={text(norm.get('enabled'))}, scope {norm.get('scope')} "
        "(Macenko, reference fitted on training patches only)."
    )
    return "## Factors\n\n" + "\n".join(lines) + "\n"


def metrics(card: dict[str, Any]) -> str:
    ev = get(card, "metrics.eval") or {}
    return (
        "## Metrics\n\nPrimary: AUROC with a patient-clustered percentile bootstrap 95% CI "
        f"({num(ev.get('n_bootstrap'))} resamples). Also AUPRC, sensitivity and specificity at the operating "
        f"threshold {num(ev.get('threshold'), 4)} (rule {md_inline(ev.get('threshold_rule'))}, chosen on the validation "
        "split before the test split and external cohort were read), balanced accuracy, Brier score and "
        "expected calibration error (ECE).\n"
    )


def evaluation_data(card: dict[str, Any]) -> str:
    rows = [
        [
            name,
            num(m.get("n_samples")),
            num(m.get("n_patients")),
            num(m.get("n_positive")),
            num(m.get("n_negative")),
        ]
        for name, m in cohorts(card)
    ]
    ext = get(card, "data.validation.cohorts.external") or {}
    note = (f"\nThe external cohort (sites: {md_inline(', '.join(map(str, ext.get('sites') or {})) or '–')}) was "
            "never used for training, model selection or the threshold.\n" if ext else "")
    return "## Evaluation data\n\n" + table(
        ["Cohort", "Samples", "Patients", "Positive", "Negative"], rows
    ) + note


def training_data(card: dict[str, Any]) -> str:
    v, split = get(card, "data.validation") or {}, get(card, "data.split") or {}
    rows = [
        [
            c,
            num(s.get("rows")),
            num(s.get("patients")),
            num(s.get("slides")),
            s.get("classes"),
            s.get("sites"),
        ]
        for c, s in sorted((v.get("cohorts") or {}).items())
        if isinstance(s, dict) and c != "external"
    ]
    out = "## Training data\n\n" + (
        f"Validation status: {v.get('status')} ({num(v.get('n_errors'))} errors, "
        f"{num(v.get('n_warnings'))} warnings).\n\n"
        if v
        else ""
    )
    out += table(["Cohort", "Patches", "Patients", "Slides", "Classes", "Sites"], rows)
    splits = split.get("splits") or {}
    if splits:
        out += f"\nPatient-grouped split (seed {split.get('seed')}):\n\n" + table(
            ["Split", "Patches", "Patients", "Slides", "Classes"],
            [
                [
                    n,
                    num(s.get("patches")),
                    num(s.get("patients")),
                    num(s.get("slides")),
                    s.get("classes"),
                ]
                for n, s in splits.items()
            ],
        )
    crossing = (split.get("grouping") or {}).get("crossing_splits")
    if isinstance(crossing, dict):  # counted from the split tables by the split stage
        out += "\nValues found in more than one split (patients, slides and identical images): " + ", ".join(
            f"{md_inline(str(k))} {num(v)}" for k, v in sorted(crossing.items())) + ".\n"
    return out


def quantitative(card: dict[str, Any]) -> str:
    ev = get(card, "metrics.eval") or {}
    named = cohorts(card)
    out = "## Quantitative analyses\n\n### Per cohort (patch level)\n\n" + metric_table(
        named, "Cohort"
    )
    out += "\n### Per site (internal test split)\n\n" + metric_table(sorted((ev.get("per_site") or {}).items()), "Site")
    if ev.get("external_per_site"):
        out += "\n### Per site (external cohort)\n\n" + metric_table(sorted(ev["external_per_site"].items()), "Site")
    out += "\n### Patient level\n\n" + metric_table(
        [(n, m["patient_level"]) for n, m in named if isinstance(m.get("patient_level"), dict)],
        "Cohort",
    )
    shift = ev.get("domain_shift") or {}
    names = sorted(k[: -len("_difference")] for k in shift if k.endswith("_difference"))
    if names:
        out += "\n### Domain shift (external − internal test)\n\n" + table(
            ["Metric", "Internal test", "External", "Difference (95% CI)"],
            [
                [
                    n,
                    num(shift.get(f"{n}_internal")),
                    num(shift.get(f"{n}_external")),
                    with_ci(shift, f"{n}_difference"),
                ]
                for n in names
            ],
        )
    curves = card.get("training_curves") or []
    if curves:
        cols = list(curves[0])
        out += "\n### Training curves\n\n" + table(
            cols, [[num(r.get(c), 4) for c in cols] for r in curves]
        )
    cc = card.get("compile_check") or {}
    if cc:
        out += "\n### Compile check (eager vs torch.compile)\n\n" + bullets(
            [
                (k, cc.get(k))
                for k in (
                    "status",
                    "compile_mode",
                    "auroc_eager",
                    "auroc_compiled",
                    "auroc_delta",
                    "auroc_delta_ci_low",
                    "auroc_delta_ci_high",
                    "loss_step0_delta",
                    "loss_max_abs_delta",
                    "loss_mean_abs_delta",
                )
            ]
            + [("failures", "; ".join(cc.get("failures") or []) or "none")]
        )
    return out


def checklist(card: dict[str, Any]) -> str:
    lines = [
        f"- [{'x' if c['passed'] else ' '}] **{md_inline(c['item'])}** — {'PASS' if c['passed'] else 'FAIL'}: "
        f"{md_inline(c['evidence'])}"
        for c in card["checklist"]
    ]
    return (
        "## Validation checklist\n\nEach line is decided automatically from the recorded outputs.\n\n"
        + "\n".join(lines)
        + "\n"
    )


def _caption(path: str) -> str:
    stem = path.rsplit("/", 1)[-1].removesuffix(".png")
    known = {
        "training_curves": "Training curves (loss and validation AUROC per epoch)",
        "stain_before_after": "Stain normalization: patches before and after",
        "compile_check_loss": "Training loss per step, eager vs compiled",
    }
    if stem in known:
        return known[stem]
    kind, _, cohort = stem.partition("_")
    names = {
        "roc": "ROC curve",
        "pr": "Precision-recall curve",
        "calibration": "Calibration (reliability)",
        "failures": "Most confident errors",
        "confusion": "Confusion matrix",
    }
    return f"{names.get(kind, kind)}: {cohort}" if cohort else stem


def figures(card: dict[str, Any]) -> str:
    figs = card.get("figures") or {}
    if not figs:
        return "## Figures\n\n_No figures were recorded._\n"
    first = (
        "figures/training_curves.png",
        "figures/stain_before_after.png",
        "figures/compile_check_loss.png",
    )
    ordered = [p for p in first if p in figs] + sorted(p for p in figs if p not in first)
    return "## Figures\n\n" + "\n".join(f"![{md_inline(_caption(p))}]({quote(p)})\n" for p in ordered)


def ethics(card: dict[str, Any]) -> str:
    return (
        "## Ethical considerations\n\n"
        "- Patients are identified only by pseudonymous identifiers; no images are part of this card "
        "except the example patches in the figures.\n"
        "- A misclassified tumour patch can delay diagnosis: this model supports, and must not replace, "
        "review by a pathologist.\n"
        "- Performance can differ between sites, scanners and stain protocols (see the per-site and "
        "external results); check it on local data before any use.\n"
    )


def caveats(card: dict[str, Any]) -> str:
    lines = [
        f"- Release status is **{md_inline(card['release_status'])}**"
        + (": " + md_inline("; ".join(card["release_reasons"])) if card["release_reasons"] else ".")
    ]
    shift = get(card, "metrics.eval.domain_shift") or {}
    if number(shift.get("auroc_difference")) is not None:
        lines.append(f"- External minus internal-test AUROC: {with_ci(shift, 'auroc_difference')}.")
    named = cohorts(card) + [(f"site {k}", v) for k, v in sorted((get(card, "metrics.eval.per_site") or {}).items())]
    for name, m in named:
        lines += [f"- {md_inline(name)}: {md_inline(w)}" for w in m.get("warnings") or []]
    lines += [f"- {md_inline(w)}" for w in get(card, "release.warnings") or []]
    norm = get(card, "data.normalization") or {}
    for cohort, c in sorted((norm.get("cohorts") or {}).items()):
        if isinstance(c, dict) and c.get("fallback"):
            lines.append(
                f"- {md_inline(cohort)}: {num(c['fallback'])} of {num(c.get('patches'))} patches could not be "
                f"normalized and used the {md_inline(norm.get('fallback'))} fallback."
            )
    lines.append(
        "- Re-validate after any change of scanner, stain protocol, patch size or population; "
        "`pathtrail verify` checks that this card still matches the artifacts and audit trail."
    )
    return "## Caveats and recommendations\n\n" + "\n".join(lines) + "\n"


def environment(card: dict[str, Any]) -> str:
    env = card["environment"]
    scalars = [(k, env[k]) for k in sorted(env) if not isinstance(env[k], dict | list)]
    out = "## Environment\n\n" + bullets(scalars)
    for group, title in (
        ("determinism", "Determinism"),
        ("compile", "Compile"),
        ("env", "Environment variables"),
    ):
        out += f"\n**{title}:**\n\n" + bullets(sorted((env.get(group) or {}).items()))
    out += execution_contract(card)
    packages = env.get("packages") or {}
    out += (
        f"\n<details><summary>Installed packages ({len(packages)})</summary>\n\n"
        + table(["Package", "Version"], [[k, str(v)] for k, v in sorted(packages.items())])
        + "\n</details>\n"
    )
    return out


def execution_contract(card: dict[str, Any]) -> str:
    """Which threads and CPU kernel level each stage ran with: what makes the bits machine-independent."""
    ex = get(card, "environment.execution") or {}
    rows = []
    for stage, rec in sorted((ex.get("stages") or {}).items()):
        rec = rec or {}
        rows.append([stage, str(rec.get("threads", "not recorded")), str(rec.get("aten_cpu_capability", "-")),
                     "yes" if rec.get("honoured") is True and rec.get("lifted") is False else
                     "; ".join(rec.get("problems") or []) or ("lifted" if rec.get("lifted") else "no")])
    verdict = ("honoured by every stage: the hashed outputs do not depend on this machine's core count or "
               "CPU generation (any x86-64 CPU with AVX2 gives the same bits; CUDA, ARM and other "
               "instruction sets do not)" if ex.get("honoured") is True else
               "NOT honoured by every stage: another machine may not reproduce these bits")
    return (f"\n**Execution contract** (execution.threads={get(card, 'params.execution.threads')}, "
            f"execution.cpu_isa={get(card, 'params.execution.cpu_isa')}): {verdict}.\n\n"
            + table(["Stage", "Threads", "ATen CPU kernels", "Honoured"], rows))


def provenance(card: dict[str, Any]) -> str:
    prov, audit = card["provenance"], card.get("audit") or {}
    ref = prov.get("stain_reference") or {}
    out = "## Provenance\n\n" + bullets(
        [
            (k, prov.get(k))
            for k in ("git_commit", "git_branch", "git_remote_url", "git_dirty", "git_commit_date")
        ]
        + [
            ("source files modified (git_modified)", ", ".join(prov.get("git_modified") or []) or "none"),
            ("params changed from the commit", ", ".join(prov.get("params_changed") or []) or "none"),
            ("paths git reports changed", (f"{prov.get('git_n_changed') or 0}: "
                                           + (", ".join(prov.get("git_changed") or []) or "none"))),
            ("stage runs from modified source", "; ".join(prov.get("upstream_dirty") or []) or "none"),
            ("model_sha256", prov.get("model_sha256")),
            ("stain reference", (f"{ref.get('path')} sha256 {ref.get('sha256')} (fitted on "
                                 f"{ref.get('fit_patches')} training patches)")),
            ("params_sha256", f"{card['params_sha256']} ({card.get('params_scope')})"),
            ("training params sha256", (f"{get(card, 'model.training_params_sha256')} "
                                        f"({get(card, 'model.training_params_scope')})")),
            ("audit chain head", (f"{audit.get('chain_head')} (trail seq {audit.get('chain_head_seq')}, "
                                  f"{audit.get('chain_head_stage')} {audit.get('chain_head_action')})")),
            ("audit trail", audit.get("trail")),
        ]
    )
    manifests = prov.get("manifests") or {}
    if manifests:
        out += "\n**Manifests:**\n\n" + table(
            ["Cohort", "Path", "sha256", "Source"],
            [
                [c, m.get("path"), m.get("sha256") or "–", m.get("source") or "–"]
                for c, m in sorted(manifests.items())
            ],
        )
    rows = [
        [stage, kind, path, md5 or "–"]
        for stage, kinds in sorted((prov.get("dvc_lock") or {}).items())
        for kind in ("deps", "outs")
        for path, md5 in sorted((kinds.get(kind) or {}).items())
    ]
    out += "\n**dvc.lock stage hashes (md5):**\n\n" + table(["Stage", "Kind", "Path", "md5"], rows)
    inputs = prov.get("inputs") or {}
    out += "\n**Files this card was built from (sha256):**\n\n" + table(
        ["File", "sha256"], [[p, h or "missing"] for p, h in sorted(inputs.items())]
    )
    return out


def every_flag(card: dict[str, Any]) -> str:
    rows = [[k, text(v)] for k, v in flatten(card["params"]).items()]
    return f"## Appendix: every flag\n\nparams sha256: {cell(card['params_sha256'])}\n\n" + table(
        ["Flag", "Value"], rows
    )
