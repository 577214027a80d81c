"""Stage ensemble_member: the DVC entry point of `pathtrail.pipeline.ensemble_member`."""

from pathtrail.pipeline import ensemble_member
from pathtrail.pipeline.stagekit import stage_main

main = stage_main("ensemble_member", ensemble_member)

if __name__ == "__main__":
    main()
