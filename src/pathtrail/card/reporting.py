"""Reporting checklists: which guideline items the card's own values already answer.

`reporting_checklists(card)` maps every item of TRIPOD+AI (Collins et al., BMJ 2024), CLAIM 2024
(Tejani et al., Radiol Artif Intell 2024) and EU AI Act Annex IV point 2(b)-(g), by its published
number and in published order, to evidence in the card JSON; `render_reporting(checklists)` writes
the Markdown section "## Reporting checklists", one table each. Pure: no clock, disk or environment.
Status "filled": the card holds the evidence (`note`: what a person must still add); "missing": the
pipeline should record it but this card lacks it; "requires human": a person must write it. Each
evidence reference is `{"card": "dotted.key"}` (keys joined with "."), `{"file": path, "sha256":
hex}` (a hash the card records, cited only when 64 lowercase hex digits) or `{"trail_seq": n}`
(only where the card records a trail entry's seq).
"""

from __future__ import annotations

import re
from typing import Any

from pathtrail.card.values import get
from pathtrail.core.text import md_inline

FILLED, MISSING, HUMAN = "filled", "missing", "requires human"
_HEX64 = re.compile(r"[0-9a-f]{64}")

# Rules, one per line: name | required specs | extra specs (a line starting with "+" continues the
# extras). An item is "filled" when every required spec finds something; extras add evidence when
# present. Specs: "a.b.c" a card value, not null or empty ("*": every key there, sorted; a trailing
# "?" also accepts null); "ci:a.b" a metrics block with AUROC and its CI; "file:path" a
# `provenance.inputs` hash; "fig:text" each figure whose path holds text; "manifests" and
# "manifest:cohort" manifest hashes; "check:patient_disjoint", "check:stain_reference" (functions).
# Shorthands: V. = data.validation.cohorts.*.  S. = data.split.splits.  E. = metrics.eval.
_RULES = """
sources | manifests | V.manifest V.data_root provenance.git_commit
dates | provenance.git_commit_date | provenance.git_commit manifests
centres | V.sites | E.per_site
eligibility | data.validation.rules | data.validation.status data.validation.n_errors
+ data.validation.n_warnings file:reports/validation.json
preprocessing | data.normalization.enabled check:stain_reference | data.normalization.scope
+ data.normalization.fallback data.normalization.cohorts.* params.stain params.data.patch_size
+ params.data.mode_policy file:reports/normalization.json fig:stain_
missing_data | data.validation.n_errors data.validation.rules.size_policy |
+ data.validation.n_warnings data.validation.rules.tissue_policy
+ data.validation.rules.mode_policy file:reports/validation.json
sample_size | S.*.patients V.patients | S.*.patches V.rows E.external.n_patients
partition | data.split.splits data.split.seed | data.split.val_fraction data.split.test_fraction
+ data.split.table check:patient_disjoint file:reports/split.json
disjoint | check:patient_disjoint | file:reports/split.json
building | params.model params.train | params_sha256 file:params.yaml metrics.train
+ file:metrics/train.json fig:training_curves compile_check.status
architecture | params.model.arch | params.model model.arch model.width model.dropout
+ model.classes provenance.model_sha256 file:models/model.pt
software | environment.torch_version environment.packages | environment.python_version
+ environment.torch_git_version environment.cuda_version environment.cudnn_version
+ environment.os provenance.git_commit
init | params.model.weights_path? params.train.seed |
training | params.train | params_sha256 file:params.yaml metrics.train.epochs_run
+ metrics.train.early_stopped file:plots/train/epochs.csv fig:training_curves
selection | metrics.train.best_epoch | metrics.train.best_val_auroc metrics.train.best_val_loss
+ params.train.early_stopping
measures | params.eval | E.n_bootstrap E.*.calibration_slope E.*.calibration_intercept fig:roc_
+ fig:pr_ fig:calibration_
prediction | provenance.model_sha256 provenance.git_commit | file:models/model.pt
+ environment.torch_version
output | E.threshold E.threshold_rule | params.eval.fixed_threshold
+ params.eval.target_sensitivity model.classes
dev_vs_eval | data.validation.cohorts.internal data.validation.cohorts.external | E.domain_shift
flow | V.rows data.validation.n_errors | V.patients V.slides S.*.patients
characteristics | V.classes | V.sites V.patients V.slides V.tissue_fraction
events | S.*.classes | E.*.n_positive E.*.n_negative
internal | ci:E.internal_test | E.internal_test.patient_level E.internal_test.slide_level
+ fig:_internal_test file:metrics/eval.json
external | ci:E.external | E.external.patient_level E.external.slide_level
+ data.validation.cohorts.external manifest:external fig:_external file:metrics/eval.json
performance | ci:E.internal_test ci:E.external | ci:E.per_site.* E.*.calibration_slope
+ E.*.calibration_intercept fig:roc_ fig:calibration_ file:metrics/eval.json
uncertainty | ci:E.internal_test E.n_bootstrap | E.*.ci_level E.*.auroc_delong_ci_low
+ E.*.auroc_delong_ci_high E.domain_shift params.eval.seed
diagnostic | E.internal_test.sensitivity_ci_low E.internal_test.specificity_ci_low |
+ E.external.sensitivity_ci_low E.external.specificity_ci_low E.*.ppv_ci_low fig:roc_
clusters | ci:E.per_site.* | E.domain_shift
robustness | E.domain_shift | ci:E.per_site.* compile_check.status compile_check.auroc_delta
+ compile_check.external_agreement data.normalization.cohorts.* fig:compile_check
failures | fig:failures_ | params.eval.n_failures E.*.fp E.*.fn
design | params.model.arch model.classes E.threshold_rule | params.model params.train params.eval
+ params_sha256 file:params.yaml
system | provenance.dvc_lock environment.machine | environment.cpu environment.cpu_count
+ environment.gpu environment.cuda_version environment.os
datasheet | manifests data.validation.cohorts data.split.splits | data.validation.rules
+ data.normalization.enabled check:stain_reference file:reports/validation.json
+ file:reports/split.json file:reports/normalization.json
testing | ci:E.internal_test ci:E.external | ci:E.per_site.* E.domain_shift compile_check.status
+ file:metrics/eval.json file:metrics/compile_check.json audit.chain_head audit.trail
+ provenance.git_commit_date
"""

# Items, one per line: item | topic | rule ("-": a person must write it) | note (what a person
# must write, or still add to a filled item).
_TRIPOD_AI = """
1 | Title | - | title naming the model study, target population and outcome
2 | Abstract | - | abstract following TRIPOD+AI for Abstracts
3a | Healthcare context and rationale | - | clinical context, rationale, existing models
3b | Target population, intended purpose, users | - | population, care pathway, intended users
3c | Known health inequalities | - | health inequalities between sociodemographic groups
4 | Objectives | - | objectives; development and/or evaluation
5a | Data sources | sources | why these data; their representativeness
5b | Data dates | dates | participant accrual dates (the card has the run's commit date)
6a | Setting and centres | centres | care setting and centre locations
6b | Eligibility criteria | eligibility | clinical inclusion and exclusion criteria
6c | Treatments | - | treatments received and their handling, if relevant
7 | Data preparation and quality checks | preprocessing | similarity across sociodemographic groups
8a | Outcome definition | - | outcome (label) definition, how and when assessed, rationale
8b | Outcome assessors | - | qualifications and demographics of the label assessors
8c | Blinded outcome assessment | - | blinding of the label assessment
9a | Choice of initial predictors | - | choice and pre-selection of the model inputs
9b | Predictor definitions | - | scanner, magnification, staining (card: patch size, mode only)
9c | Predictor assessors | - | assessors of inputs that need interpretation, if any
10 | Sample size | sample_size | justification or sample size calculation
11 | Missing data | missing_data | missing clinical data, if any, and why omitted
12a | Use of data and partitioning | partition |
12b | Predictor handling | preprocessing |
12c | Model type, building steps, tuning | building | rationale for the model type; any tuning
12d | Heterogeneity across clusters | clusters |
12e | Performance measures and plots | measures | rationale for the measures
12f | Model updating | - | any recalibration or updating (the pipeline does none)
12g | How predictions were calculated | prediction |
13 | Class imbalance | - | whether class imbalance methods were used, and why
14 | Fairness | - | approaches to model fairness and their rationale
15 | Model output and thresholds | output | rationale for the threshold rule
16 | Development vs evaluation data | dev_vs_eval | differences in setting, eligibility, outcome
17 | Ethical approval | - | ethics committee; informed consent or its waiver
18a | Funding | - | funding sources and the funders' role
18b | Conflicts of interest | - | conflicts of interest of all authors
18c | Protocol | - | where the protocol is, or that none was prepared
18d | Registration | - | registry and number, or that it was not registered
18e | Data sharing | - | availability of the study data
18f | Code sharing | - | where the code is available (card: provenance.git_commit)
19 | Patient and public involvement | - | patient and public involvement, or none
20a | Participant flow | flow | flow diagram; outcome counts per step
20b | Participant characteristics | characteristics | demographics and clinical characteristics
20c | Evaluation vs development distributions | dev_vs_eval | comparison of demographics
21 | Participants and events per analysis | events |
22 | Full model specification | prediction | restrictions on access or reuse
23a | Performance with CIs, incl. subgroups | performance | sociodemographic subgroups
23b | Heterogeneity of performance across clusters | clusters |
24 | Model updating results | - | results of any updating, or that none was done
25 | Interpretation | - | overall interpretation, including fairness
26 | Limitations | - | limitations; effect on bias, uncertainty, generalisability
27a | Handling poor or missing inputs in use | eligibility | how deployment should handle them
27b | User interaction and expertise | - | user interaction and the expertise needed
27c | Next steps | - | future research on applicability and generalisability
"""

_CLAIM_2024 = """
1 | Title: AI methodology and technique category | - | title naming the AI technique
2 | Abstract | - | structured abstract
3 | Background, intended use, role of the AI | - | scientific and clinical background
4 | Aims, objectives, hypotheses | - | study aims and hypotheses
5 | Prospective or retrospective | - | study design
6 | Study goal | - | study goal (e.g. model creation, feasibility)
7 | Data sources | sources | links to public datasets, if any
8 | Inclusion and exclusion criteria | eligibility | clinical inclusion and exclusion criteria
9 | Data pre-processing | preprocessing |
10 | Selection of data subsets | - | how subsets (regions, patches) were selected
11 | De-identification | - | de-identification methods
12 | Missing data | missing_data | missing clinical data, if any
13 | Image acquisition protocol | - | scanner, magnification, staining (card: patch size, mode only)
14 | Reference standard definition | - | how the reference standard was obtained
15 | Rationale for the reference standard | - | why this reference standard
16 | Source of reference annotations | - | annotators and their qualifications
17 | Annotation of the test set | - | test-set annotation procedure and tools
18 | Inter- and intra-rater variability | - | rater variability and adjudication
19 | Assignment to partitions | partition |
20 | Level at which partitions are disjoint | disjoint |
21 | Intended sample size | sample_size | how the sample size was determined
22 | Detailed model description | architecture |
23 | Software libraries and versions | software |
24 | Initialisation of parameters | init | initialisation scheme (weights_path null: no pretraining)
25 | Training approach and hyperparameters | training |
26 | Selection of the final model | selection |
27 | Ensembling | - | ensembling used, or that none was
28 | Performance metrics | measures | comparison with published models
29 | Significance and uncertainty | uncertainty |
30 | Robustness or sensitivity analysis | robustness |
31 | Explainability or interpretability | - | explainability methods, if any, and their validation
32 | Evaluation on internal data | internal |
33 | Testing on external data | external |
34 | Clinical trial registration | - | trial registration, if applicable
35 | Numbers included and excluded | flow | flowchart
36 | Demographic and clinical characteristics | - | per partition (card: class and site counts)
37 | Performance and statistical uncertainty | performance | subgroups beyond sites
38 | Diagnostic performance and precision | diagnostic |
39 | Failure analysis | failures | clinical reading of the failure cases
40 | Limitations | - | limitations, biases, generalisability
41 | Implications for practice | - | intended use and clinical role
42 | Full protocol or technical details | - | reference to the full protocol
43 | Availability of software, model, data | - | where code, model, data are available; terms
44 | Funding | - | funding sources and the funders' role
"""

_ANNEX_IV = """
2(b) | Design specifications, key choices, output | design | rationale, assumptions, trade-offs
2(c) | System architecture, computational resources | system | integration in the deployed system
2(d) | Data requirements and datasheets | datasheet | how data were obtained and labelled; cleaning
2(e) | Human oversight (Art. 14), output interpretation | - | oversight measures, interpretation aids
2(f) | Pre-determined changes | - | pre-determined changes, where applicable
2(g) | Validation and testing procedures | testing | discriminatory impacts; dated, signed reports
"""


def _rows(text: str) -> list[list[str]]:
    rows: list[list[str]] = []
    for line in text.strip().splitlines():
        if line.startswith("+"):
            rows[-1][-1] += " " + line[1:].strip()
        else:
            rows.append([cell.strip() for cell in line.split("|")])
    return rows


_SHORT = {"V.": "data.validation.cohorts.*.", "S.": "data.split.splits.", "E.": "metrics.eval."}
RULES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    name: tuple(tuple(re.sub(r"(?<![\w.])[VSE]\.", lambda m: _SHORT[m.group(0)], specs).split())
                for specs in (required, extras))
    for name, required, extras in _rows(_RULES)
}
CHECKLISTS = (
    ("TRIPOD+AI", "Collins GS et al. BMJ 2024;385:e078378",
     "https://doi.org/10.1136/bmj-2023-078378", _rows(_TRIPOD_AI)),
    ("CLAIM 2024", "Tejani AS et al. Radiol Artif Intell 2024;6(4):e240300",
     "https://doi.org/10.1148/ryai.240300", _rows(_CLAIM_2024)),
    ("EU AI Act Annex IV", "Regulation (EU) 2024/1689, Annex IV, point 2(b) to 2(g)",
     "https://eur-lex.europa.eu/eli/reg/2024/1689/oj", _rows(_ANNEX_IV)),
)
_LEGEND = ("Every item of each checklist and where this card answers it. filled: the card holds "
           "the evidence; missing: the pipeline should record it, but this card lacks it; "
           "requires human: a person must write it.")


def _present(value: Any, allow_null: bool = False) -> bool:
    return allow_null if value is None else not (isinstance(value, dict | list | str) and not value)


def _expand(card: dict[str, Any], dotted: str) -> list[tuple[str, Any]]:
    """(key, value) for each match of a dotted key; "*" matches every key, in sorted order."""
    found: list[tuple[str, Any]] = [("", card)]
    for part in dotted.split("."):
        found = [(f"{key}.{n}" if key else str(n), node[n]) for key, node in found
                 if isinstance(node, dict)
                 for n in (sorted(node, key=str) if part == "*" else [part] if part in node else [])]
    return found


def _is_num(value: Any, kinds: type | tuple[type, ...] = (int, float)) -> bool:
    return isinstance(value, kinds) and not isinstance(value, bool)


def _file(path: Any, sha: Any) -> list[dict[str, Any]]:
    ok = isinstance(path, str) and path and isinstance(sha, str) and _HEX64.fullmatch(sha)
    return [{"file": path, "sha256": sha}] if ok else []


def _manifests(card: dict[str, Any], only: str | None) -> list[dict[str, Any]]:
    refs: list[dict[str, Any]] = []
    for key, m in _expand(card, "provenance.manifests.*"):
        if isinstance(m, dict) and only in (None, key.split(".", 2)[2]):
            refs += _file(m.get("path"), m.get("sha256"))
            refs += [{"trail_seq": m["trail_seq"]}] if _is_num(m.get("trail_seq"), int) else []
    return refs


def _patient_disjoint(card: dict[str, Any]) -> list[dict[str, Any]]:
    """Split patient counts that add up to the split cohort's patient count: no patient in two;
    and, where the split report counts them, no patient, slide or image found in two splits."""
    splits, table = get(card, "data.split.splits"), get(card, "data.split.table")
    if not isinstance(splits, dict) or not splits or not isinstance(table, str):
        return []
    crossing = get(card, "data.split.grouping.crossing_splits")
    if crossing is not None and not (isinstance(crossing, dict) and crossing
                                     and all(_is_num(n, int) and n == 0 for n in crossing.values())):
        return []
    cited = [{"card": f"data.split.grouping.crossing_splits.{k}"} for k in sorted(crossing or {}, key=str)]
    base = table.rsplit("/", 1)[-1]
    cohorts = [(key, c) for key, c in _expand(card, "data.validation.cohorts.*")
               if isinstance(c, dict) and str(c.get("manifest", "")).rsplit("/", 1)[-1] == base]
    counts = [s.get("patients") if isinstance(s, dict) else None for s in splits.values()]
    if len(cohorts) != 1 or not all(_is_num(n, int) for n in counts):
        return []
    key, cohort = cohorts[0]
    if not _is_num(cohort.get("patients"), int) or sum(counts) != cohort["patients"]:
        return []
    return [{"card": f"data.split.splits.{s}.patients"} for s in sorted(splits, key=str)] + [
        {"card": f"{key}.patients"}] + cited


def _stain_reference(card: dict[str, Any]) -> list[dict[str, Any]]:
    """With normalization on, the reference it used (file hash, patch hashes); off needs none."""
    if get(card, "data.normalization.enabled") is False:
        return [{"card": "data.normalization.enabled"}]
    return _resolve(card, "file:models/stain_reference.json") + [
        {"card": k} for k in ("provenance.stain_reference.sha256",
                              "data.normalization.reference_fit_patches_sha256") if _present(get(card, k))]


def _resolve(card: dict[str, Any], spec: str) -> list[dict[str, Any]]:
    kind, _, arg = spec.partition(":") if ":" in spec else ("card", "", spec)
    if kind == "file":
        inputs = get(card, "provenance.inputs")
        return _file(arg, inputs.get(arg)) if isinstance(inputs, dict) else []
    if kind == "fig":
        figs = card.get("figures") if isinstance(card.get("figures"), dict) else {}
        return [r for p in sorted(figs, key=str) if arg in str(p) for r in _file(p, figs[p])]
    if kind == "manifest" or spec == "manifests":
        return _manifests(card, arg if kind == "manifest" else None)
    if kind == "ci":
        return [{"card": k} for k, v in _expand(card, arg) if isinstance(v, dict)
                and all(_is_num(v.get(m)) for m in ("auroc", "auroc_ci_low", "auroc_ci_high"))]
    if kind == "check":
        return {"patient_disjoint": _patient_disjoint, "stain_reference": _stain_reference}[arg](card)
    return [{"card": k} for k, v in _expand(card, arg.rstrip("?")) if _present(v, arg[-1] == "?")]


_WANTS = {"file": "sha256 of {}", "fig": "figure {}*", "manifest": "{} manifest hash",
          "ci": "{} AUROC with CI", "check": "{} check"}


def _wants(spec: str) -> str:
    """What a required spec looks for, for the note of a "missing" item."""
    kind, colon, arg = spec.partition(":")
    if colon:
        return _WANTS[kind].format(arg)
    return "manifest hashes" if spec == "manifests" else spec.rstrip("?")


def _item(card: dict[str, Any], item: str, topic: str, rule: str, note: str) -> dict[str, Any]:
    out: dict[str, Any] = {"item": item, "topic": topic, "status": HUMAN, "evidence": [],
                           "note": note}
    if rule == "-":
        return out
    required, extras = RULES[rule]
    found = {spec: _resolve(card, spec) for spec in (*required, *extras)}
    lacking = [_wants(spec) for spec in required if not found[spec]]
    if lacking:
        out["status"] = MISSING
        out["note"] = "not in the card: " + ", ".join(lacking) + (f"; also: {note}" if note else "")
        return out
    for spec in (*required, *extras):
        out["evidence"] += [r for r in found[spec] if r not in out["evidence"]]
    return out | {"status": FILLED}


def reporting_checklists(card: dict[str, Any]) -> dict[str, Any]:
    """Every item of each checklist, in published order, with its status, evidence and note."""
    return {name: {"source": source, "url": url, "items": [_item(card, *row) for row in rows]}
            for name, source, url, rows in CHECKLISTS}


def _cell(text: Any) -> str:
    """One Markdown table cell: no line break, raw HTML, emphasis, code, link or column break."""
    return md_inline(str(text).strip())


def _ref(ref: Any) -> str:
    if not isinstance(ref, dict):
        return str(ref)
    if "file" in ref:
        return f"file {ref.get('file')} (sha256 {ref.get('sha256')})"
    return f"card {ref['card']}" if "card" in ref else f"trail entry seq {ref.get('trail_seq')}"


def _evidence(item: dict[str, Any]) -> str:
    note, status = item.get("note") or "", item.get("status")
    if status != FILLED:
        return f"for a person: {note}" if status == HUMAN else note
    return "; ".join(_ref(r) for r in item.get("evidence") or []) + (
        f"; for a person: {note}" if note else "")


def render_reporting(checklists: dict[str, Any]) -> str:
    """The "## Reporting checklists" Markdown section; every card string goes through `_cell`."""
    known = [name for name, *_ in CHECKLISTS if name in checklists]
    lines = ["## Reporting checklists", "", _LEGEND, ""]
    for name in known + sorted((n for n in checklists if n not in known), key=str):
        block = checklists[name] if isinstance(checklists[name], dict) else {}
        items = [i for i in block.get("items") or [] if isinstance(i, dict)]
        counts = ", ".join(f"{sum(i.get('status') == s for i in items)} {s}"
                           for s in (FILLED, MISSING, HUMAN))
        source = f"Source: {block.get('source', '')}, {block.get('url', '')}. {counts}."
        lines += [f"### {_cell(name)}", "", _cell(source), "",
                  "| Item | Topic | Status | Evidence |", "|---|---|---|---|"]
        lines += [f"| {_cell(i.get('item', ''))} | {_cell(i.get('topic', ''))} | "
                  f"{_cell(i.get('status', ''))} | {_cell(_evidence(i))} |" for i in items]
        lines.append("")
    return "\n".join(lines)
