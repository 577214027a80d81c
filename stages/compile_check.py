"""Stage compile_check: the DVC entry point of `pathtrail.pipeline.compile_check` (parses paths, calls `run`)."""

from pathtrail.pipeline import compile_check
from pathtrail.pipeline.stagekit import stage_main

main = stage_main("compile_check", compile_check)

if __name__ == "__main__":
    main()
