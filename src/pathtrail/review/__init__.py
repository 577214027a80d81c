"""Review: does everything still agree? `pathtrail verify`, its card checks, `pathtrail trail`.

Modules: `verify` (the checks and the report), `runs` (which recorded run made the outputs present),
`card_checks` / `card_release` / `manifests` (each model card against the files it describes),
`lock_check` (dvc.lock against the workspace), `ordering` (threshold and criteria locks),
`absent` (the one-line hint on a fresh clone), `release` (signatures), `timeline` (the trail as a
readable timeline). Used by the CLI only; no stage imports it.
"""
