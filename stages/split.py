"""Stage split: the DVC entry point of `pathtrail.pipeline.split` (parses paths, calls `run`)."""

from pathtrail.pipeline import split
from pathtrail.pipeline.stagekit import stage_main

main = stage_main("split", split)

if __name__ == "__main__":
    main()
