"""Review: does everything still agree? `pathtrail verify`, its card checks, `pathtrail trail`.

Modules: `verify` (trail, artifacts, card and dvc.lock checks; the report), `card_checks` (each
model card against the files it describes), `timeline` (the trail as a readable timeline). Used by
the CLI only; no stage imports it.
"""
