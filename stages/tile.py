"""Stage tile: the DVC entry point of `pathtrail.pipeline.tile` (parses paths, calls `run`)."""

from pathtrail.pipeline import tile
from pathtrail.pipeline.stagekit import stage_main

main = stage_main("tile", tile)

if __name__ == "__main__":
    main()
