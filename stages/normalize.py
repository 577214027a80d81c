"""Stage normalize: the DVC entry point of `pathtrail.pipeline.normalize` (parses paths, calls `run`)."""

from pathtrail.pipeline import normalize
from pathtrail.pipeline.stagekit import stage_main

main = stage_main("normalize", normalize)

if __name__ == "__main__":
    main()
