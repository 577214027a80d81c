"""The slide table: one row per slide, validated like a cohort manifest.

Columns `path` (the slide file, relative to `tile.slide_root`), `slide_id`, `patient_id`, `site`,
`label` (the slide-level class, a name or index of `data.classes`), optional `regions` (annotated
regions to tile: `x,y,w,h` rectangles in level-0 pixels, separated by `;`; empty: the whole slide),
and any extra columns, which are copied to every patch of the slide. It is read by the manifest
reader (`pathtrail.data.manifests`: byte and row budgets, encodings, whitespace around ids, paths
that are absolute or contain '..', unknown labels), plus the rules of a slide table: one row per
slide_id, and well-formed regions. All problems are listed at once, user strings escaped.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from pathtrail.core.errors import PathTrailError
from pathtrail.core.text import printable
from pathtrail.data.manifests import Cohort, Scope, list_lines, read_manifest, schema_problems
from pathtrail.data.schemas import REQUIRED_COLUMNS

SLIDE_COLUMNS = REQUIRED_COLUMNS  # path, label, patient_id, slide_id, site: the manifest's own
REGIONS_COLUMN = "regions"
# columns the tile stage writes itself; a slide table may not bring its own
PATCH_COLUMNS = ("x", "y", "level", "mpp", "mpp_source")
_RECT = re.compile(r"^\s*(\d+)\s*,\s*(\d+)\s*,\s*(\d+)\s*,\s*(\d+)\s*$")
MAX_REGIONS = 1000


class SlideTableError(PathTrailError):
    """A slide table with problems; the message lists every one."""


@dataclass(frozen=True)
class SlideRow:
    cohort: str
    line: int
    path: str                   # relative to the slide root, normalized
    slide_id: str
    patient_id: str
    site: str
    label: str
    regions: tuple[tuple[int, int, int, int], ...]   # (x, y, w, h), level 0; empty: everything
    extra: tuple[tuple[str, str | None], ...]        # other columns, in table order


def parse_regions(text: object) -> tuple[tuple[int, int, int, int], ...] | None:
    """`x,y,w,h;x,y,w,h` -> rectangles; None when malformed (a zero width or height included).
    An empty cell (None, or pandas' NaN) is no region: the whole slide."""
    if not isinstance(text, str) or not text.strip():
        return ()
    parts = [p for p in text.split(";") if p.strip()]
    if len(parts) > MAX_REGIONS:
        return None
    rects = []
    for part in parts:
        m = _RECT.match(part)
        if not m:
            return None
        x, y, w, h = (int(v) for v in m.groups())
        if w < 1 or h < 1:
            return None
        rects.append((x, y, w, h))
    return tuple(rects)


def read_slide_table(cohort: str, table: Path, slide_root: Path, classes: tuple[str, ...],
                     max_bytes: int, max_rows: int) -> tuple[list[SlideRow], list[str]]:
    """The rows of one slide table, and its problems formatted for a person (empty when fine)."""
    scope = Scope(Cohort(f"{cohort} slides", table, slide_root))
    frame = read_manifest(scope, max_bytes, max_rows)
    rows: list[SlideRow] = []
    if frame is not None:
        schema_problems(frame, scope, classes)
        _slide_rules(frame, scope)
    if any(p.severity == "error" for p in scope.problems) or frame is None:
        return [], [p.format() for p in scope.problems if p.severity == "error"]
    extra = [c for c in frame.columns if c not in (*SLIDE_COLUMNS, REGIONS_COLUMN)]
    for line, rec in zip(frame.index, frame.to_dict("records"), strict=True):
        rows.append(SlideRow(cohort, int(line), rec["path"], rec["slide_id"], rec["patient_id"],
                             rec["site"], rec["label"], parse_regions(rec.get(REGIONS_COLUMN)) or (),
                             tuple((c, rec[c]) for c in extra)))
    return rows, []


def _slide_rules(frame: pd.DataFrame, scope: Scope) -> None:
    if "slide_id" in frame:
        ids = frame["slide_id"].dropna()
        repeated = ids[ids.duplicated(keep=False)]
        for value, lines in repeated.groupby(repeated, sort=False).groups.items():
            scope.add("error", "duplicate_slide", f"slide_id '{value}' is listed more than once "
                      f"(lines {list_lines(lines)})", "list every slide once: one row per slide",
                      line=min(lines), column="slide_id")
    if REGIONS_COLUMN in frame:
        for line, text in frame[REGIONS_COLUMN].items():
            if parse_regions(text) is None:
                scope.add("error", "regions_malformed", f"regions '{str(text)[:200]}' are not "
                          "rectangles 'x,y,w,h' separated by ';'",
                          "write each region as four whole numbers (level-0 pixels: left, top, "
                          f"width, height, width and height >= 1), at most {MAX_REGIONS}, or leave "
                          "the cell empty to tile the whole slide", line=line, column=REGIONS_COLUMN)
    for name in PATCH_COLUMNS:
        if name in frame:
            scope.add("error", "column_reserved", f"column '{name}' is written by the tile stage",
                      "rename or remove that column of the slide table", column=name)


def check_tables(tables: list[tuple[list[SlideRow], list[str]]]) -> list[SlideRow]:
    """All rows of the tables, or a SlideTableError listing every problem of all of them;
    a slide_id or a slide file in two cohorts is a problem too."""
    problems = [p for _, probs in tables for p in probs]
    rows = [r for rs, _ in tables for r in rs]
    seen: dict[str, SlideRow] = {}
    seen_path: dict[str, SlideRow] = {}
    for r in rows:
        for key, index in ((r.slide_id, seen), (r.path, seen_path)):
            other = index.setdefault(key, r)
            if other is not r and other.cohort != r.cohort:
                what = "slide_id" if index is seen else "slide file"
                problems.append(f"{what} '{printable(key)}' is in both the {other.cohort} and the {r.cohort} "
                                f"slide tables\n      fix: a slide belongs to one cohort")
    if problems:
        shown = "\n".join(f"  - {p}" for p in problems)
        raise SlideTableError(f"{len(problems)} problem(s) in the slide tables; nothing was tiled.\n{shown}")
    return rows
