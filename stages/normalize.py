"""Stage normalize: Macenko-normalize every validated patch into the sharded patch store."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from pathtrail import audit, figures
from pathtrail.io import atomic_dir, read_json, read_table, remove_outputs, write_json
from pathtrail.logs import progress_enabled
from pathtrail.settings import DataParams, StainParams
from pathtrail.stagekit import entrypoint, get_logger, load, raw_section, stage_parser
from pathtrail.stain import MacenkoNormalizer
from pathtrail.store import StoreWriter, load_rgb

COHORTS = ("internal", "external")
CHUNK = 512


def parse_args(argv: list[str] | None):
    p = stage_parser("normalize", __doc__)
    p.add_argument("--validated", default="data/validated", help="folder with internal.csv / external.csv")
    p.add_argument("--reference", default="models/stain_reference.json")
    p.add_argument("--out", default="data/store")
    p.add_argument("--report", default="reports/normalization.json")
    p.add_argument("--figure", default="reports/figures/stain_before_after.png")
    return p.parse_args(argv)


def by_slide(stain: StainParams) -> bool:
    """Whether patches are normalized slide by slide: per-slide scope, or the "slide" fallback (a
    patch that falls back uses its whole slide's estimate, so a slide must never be split)."""
    return stain.scope == "slide" or stain.fallback == "slide"


def batches(table: pd.DataFrame, slides: bool):
    """Row groups to normalize together: one group per slide, or fixed-size chunks."""
    if slides:
        for _, group in table.groupby("slide_id", sort=True):
            yield group
    else:
        for start in range(0, len(table), CHUNK):
            yield table.iloc[start : start + CHUNK]


@entrypoint("normalize")
def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    data, stain = load(args, "data", DataParams), load(args, "stain", StainParams)
    root = Path(data.data_root)
    tables = {c: Path(args.validated) / f"{c}.csv" for c in COHORTS if (Path(args.validated) / f"{c}.csv").is_file()}
    with audit.stage("normalize", inputs=[*tables.values(), args.reference, root],
                     params={"stain": raw_section(args, "stain")}, trail=args.trail) as rec:
        # stain.fallback decides the batching below, so the normalizer follows it too (stain_fit
        # stores the same value in the reference; this keeps both in step under `-S` overrides).
        normalizer = MacenkoNormalizer.from_dict(read_json(args.reference), fallback=stain.fallback)
        report: dict = {"enabled": stain.enable_stain_norm, "scope": stain.scope, "fallback": stain.fallback,
                        "reference_sha256": normalizer.to_dict().get("reference_sha256"), "cohorts": {}}
        samples: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        shape = (data.patch_size, data.patch_size, 3)
        try:
            with atomic_dir(args.out) as tmp:
                writer = StoreWriter(tmp, stain.shard_size, shape)
                for cohort, path in tables.items():
                    table = read_table(path)
                    table = table.sort_values(["slide_id", "path"] if by_slide(stain) else ["path"],
                                              ignore_index=True)
                    counts = {"patches": 0, "fallback": 0, "fallback_slide": 0}
                    bar = tqdm(total=len(table), desc=f"normalize {cohort}", disable=not progress_enabled())
                    for group in batches(table, by_slide(stain)):
                        raw = np.stack([load_rgb(root / p, data.patch_size) for p in group.path])
                        out = raw
                        if stain.enable_stain_norm:
                            out = (normalizer.normalize_slide(raw) if stain.scope == "slide"
                                   else normalizer.normalize(raw, slide_ids=group.slide_id.tolist()))
                            for key in ("fallback", "fallback_slide"):
                                counts[key] += int(normalizer.last_stats.get(key, 0))
                        counts["patches"] += len(raw)
                        rows = group.assign(cohort=cohort)
                        writer.add(out, rows)
                        if cohort not in samples:
                            samples[cohort] = (raw[:6], out[:6])
                        bar.update(len(raw))
                    bar.close()
                    report["cohorts"][cohort] = counts
                writer.close()
            figure_rows = [(f"{c} {kind}", imgs[i]) for c, imgs in samples.items()
                           for i, kind in enumerate(("before", "after"))]
            figures.image_grid(figure_rows, args.figure)
            write_json(report, args.report)
        except BaseException:
            remove_outputs(args.out, args.report, args.figure)
            raise
        rec.note(**{f"{c}_{key}": v[key] for c, v in report["cohorts"].items()
                    for key in ("fallback", "fallback_slide")})
        rec.outputs(args.out, args.report, args.figure)
    get_logger().info("normalize.done", **{c: v for c, v in report["cohorts"].items()})


if __name__ == "__main__":
    main()
