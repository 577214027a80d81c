"""`--slides S.csv`: whole-slide images tiled into the patch manifest that predict scores.

`tile_slide_table` (called by `predict._run` once the card is checked) tiles the slide table with
the card's own `tile` section and `data.patch_size` / `data.classes`, through the tile stage's
library (`pathtrail.wsi.tile_slide_table`), into the private work folder: the patches are cut as
the card's training data were. The table's slide paths are relative to the table's folder; its
columns are the tile stage's slide table (slide path, slide_id, patient_id, site, label, optional
regions). A card trained on patches (no `tile` section) is refused: it does not say how its
patches were cut from a slide.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pathtrail.config.loading import parse_section
from pathtrail.core.errors import PathTrailError
from pathtrail.core.text import printable


def tile_slide_table(slides: Path, params: Mapping[str, Any], workdir: Path) -> tuple[Path, Path]:
    """(manifest, data root) of the patches tiled from the slide table `slides` into `workdir` (a
    private folder, removed after the run), at the card's `params` (`tile`, `data.patch_size`)."""
    if not isinstance(params.get("tile"), Mapping):
        raise PathTrailError(
            f"--slides '{printable(str(slides))}': this card's model was trained on patches, not on tiled "
            "slides: its params have no `tile` section saying how patches are cut from a slide (resolution, "
            "tissue and quality filters). Tile the slides as its training patches were made and pass their "
            "manifest instead: --manifest PATCHES.csv --data-root FOLDER")
    from pathtrail.config.sections import DataParams, TileParams
    from pathtrail.wsi.tiling import tile_slide_table as tile_tables

    tile = parse_section(params, "tile", TileParams)
    data = parse_section(params, "data", DataParams)
    out = Path(workdir)
    out.mkdir(parents=True, exist_ok=True)
    result = tile_tables({"slides": slides}, Path(slides).parent, out, tile, classes=data.classes,
                         patch_size=data.patch_size)
    if not len(result.manifests["slides"]):
        raise PathTrailError(f"--slides '{printable(str(slides))}': no patch passed the card's tissue and quality "
                             "filters (see the tile settings in the card); nothing to score")
    return out / "slides.csv", out
