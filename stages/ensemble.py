"""Stage ensemble: the DVC entry point of `pathtrail.pipeline.ensemble`."""

from pathtrail.pipeline import ensemble
from pathtrail.pipeline.stagekit import stage_main

main = stage_main("ensemble", ensemble)

if __name__ == "__main__":
    main()
