"""Stage validate: the DVC entry point of `pathtrail.pipeline.validate` (parses paths, calls `run`)."""

from pathtrail.pipeline import validate
from pathtrail.pipeline.stagekit import stage_main

main = stage_main("validate", validate)

if __name__ == "__main__":
    main()
