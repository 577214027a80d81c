"""Evaluation: point metrics, the patient bootstrap, diagnostics for plots, the per-cohort report.

Modules: `metrics`, `calibration` (slope and calibration-in-the-large), `bootstrap`,
`diagnostics`, `report` (evaluate_cohort, choose_threshold, domain_shift), `plots` (the per-cohort
plot files). Imports core, config and data only.
"""
