"""The `pathtrail` command: `main.main` (validate, verify, trail; also `python -m pathtrail.cli`),
`validate` (the `pathtrail validate` command)."""
