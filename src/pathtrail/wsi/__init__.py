"""Whole-slide images to patches: `tiling.tile_slide_table(...)` (the tile stage and `pathtrail
predict --slides` call it), with `reader` (OpenSlide, tiffslide as the fallback), `slide_table`,
`tissue` (mask, pen and blur filters), `grid` (level choice, patch grid, resampling) and `qc`."""
