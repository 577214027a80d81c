"""Review: does everything still agree? `pathtrail verify`, its card checks, `pathtrail trail`,
and `pathtrail reproduce` (does a fresh run of the card's commit give the same bits?).

Modules: `verify` (the checks and the report), `runs` (which recorded run made the outputs present),
`card_checks` / `card_release` / `card_execution` / `manifests` (each model card against the files
it describes), `lock_check` (dvc.lock against the workspace), `ordering` (threshold and criteria
locks), `absent` (the one-line hint on a fresh clone), `release` (signatures), `timeline` (the
trail as a readable timeline), `reproduce` (the card's artifacts against a re-run; with `rerun`,
the worktree and the DVC run, `compare`, the Δ between two files, and `sources`, where the expected
bytes come from). Used by the CLI only; no stage imports it.
"""
