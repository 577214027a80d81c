"""Reading a cohort manifest and checking it against the manifest schema, problem by problem.

A manifest is a CSV file with at least the columns path, label, patient_id, slide_id, site (extra
columns are kept). `read_manifest` accepts harmless variation (UTF-8 BOM, CRLF, blank lines, column
order, whitespace around headers, paths and extra cells, trailing empty columns; around labels
and ids it is an error) and returns a frame indexed by CSV line number (the header is line 1), so
every problem found later names the line a user sees in an editor. `schema_problems` runs the pandera schema once (lazy) and turns each failure into a
`Problem` with the rule broken and a hint to fix it.
"""

from __future__ import annotations

import codecs
import csv
import difflib
import io
import posixpath
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import pandera.pandas as pa

from pathtrail.core.text import printable
from pathtrail.data.access import Refusal, read_regular
from pathtrail.data.schemas import REQUIRED_COLUMNS, is_safe_path, manifest_schema

DEFAULT_MAX_MANIFEST_BYTES = 16 << 20  # data.max_manifest_bytes
DEFAULT_MAX_MANIFEST_ROWS = 200_000  # data.max_manifest_rows
_BOMS = ((codecs.BOM_UTF32_LE, "UTF-32 (little-endian)"), (codecs.BOM_UTF32_BE, "UTF-32 (big-endian)"),
         (codecs.BOM_UTF16_LE, "UTF-16 (little-endian)"), (codecs.BOM_UTF16_BE, "UTF-16 (big-endian)"))
FIX_HEADER = "the header must name at least the columns " + ",".join(REQUIRED_COLUMNS)
_SHOW_LINES = 10  # line numbers listed in one message before "..."


@dataclass(frozen=True)
class Cohort:
    """One cohort to validate: its manifest and the folder its paths are relative to."""

    name: str  # "internal" or "external"
    manifest: Path
    data_root: Path


@dataclass(frozen=True, slots=True)  # slots: a manifest may yield a million of them
class Problem:
    """One problem, located: manifest, CSV line (header = 1), column and file, where they apply."""

    severity: str  # "error" or "warning"
    rule: str
    message: str
    hint: str
    cohort: str | None = None
    manifest: str | None = None
    line: int | None = None
    column: str | None = None
    file: str | None = None

    def to_dict(self) -> dict[str, Any]:
        # flat values: `asdict`'s deep copy costs 100x more per problem
        return {name: getattr(self, name) for name in self.__slots__}

    def format(self) -> str:
        where = [f"{self.cohort} manifest '{self.manifest}'" if self.manifest
                 else self.cohort or ""]
        where += [f"line {self.line}"] if self.line is not None else []
        where += [f"column '{self.column}'"] if self.column else []
        where += [f"file '{shortened(self.file)}'"] if self.file else []
        head = ", ".join(w for w in where if w)
        return printable(f"{head}: [{self.rule}] {self.message}") + f"\n      fix: {printable(self.hint)}"


@dataclass
class Scope:
    """Collects the problems of one cohort, filling in where they happened."""

    cohort: Cohort
    problems: list[Problem] = field(default_factory=list)
    _manifest: str = field(default="", repr=False, compare=False)
    _texts: dict[str, str] = field(default_factory=dict, repr=False, compare=False)

    def add(self, severity: str, rule: str, message: str, hint: str, line: Any = None,
            column: str | None = None, file: str | None = None) -> None:
        manifest = self._manifest or self.cohort.manifest.as_posix()  # one string, shared
        self._manifest = manifest
        texts = self._texts  # equal messages and hints (one per missing file, say) share a string
        message, hint = texts.setdefault(message, message), texts.setdefault(hint, hint)
        where = (self.cohort.name, manifest, line_number(line), column, file)
        self.problems.append(Problem(severity, rule, message, hint, *where))


SHOWN_PATH_CHARS = 200  # longer paths are shortened on the console (the JSON keeps them whole)


def shortened(text: str, limit: int = SHOWN_PATH_CHARS) -> str:
    """`text`, or its start and end around an ellipsis when longer than `limit` characters."""
    if len(text) <= limit:
        return text
    half = (limit - 1) // 2
    return f"{text[:half]}…{text[-(limit - 1 - half):]}"


def line_number(value: Any) -> int | None:
    return None if value is None or pd.isna(value) else int(value)


def list_lines(lines: Any) -> str:
    lines = sorted(int(x) for x in lines)
    more = f", ... ({len(lines)} in all)" if len(lines) > _SHOW_LINES else ""
    return ", ".join(map(str, lines[:_SHOW_LINES])) + more


def read_manifest(scope: Scope, max_bytes: int = DEFAULT_MAX_MANIFEST_BYTES,
                  max_rows: int = DEFAULT_MAX_MANIFEST_ROWS) -> pd.DataFrame | None:
    """The manifest as a frame of stripped strings (empty cells null), indexed by CSV line number.

    Only a regular file of at most `max_bytes` is read (`pathtrail.data.access`): `--internal
    /dev/zero` or a FIFO is refused from its `stat`; parsing stops past `max_rows` rows (memory
    grows with rows, about 0.5 KB each when every row has a problem). Returns None when the file cannot be read as a
    table at all (the reasons are in `scope`).
    """
    add = scope.add
    raw = read_regular(scope.cohort.manifest, max_bytes)
    if isinstance(raw, Refusal):
        if raw.kind == "missing":
            add("error", "manifest_missing", "the manifest file does not exist",
                f"check the path given for the {scope.cohort.name} manifest")
        elif raw.kind == "too_large":
            add("error", "manifest_too_large", f"the manifest {raw.reason}; it was not read",
                "check that this is the manifest (one row per patch); raise "
                "data.max_manifest_bytes / --max-manifest-bytes if it is")
        else:
            add("error", "manifest_unreadable", f"the manifest cannot be read: it {raw.reason}"
                if raw.kind == "not_a_file" else f"the manifest cannot be read ({raw.reason})",
                "pass a readable CSV file" if raw.kind == "not_a_file" else raw.hint)
        return None
    if not raw.strip():
        add("error", "manifest_empty", f"the manifest is empty ({len(raw)} bytes)", FIX_HEADER +
            ", then one row per patch")
        return None
    if wide := wide_encoding(raw):
        source = wide.split(" ")[0] + ("" if "with a BOM" in wide else
                                       "LE" if "little" in wide else "BE")
        add("error", "manifest_encoding", f"the manifest is {wide}, not UTF-8", "save it as UTF-8 "
            f"CSV (in Excel: 'CSV UTF-8'; or: iconv -f {source} -t UTF-8)")
        return None
    if b"\0" in raw:
        add("error", "manifest_encoding", "the manifest contains NUL bytes: it is binary data, not "
            "CSV text", "pass the CSV manifest (UTF-8 text)", line=raw[:raw.index(b"\0")].count(b"\n") + 1)
        return None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        add("error", "manifest_encoding", "the manifest is not UTF-8 text", "save it as UTF-8 CSV "
            "(in Excel: 'CSV UTF-8')", line=raw[:exc.start].count(b"\n") + 1)
        return None
    reader = csv.reader(io.StringIO(text, newline=""))
    header: list[str] | None = None
    rows, lines, padded, end, header_line = [], [], [], 0, 1
    try:
        for record in reader:
            start, end = end + 1, reader.line_num
            if not any(cell.strip() for cell in record):
                continue
            if header is None:
                header, header_line = [cell.strip() for cell in record], start
            elif len(rows) >= max_rows:
                add("error", "manifest_too_large", f"the manifest has more than {max_rows} rows; "
                    "it was not checked", "split the cohort, or raise data.max_manifest_rows / "
                    "--max-manifest-rows", line=start)
                return None
            else:
                rows.append([cell.strip() or None for cell in record])
                lines.append(start)
                padded.append({i: cell for i, cell in enumerate(record)
                               if cell.strip() and cell != cell.strip()})
    except csv.Error as exc:
        add("error", "manifest_syntax", f"the CSV cannot be parsed: {exc}",
            "check the quoting on this line", line=reader.line_num)
        return None
    assert header is not None  # the file has a non-blank record
    keep = _check_header(header, rows, scope, header_line)
    if keep is None:
        return None
    width, well_formed = len(header), []
    _whitespace_problems(header, lines, padded, scope)
    for line, row in zip(lines, rows, strict=True):
        if len(row) > width and not any(row[width:]):
            del row[width:]  # trailing empty cells (e.g. commas added by a spreadsheet)
        if len(row) == width:
            well_formed.append((line, row))
        else:  # its cells cannot be trusted, so it is reported once, not checked further
            add("error", "field_count",
                f"this row has {len(row)} fields but the header has {width}",
                "check the quoting (an unclosed \" swallows the rest of the row), quote values "
                "that contain commas, fill in or remove cells", line=line)
    frame = pd.DataFrame([r for _, r in well_formed], columns=header, dtype="str",
                         index=pd.Index([n for n, _ in well_formed], name="line", dtype="int64"))
    frame = frame[[header[i] for i in keep]]
    if not rows:
        add("error", "manifest_no_rows", "the manifest has a header but no rows",
            "add one row per patch below the header", line=header_line)
        return None
    if "path" in frame:  # "a/./b.png" and "a/b.png" are one file: compare normalized paths
        safe = is_safe_path(frame["path"])
        frame.loc[safe, "path"] = [posixpath.normpath(p) for p in frame.loc[safe, "path"]]
    return frame


_SPACED_COLUMNS = ("label", "patient_id", "slide_id", "site")


def _whitespace_problems(header: list[str], lines: list[int], padded: list[dict[int, str]],
                         scope: Scope) -> None:
    """Values with leading/trailing spaces in label and the id columns: one error per column."""
    for name in _SPACED_COLUMNS:
        if name not in header:
            continue
        i = header.index(name)
        hits = [(line, cells[i]) for line, cells in zip(lines, padded, strict=True) if i in cells]
        if hits:
            scope.add("error", "value_whitespace", f"{len(hits)} value(s) have leading or trailing "
                      f"spaces, e.g. '{hits[0][1]}' (lines {list_lines(h[0] for h in hits)})",
                      f"remove the spaces around the {name} values: ' tumour' is not the class "
                      "'tumour' and ' P1' not the patient 'P1' to every tool downstream "
                      "(spreadsheets and hand-edited CSVs add them)", line=hits[0][0], column=name)


def wide_encoding(raw: bytes) -> str | None:
    """'UTF-16 (little-endian) with a BOM' and the like when `raw` is UTF-16/32 text, else None.

    Without a BOM the NUL bytes give it away: CSV text is mostly ASCII (digits, commas, newlines),
    whose UTF-16/32 code units are one ASCII byte and one or three NULs, in a fixed order.
    """
    for bom, name in _BOMS:
        if raw.startswith(bom):
            return f"{name} with a BOM"
    head = raw[:4096]
    if b"\0" not in head or len(head) < 4:
        return None
    head = head[:len(head) - len(head) % 4]
    quarter = len(head) // 4
    zeros = [head[k::4].count(0) / quarter for k in range(4)]
    if min(zeros[1:]) >= 0.9 and zeros[0] <= 0.1:
        return "UTF-32 (little-endian) without a BOM"
    if min(zeros[:3]) >= 0.9 and zeros[3] <= 0.1:
        return "UTF-32 (big-endian) without a BOM"
    even, odd = head[0::2].count(0) / (2 * quarter), head[1::2].count(0) / (2 * quarter)
    if odd >= 0.6 and even <= 0.1:
        return "UTF-16 (little-endian) without a BOM"
    if even >= 0.6 and odd <= 0.1:
        return "UTF-16 (big-endian) without a BOM"
    return None


def _check_header(header: list[str], rows: list[list[Any]], scope: Scope,
                  line: int) -> list[int] | None:
    """Indices of the columns to keep; None when the header is unusable (reported in `scope`)."""
    keep, usable = [], True
    for name, count in Counter(header).items():
        if count > 1 and name:
            scope.add("error", "column_duplicate", f"column '{name}' appears {count} times in the "
                      "header", "rename or remove the duplicates", line=line, column=name)
            usable = False
    for i, name in enumerate(header):
        if name:
            keep.append(i)
        elif any(len(r) > i and r[i] for r in rows):
            scope.add("error", "column_unnamed", f"column {i + 1} has no name but holds values",
                      "give it a name in the header or delete it", line=line)
            usable = False
    lower = {name.lower(): name for name in header if name}
    if len(header) == 1 and (sep := next((c for c in ";\t|" if c in header[0]), None)):
        scope.add("error", "manifest_separator", f"the header is one column; the file seems to use "
                  f"{sep!r} as separator", "save the manifest as comma-separated CSV", line=line)
        return None
    for name in REQUIRED_COLUMNS:
        if name not in header:
            close = lower.get(name) or next(iter(difflib.get_close_matches(name, lower, 1)), None)
            hint = f"rename column '{lower.get(close, close)}' to '{name}'" if close else (
                f"add the column; {FIX_HEADER} (found: {', '.join(h for h in header if h)})")
            scope.add("error", "column_missing", f"required column '{name}' is missing", hint,
                      line=line, column=name)
    return keep if usable else None


_ESCAPE_HINT = ("write the path from the data root down, without '..'; point the data root higher "
                "if the file lives elsewhere")
_LABEL_HINT = "use a class index (0..{k}) or one of the names {names} (data.classes / --classes)"
_SCHEMA_RULES = {  # pandera check -> (rule, message, hint); {value} is the failing cell
    "not_nullable": ("empty_value", "the cell is empty", "fill in a {column} for every row"),
    "path_absolute": ("path_absolute", "the path '{value}' is absolute",
                      "write paths relative to the data root '{root}'"),
    "path_parent": ("path_escapes_root", "the path '{value}' contains '..', it may leave the root",
                    _ESCAPE_HINT),
    "path_backslash": ("path_backslash", "the path '{value}' contains a backslash",
                       "use '/' as the folder separator"),
    "label_domain": ("label_unknown", "label '{value}' is not a declared class", _LABEL_HINT),
}


def schema_problems(frame: pd.DataFrame, scope: Scope, classes: tuple[str, ...]) -> None:
    """Run the manifest schema (lazy: all failures) and turn each failure into a Problem."""
    try:
        manifest_schema(classes).validate(frame, lazy=True)
        return
    except pa.errors.SchemaErrors as exc:
        cases = exc.failure_cases
    root = scope.cohort.data_root.as_posix()
    names = ", ".join(repr(c) for c in classes)
    repeated = _repeated_lines(frame, cases)
    paths = frame["path"].to_dict() if "path" in frame else {}  # .at per row: 30 s per 200,000
    texts: dict[tuple[Any, ...], tuple[str, str]] = {}  # formatted once when value-free
    for column, check, value, line in zip(cases["column"], cases["check"], cases["failure_case"],
                                          cases["index"], strict=True):
        file = paths.get(line) if line_number(line) else None
        file = None if pd.isna(file) else file
        if check == "column_in_dataframe":
            continue  # reported by _check_header, with a hint
        if check == "field_uniqueness":
            first, shown = repeated[column, value]
            if line_number(line) != first:
                scope.add("error", "duplicate_path", f"the path is listed more than once (lines "
                          f"{shown})", "list every patch once; delete the repeated rows",
                          line, column, file)
            continue
        rule, message, hint = _SCHEMA_RULES.get(
            check, (check, f"value '{value}' fails check {check}", "correct the value"))
        key = (check, column)
        if key not in texts:
            fmt = {"value": value, "column": column, "root": root, "k": len(classes) - 1,
                   "names": names}
            text = (message.format(**fmt), hint.format(**fmt))
            if "{value}" in message + hint:
                scope.add("error", rule, *text, line, column, file)
                continue
            texts[key] = text
        scope.add("error", rule, *texts[key], line, column, file)


def _repeated_lines(frame: pd.DataFrame, cases: pd.DataFrame) -> dict[tuple[str, Any], tuple[int, str]]:
    """(column, value) -> (first line, `list_lines` text) for every value failing uniqueness.

    Grouped once: per failing row it would be quadratic (20,000 copies of one path took minutes).
    """
    out: dict[tuple[str, Any], tuple[int, str]] = {}
    unique = cases[cases["check"] == "field_uniqueness"]
    for column in unique["column"].unique():
        values = frame[column]
        values = values[values.isin(unique.loc[unique["column"] == column, "failure_case"])]
        for value, lines in values.groupby(values, sort=False).groups.items():
            out[column, value] = (int(min(lines)), list_lines(lines))
    return out
