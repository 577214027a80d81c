"""Stage stain_fit: fit the Macenko reference on training patches only (never val/test/external)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pathtrail import audit
from pathtrail.io import read_table, write_json
from pathtrail.settings import DataParams, StainParams
from pathtrail.stagekit import entrypoint, get_logger, load, raw_section, stage_parser
from pathtrail.stain import MacenkoNormalizer
from pathtrail.store import load_rgb

FIT_KEY = 0x57A1


def parse_args(argv: list[str] | None):
    p = stage_parser("stain_fit", __doc__)
    p.add_argument("--train", default="data/split/train.csv")
    p.add_argument("--out", default="models/stain_reference.json")
    return p.parse_args(argv)


def pick_reference_rows(n: int, k: int, seed: int) -> np.ndarray:
    """A seeded, sorted sample of at most k training rows."""
    if n <= k:
        return np.arange(n)
    return np.sort(np.random.default_rng([seed, FIT_KEY]).choice(n, size=k, replace=False))


@entrypoint("stain_fit")
def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    data, stain = load(args, "data", DataParams), load(args, "stain", StainParams)
    root = Path(data.data_root)
    with audit.stage("stain_fit", inputs=[args.train, root], params={"stain": raw_section(args, "stain")},
                     trail=args.trail) as rec:
        table = read_table(args.train).sort_values("path", ignore_index=True)
        rows = pick_reference_rows(len(table), stain.fit_max_patches, data.split.seed)
        images = [load_rgb(root / table.path[i], data.patch_size) for i in rows]
        normalizer = MacenkoNormalizer(io=stain.io, alpha=stain.alpha, beta=stain.beta,
                                       min_tissue_fraction=stain.min_tissue_fraction,
                                       fallback=stain.fallback, chunk_size=stain.chunk_size).fit(images)
        reference = normalizer.to_dict()
        reference["fit_paths"] = [str(table.path[i]) for i in rows]
        write_json(reference, args.out)
        rec.outputs(args.out)
    get_logger().info("stain_fit.done", patches=len(rows), out=args.out)


if __name__ == "__main__":
    main()
