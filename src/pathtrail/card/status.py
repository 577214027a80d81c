"""The one status vocabulary, decided in one place (the card stage and `pathtrail verify` call it).

- DRAFT – NOT FOR RELEASE: the source differs from its commit (now, or when an upstream stage ran,
  as the audit trail records), or a gate or a pre-specified release criterion failed.
- EXPERIMENT: clean source, but params differ from the committed params.yaml (a `dvc exp run`).
  Never releasable; its criteria are still reported, for comparison.
- RELEASE CANDIDATE: clean source, committed params, every gate and criterion met.
- RELEASED: a release candidate that also carries a valid signature by a trusted key (decided by
  `pathtrail verify`, which holds the keys; the card itself never says RELEASED).

"Source" is what git tracks, less generated pipeline outputs and DVC-tracked data, plus untracked
files under the code folders; params.yaml is judged separately (EXPERIMENT).
"""

from __future__ import annotations

from pathtrail.card.values import DRAFT, EXPERIMENT, RELEASE_CANDIDATE, RELEASED

MEANINGS = {
    DRAFT: "source changed since its commit (now or when a stage ran), or a gate or release criterion failed",
    EXPERIMENT: "clean source, params differ from the committed params.yaml (a DVC experiment); not releasable",
    RELEASE_CANDIDATE: "clean committed source and params; every gate and pre-specified criterion met",
    RELEASED: "a release candidate with a valid signature by a trusted key (shown by `pathtrail verify`)",
}


def decide(*, source_reasons: list[str], params_changed: list[str], gate_reasons: list[str],
           signed_by_trusted: bool = False) -> tuple[str, list[str]]:
    """(status, reasons). Source problems make a DRAFT whatever else holds; changed params make an
    EXPERIMENT (the failed gates and criteria are listed with it); then failures make a DRAFT."""
    if source_reasons:
        return DRAFT, source_reasons + gate_reasons
    if params_changed:
        shown = ", ".join(params_changed[:10]) + (f" and {len(params_changed) - 10} more"
                                                  if len(params_changed) > 10 else "")
        return EXPERIMENT, [f"params differ from the committed params.yaml: {shown}", *gate_reasons]
    if gate_reasons:
        return DRAFT, gate_reasons
    return (RELEASED if signed_by_trusted else RELEASE_CANDIDATE), []
