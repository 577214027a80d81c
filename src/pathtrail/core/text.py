"""Text from files shown on a terminal or placed in Markdown: control characters made visible,
Markdown and HTML made inert."""

from __future__ import annotations

import re
import unicodedata
from typing import Any

_CONTROL = {c: f"\\x{c:02x}" for c in [*range(0x20), *range(0x7F, 0xA0)] if c != 0x09}
# bidirectional marks, overrides and isolates, zero-width marks, line and paragraph separators
_CONTROL |= {c: f"\\u{c:04x}" for c in [0x061C, 0x200E, 0x200F, 0x2028, 0x2029, *range(0x202A, 0x202F),
                                          *range(0x2066, 0x206A), 0xFEFF]}


class _Escapes(dict):
    """`_CONTROL`, and any other invisible format character (Unicode category Cf: zero-width
    space U+200B, joiners, word joiner U+2060, soft hyphen, tags ...) as \\uNNNN, found on first
    use: two ids differing only by one would otherwise print identically."""

    def __init__(self, table: dict[int, str], lowest: int, json: bool = False) -> None:
        super().__init__(table)
        self._lowest, self._json = lowest, json  # JSON: astral ones as a surrogate pair

    def __missing__(self, c: int) -> str:
        if c >= self._lowest and unicodedata.category(chr(c)) == "Cf":
            high, low = divmod(c - 0x10000, 0x400)
            value = (f"\\u{c:04x}" if c <= 0xFFFF else f"\\u{0xD800 + high:04x}\\u{0xDC00 + low:04x}"
                     if self._json else f"\\U{c:08x}")
        else:
            value = chr(c)
        self[c] = value
        return value


def printable(text: str) -> str:
    """Control characters (newlines, ANSI escapes, C1 codes) shown as \\xNN, and bidirectional or
    line-separator code points as \\uNNNN: a hostile file name or error text cannot forge report
    lines, reorder them visually or recolour the terminal."""
    return str(text).translate(_PRINTABLE)


_PRINTABLE = _Escapes(_CONTROL, 0)
_JSON_UNSAFE = _Escapes({c: f"\\u{c:04x}" for c in _CONTROL if c >= 0x7F}, 0x7F, json=True)  # json.dumps
# escapes the rest


def json_printable(text: str) -> str:
    """JSON text (from `json.dumps`) with C1 controls and bidirectional or separator code points
    written as `\\uXXXX`: the same JSON value, safe on a terminal (`ensure_ascii=False` keeps
    them raw; the C0 controls are escaped by `json.dumps` itself)."""
    return text.translate(_JSON_UNSAFE)


# Escaped wherever they stand: emphasis, code spans and fences, links and images, table cells,
# strikethrough, (GitHub) math, and everything HTML. `>` as an entity also cannot open a blockquote.
_INLINE = str.maketrans({
    "\\": "\\\\", "`": "\\`", "*": "\\*", "_": "\\_", "[": "\\[", "]": "\\]", "|": "\\|",
    "~": "\\~", "$": "\\$", "<": "&lt;", ">": "&gt;", "&": "&amp;", '"': "&quot;",
})
_EDGE_SPACE = {" ": "&#32;", "\t": "&#9;"}  # leading: no indented code; trailing: no hard break
# Line starts that would open a block: a heading, list item, setext underline or thematic break
# (`#`, `+`, `-`, `=`; followed by a digit they cannot: -0.5, #3), an ordered list item (`1.`, `2)`).
_BULLET = re.compile(r"[#+=-](?![0-9])")
_ORDERED = re.compile(r"^([0-9]+)([.)])(?=[ \t]|$)")
_NEWLINE = re.compile(r"\r\n|\r|\n")


def _line(text: str) -> str:
    """One line (already `printable`) made inert Markdown, placed at the start of a line or not."""
    head = tail = ""
    if text[:1] in _EDGE_SPACE:
        head, text = _EDGE_SPACE[text[0]], text[1:]
    if text[-1:] in _EDGE_SPACE:
        tail, text = _EDGE_SPACE[text[-1]], text[:-1]
    elif text.endswith("\\"):  # "\\" + a table's "|" would read as an escaped pipe
        tail, text = "&#92;", text[:-1]
    body = text.translate(_INLINE)
    if body.endswith("#"):  # would close an ATX heading (`# {md_inline(name)}`) and vanish
        body = body[:-1] + "\\#"
    if not head:
        if _BULLET.match(body):
            body = "\\" + body
        else:
            body = _ORDERED.sub(r"\1\\\2", body, count=1)
    return head + body + tail


def md_inline(text: Any) -> str:
    """`text` (str() of anything) as one line of inert Markdown for a paragraph, list item, heading
    or table cell; it renders as exactly `printable(text)`.

    - Control, ANSI, C1 and bidirectional characters become visible `\\xNN` / `\\uNNNN`
      (`printable`), so newlines cannot end the line: the result never holds a line break.
    - `\\` `` ` `` `*` `_` `[` `]` `|` `~` `$` are backslash-escaped everywhere, and `<` `>` `&` `"`
      become `&lt;` `&gt;` `&amp;` `&quot;`: no emphasis, code, link, image, table cell break,
      strikethrough, math, raw HTML or entity comes from `text`.
    - At the start, where a block could open: `#` `+` `-` `=` are backslash-escaped unless a digit
      follows (`-0.5` and `#3` stay readable), the `.` / `)` of `1.` / `2)` followed by a space or
      the end is escaped, and a leading (or trailing) space or tab becomes `&#32;` / `&#9;` (no
      indented code block, nothing trimmed away).
    - At the end: a `\\` becomes `&#92;` (next to a table's `|` it would escape it) and a `#` is
      backslash-escaped (in a heading it would be taken as the closing `#`s and dropped).
    """
    return _line(printable(text))


def md_block(text: Any) -> str:
    """Multi-line user text as inert Markdown paragraphs, keeping its line structure.

    Lines (split at \\n, \\r\\n or \\r) are escaped as by `md_inline`, each as if at the start of
    a line, so none can open a heading, list, blockquote, table, code fence, indented code or
    HTML block, and no inline HTML survives. Consecutive lines are joined with a hard line break
    (a `\\` at the end of the line, CommonMark); blank or whitespace-only lines separate
    paragraphs (several count as one; leading and trailing ones are dropped). The result ends
    without a newline; it is "" for blank text.
    """
    paragraphs: list[list[str]] = [[]]
    for line in _NEWLINE.split(str(text)):
        if line.strip(" \t"):
            paragraphs[-1].append(_line(printable(line)))
        elif paragraphs[-1]:
            paragraphs.append([])
    return "\n\n".join("\\\n".join(p) for p in paragraphs if p)
