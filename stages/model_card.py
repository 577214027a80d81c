"""Stage model_card: the DVC entry point of `pathtrail.pipeline.model_card` (parses paths, calls `run`)."""

from pathtrail.pipeline import model_card
from pathtrail.pipeline.stagekit import stage_main

main = stage_main("model_card", model_card)

if __name__ == "__main__":
    main()
