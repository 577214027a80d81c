"""Stage store_merge: the DVC entry point of `pathtrail.pipeline.store_merge` (joins normalize shards)."""

from pathtrail.pipeline import store_merge
from pathtrail.pipeline.stagekit import stage_main

main = stage_main("store_merge", store_merge)

if __name__ == "__main__":
    main()
