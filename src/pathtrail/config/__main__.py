"""`python -m pathtrail.config [overrides...]`: regenerate params.yaml from pipelines/."""

from pathtrail.config.compose import main

main()
