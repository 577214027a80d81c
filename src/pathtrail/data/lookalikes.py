"""Ids that read alike but compare unequal: invisible characters, case, width, mixed scripts.

`P0` followed by a zero-width space, the fullwidth `Ｐ0` and `p0` print like (or almost like) the
patient `P0`, yet every tool downstream takes them for another patient: the external cohort would
look independent while it is not, and one patient could fall into train and test. So:

- `text_problems`: a patient_id, slide_id, site or label holding an invisible format character
  (Unicode category Cf: U+200B, U+FEFF, ...) or another non-printable one is an error, and so is a
  value mixing Latin, Cyrillic and Greek letters (`siteА` with a Cyrillic А): no honest id does.
  That check is the only defence against confusables within one script pair; it does not know
  look-alikes such as Latin `l` and digit `1`.
- `within_cohort_problems` / `across_cohort_problems`: values whose `lookalike_key` (NFKC,
  casefolded, Cf characters removed) is equal but whose text differs are reported as
  "looks like" collisions, for patients and slides errors; for sites an error unless shared sites
  are allowed (`data.allow_shared_site`).
"""

from __future__ import annotations

import unicodedata

import numpy as np
import pandas as pd

from pathtrail.core.text import printable
from pathtrail.data.manifests import Scope

TEXT_COLUMNS = ("patient_id", "slide_id", "site", "label")
_SCRIPTS = ("LATIN", "CYRILLIC", "GREEK")


def lookalike_key(value: str) -> str:
    """The form two ids that read alike share: NFKC, casefolded, format characters dropped."""
    text = unicodedata.normalize("NFKC", value).casefold()
    return "".join(c for c in text if unicodedata.category(c) != "Cf")


def _bad_character(value: str) -> str | None:
    return next((c for c in value if not c.isprintable() and c != " "), None)


def _scripts(value: str) -> list[str]:
    found = {unicodedata.name(c, "").split(" ")[0] for c in value if c.isalpha()}
    return sorted(found & set(_SCRIPTS))


def text_problems(frame: pd.DataFrame, scope: Scope) -> None:
    """Invisible or non-printable characters, and mixed scripts, in ids and labels: one error each."""
    for column in TEXT_COLUMNS:
        if column not in frame:
            continue
        values = frame[column].dropna()
        values = values[np.array([not (v.isprintable() and v.isascii()) for v in values], bool)]
        for line, value in values.items():  # few: the rest is skipped by two C-speed passes
            bad, scripts = _bad_character(value), _scripts(value)
            file = frame.at[line, "path"] if "path" in frame else None
            file = None if pd.isna(file) else file
            if bad is not None:
                name = unicodedata.name(bad, unicodedata.category(bad))
                scope.add("error", "value_invisible_character", f"the {column} "
                          f"'{printable(value)}' contains the invisible or non-printable character "
                          f"{printable(bad)} ({name})", f"delete the character: '{printable(value)}'"
                          f" prints like another {column} but is not equal to it", line, column,
                          file)
            elif len(scripts) > 1:
                scope.add("error", "value_mixed_scripts", f"the {column} '{value}' mixes "
                          f"{' and '.join(s.title() for s in scripts)} letters "
                          f"({printable(value.encode('ascii', 'backslashreplace').decode())})",
                          "retype the value in one script: a Cyrillic or Greek letter that looks "
                          "Latin makes another id", line, column, file)


def _keys(values: pd.Series) -> pd.DataFrame:
    """First line of each distinct value, with its key."""
    values = values.dropna()
    first = values.reset_index().groupby(values.name, sort=True)["line"].min()
    return pd.DataFrame({"line": first, "key": [lookalike_key(v) for v in first.index]})


def within_cohort_problems(frame: pd.DataFrame, scope: Scope) -> None:
    """Patient or slide ids of one cohort that differ only in case, width or invisible characters."""
    for column, noun in (("patient_id", "patient"), ("slide_id", "slide")):
        if column not in frame:
            continue
        keys = _keys(frame[column])
        for _, group in keys[keys["key"].duplicated(keep=False)].groupby("key", sort=True):
            group = group.sort_values("line")
            shown = ", ".join(f"'{printable(v)}' (line {n})" for v, n in group["line"].items())
            scope.add("error", f"{noun}_lookalike", f"the {noun} ids {shown} look alike but differ "
                      "(in case, width or invisible characters)", f"spell each {noun}'s id one "
                      f"way: as they are, they count as {len(group)} {noun}s, which the split may "
                      "put into different sets", int(group["line"].iloc[1]), column)


def across_cohort_problems(frames: dict[str, pd.DataFrame], scopes: dict[str, Scope],
                           allow_shared_site: bool = False) -> None:
    """External ids that look like (but do not equal) internal ones: see the module docstring."""
    if not {"internal", "external"} <= frames.keys():
        return
    nouns = {"patient_id": "patient", "slide_id": "slide"}
    if not allow_shared_site:
        nouns["site"] = "site"
    other = scopes["external"].cohort.manifest.as_posix()
    for column, noun in nouns.items():
        if column not in frames["internal"] or column not in frames["external"]:
            continue
        internal, external = _keys(frames["internal"][column]), _keys(frames["external"][column])
        by_key = external.reset_index().groupby("key").first()
        for value, row in internal.iterrows():
            if row["key"] not in by_key.index:
                continue
            ext_value, ext_line = by_key.loc[row["key"], column], by_key.loc[row["key"], "line"]
            if ext_value == value:
                continue  # equal: reported as in both cohorts
            hint = ("take the external cohort from another site, or set data.allow_shared_site / "
                    "--allow-shared-site" if column == "site" else "if it is the same "
                    f"{noun}, remove it from one cohort; if not, give it an id that does not read "
                    "like the other")
            frame = frames["internal"]
            scopes["internal"].add(
                "error", f"{noun}_lookalike_in_both_cohorts", f"external {noun} "
                f"'{printable(ext_value)}' (line {ext_line} of '{other}') looks like internal "
                f"{noun} '{printable(value)}'; the external cohort must be independent", hint,
                int(row["line"]), column, frame.at[int(row["line"]), "path"])
