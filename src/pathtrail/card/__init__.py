"""The model card: built from plain values, rendered to Markdown.

Modules: `build` (build_card, CardInputs), `checklist` (checklist, release_status), `render`
(render_markdown), `sections` and `text` (Markdown pieces), `values` (shared constants and
helpers). Imports core and config only; `pathtrail.review.card_checks` checks cards on disk.
"""
