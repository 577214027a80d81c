"""Stage demo_data: the DVC entry point of `pathtrail.pipeline.demo_data` (parses paths, calls `run`)."""

from pathtrail.pipeline import demo_data
from pathtrail.pipeline.stagekit import stage_main

main = stage_main("demo_data", demo_data)

if __name__ == "__main__":
    main()
