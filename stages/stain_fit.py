"""Stage stain_fit: the DVC entry point of `pathtrail.pipeline.stain_fit` (parses paths, calls `run`)."""

from pathtrail.pipeline import stain_fit
from pathtrail.pipeline.stagekit import stage_main

main = stage_main("stain_fit", stain_fit)

if __name__ == "__main__":
    main()
