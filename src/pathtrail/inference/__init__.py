"""Scoring new data with the model a card describes: `pathtrail predict` and `pathtrail drift`.

`card_model` (the card, its model and stain reference, sha256-checked, and the release gate),
`cohort` (validation, normalization and scoring through the pipeline's own code), `outputs`
(per-patch, slide and patient tables, the sidecar, published together), `drift` and `drift_plot`
(the drift report), `predict` (the two commands' recipes), `slides` (the slide-table entry point).
"""
