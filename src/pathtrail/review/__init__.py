"""Review: does everything still agree? `pathtrail verify`, its card checks, `pathtrail trail`,
and `pathtrail reproduce` (does a fresh run of the card's commit give the same bits?).

Modules: `verify` (trail, artifacts, card and dvc.lock checks; the report), `card_checks` (each
model card against the files it describes), `timeline` (the trail as a readable timeline),
`reproduce` (the card's artifacts against a re-run; with `rerun`, the worktree and the DVC run,
`compare`, the Δ between two files, and `sources`, where the expected bytes come from). Used by
the CLI only; no stage imports it.
"""
