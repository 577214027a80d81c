"""Stage evaluate: the DVC entry point of `pathtrail.pipeline.evaluate` (parses paths, calls `run`)."""

from pathtrail.pipeline import evaluate
from pathtrail.pipeline.stagekit import stage_main

main = stage_main("evaluate", evaluate)

if __name__ == "__main__":
    main()
