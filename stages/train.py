"""Stage train: the DVC entry point of `pathtrail.pipeline.train` (parses paths, calls `run`)."""

from pathtrail.pipeline import train
from pathtrail.pipeline.stagekit import stage_main

main = stage_main("train", train)

if __name__ == "__main__":
    main()
