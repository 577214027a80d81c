"""Where a stage may write: refused before any work, with the option and path named.

A stage replaces each output whole (`pathtrail.core.staging`) and a failed run removes them
(`files.remove_outputs`), so an output path that names the wrong thing would delete it: `--out-dir .`
(the repository, .git included), `--out-dir data` when the images lie in data/my, `--report` on an
input. `check_outputs` refuses, before anything is read or written, an output that is
- the file system root, the working directory or a folder above it;
- outside the working directory (the repository: `dvc repro` runs each stage from its root, and
  dvc.yaml's outputs all lie inside it);
- equal to an input, a folder holding an input, or inside an input folder;
- equal to another output, or inside one.
An output is judged where it lies (its folder resolved, its own name kept), so an output that is a
symbolic link is the link, which the commit replaces; its target is never touched. Inputs are
judged both where they lie and where their links lead.
Tests: tests/unit/test_output_paths.py.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path

from pathtrail.core.errors import PathTrailError
from pathtrail.core.text import printable


def location(path: str | Path) -> Path:
    """Where `path` lies: its folder resolved (links followed), its last name kept as is."""
    path = Path(path)
    if path.name in ("", ".."):  # ".", "/", "a/.."
        return path.resolve()
    return path.parent.resolve() / path.name


def _inside(inner: Path, outer: Path) -> bool:
    return outer in inner.parents


def output_problem(output: str | Path, inputs: Iterable[str | Path] = (),
                   others: Iterable[str | Path] = (), *, base: str | Path | None = None,
                   within: bool = True) -> str | None:
    """Why `output` must not be written (see the module docstring), or None. `within=False` lets it
    lie outside the working directory (a file no stage publishes, such as a review copy)."""
    base = Path(base if base is not None else os.getcwd()).resolve()
    where = location(output)
    if where == Path(where.anchor):
        return "is the file system root"
    if where == base:
        return "is the working directory (the repository) itself"
    if _inside(base, where):
        return "is a folder above the working directory (the repository)"
    if within and not _inside(where, base):
        return (f"lies outside the working directory ({printable(str(base))}); stage outputs must lie "
                "inside the repository")
    for i in inputs:
        for place in {location(i), Path(i).resolve()}:
            if where == place:
                return f"is also an input of the stage ('{printable(str(i))}')"
            if _inside(place, where):
                return f"holds an input of the stage ('{printable(str(i))}'), which it would delete"
            if _inside(where, place):
                return f"lies inside an input of the stage ('{printable(str(i))}')"
    for o in others:
        other = location(o)
        if where == other:
            return f"is named twice as an output (also as '{printable(str(o))}')"
        if _inside(where, other) or _inside(other, where):
            return f"overlaps another output ('{printable(str(o))}')"
    return None


def check_outputs(outputs: Iterable[str | Path], inputs: Iterable[str | Path] = (), *,
                  options: Mapping[str, str] | None = None, base: str | Path | None = None,
                  within: bool = True) -> None:
    """Raise a PathTrailError naming the first unsafe output (and its option, when `options` maps the
    path as given to one), before anything is written."""
    outputs, inputs = list(dict.fromkeys(Path(o) for o in outputs)), list(inputs)
    for k, out in enumerate(outputs):
        problem = output_problem(out, inputs, outputs[:k] + outputs[k + 1:], base=base, within=within)
        if problem:
            option = (options or {}).get(str(out))
            named = f"{option} '{printable(str(out))}'" if option else f"output '{printable(str(out))}'"
            raise PathTrailError(f"{named} {problem}; nothing was written. Choose an output path "
                                 "inside the repository that holds none of the stage's inputs "
                                 "(e.g. the default in dvc.yaml).")
