"""The status parts of the model card Markdown: the banner, the working-tree and compile lines,
and the release-criteria section (criteria, facts, warnings, what each status means)."""

from __future__ import annotations

from typing import Any

from pathtrail.card.text import bullets, num, table
from pathtrail.card.values import EXPERIMENT, RELEASE_CANDIDATE, get
from pathtrail.core.text import md_inline


def banner(card: dict[str, Any]) -> str:
    status, reasons = card["release_status"], card["release_reasons"]
    rel = card.get("release") or {}
    tally = f"{rel.get('n_passed')} of {(rel.get('n_passed') or 0) + (rel.get('n_failed') or 0)}"
    if status == RELEASE_CANDIDATE:
        return (f"> **Release status: {RELEASE_CANDIDATE}.** Clean committed source and params; every automatic "
                f"check and all {tally} pre-specified release criteria passed. It becomes RELEASED only when "
                "signed by a trusted key (`pathtrail verify --release`).\n")
    shown = "".join(f">\n> - {md_inline(r)}\n" for r in reasons)
    if status == EXPERIMENT:
        return (f"> **{EXPERIMENT} – NOT FOR RELEASE.** Clean source, params differ from the committed "
                f"params.yaml; {tally} release criteria met.\n>\n> Why it is not a release candidate:\n{shown}")
    return f"> **{md_inline(status)}**\n>\n> This card must not be used to release the model, because:\n{shown}"


def initial_weights(card: dict[str, Any]) -> str:
    """Where the weights started: random, or the local file (`model.weights_path`) and its sha256."""
    path, sha = get(card, "params.model.weights_path"), get(card, "model.initial_weights_sha256")
    if not path:
        return "random initialisation (model.weights_path null: no pretrained weights)"
    return f"{path} (sha256 {sha or 'not recorded'}), loaded with torch.load(weights_only=True)"


def augmentation(params: dict[str, Any]) -> str:
    """The training transforms: dihedral flips / rotations and HED stain jitter, with strengths."""
    flips = "dihedral flips and rotations" if get(params, "train.augment") else "no flips or rotations"
    stain = get(params, "train.stain_augment") or {}
    jitter = (f"HED stain jitter (sigma_scale {stain.get('sigma_scale')}, sigma_shift {stain.get('sigma_shift')})"
              if stain.get("enabled") else "no stain jitter")
    return f"{flips}; {jitter}; each keyed on (seed, epoch, sample)"


def working_tree(prov: dict[str, Any]) -> str:
    """The source state (what the status uses) and git's own count, so neither hides the other."""
    n = prov.get("git_n_changed") or 0
    src = ("source modified: " + ", ".join(prov.get("git_modified") or [])) if prov.get("git_dirty") else "source clean"
    params = prov.get("params_changed") or []
    return (f"{src}; params {'differ from the commit in ' + ', '.join(params) if params else 'as committed'}; "
            f"git reports {n} changed path{'' if n == 1 else 's'}"
            + (" (pipeline outputs, DVC data or files outside the code folders)" if n and not prov.get("git_dirty")
               else ""))


def compile_verdict(card: dict[str, Any]) -> str:
    cc = card.get("compile_check") or {}
    if not cc:
        return "compile check: not run"
    return (f"compile check {cc.get('status')}: ΔAUROC {num(cc.get('auroc_delta'), 6)} within "
            f"±{num(cc.get('auc_tolerance'), 4)}" if cc.get("status") == "passed"
            else f"compile check {cc.get('status')}" + (f": {'; '.join(map(str, cc.get('failures') or []))}"
                                                        if cc.get("failures") else ""))


def release_criteria(card: dict[str, Any]) -> str:
    rel = card.get("release") or {}
    results = rel.get("results") or {}
    lock = rel.get("locked_before_evaluation") or {}
    rows = [[n, r.get("criterion"), num(r.get("value"), 4), r.get("threshold"), "PASS" if r.get("passed") else "FAIL",
             num(r.get("margin"), 4) if r.get("margin") is not None else (r.get("why") or "–")]
            for n, r in sorted(results.items())]
    out = ("## Release criteria\n\nFixed in params (`release.criteria`) before evaluation: the evaluate stage "
           f"recorded them (sha256 {md_inline(str(rel.get('criteria_sha256'))[:16])}…) in the audit trail at seq "
           f"{md_inline(lock.get('seq'))} before it opened the test split or the external cohort"
           + ("" if lock.get("matches") else " — **the recorded criteria do not match these**")
           + (" — **other criteria were locked for the same weights earlier (trail seq "
              + md_inline(", ".join(str(c.get("seq")) for c in lock["changed_after_test"])) + ")**"
              if lock.get("changed_after_test") else "") + ". "
           f"{rel.get('n_passed')} passed, {rel.get('n_failed')} failed.\n\n")
    out += table(["Criterion", "Rule", "Value", "Threshold", "Result", "Margin / why"], rows)
    facts = rel.get("facts") or {}
    if facts:
        out += "\n**Facts the criteria can use (besides every metric in `metrics.eval`):**\n\n" + bullets(
            sorted(facts.items()))
    warnings = rel.get("warnings") or []
    out += "\n### Warnings\n\n" + ("".join(f"- {md_inline(w)}\n" for w in warnings) or "_None._\n")
    meanings = card.get("status_meanings") or {}
    out += "\n### What the status means\n\n" + "".join(
        f"- **{md_inline(k)}:** {md_inline(v)}\n" for k, v in meanings.items())
    return out
