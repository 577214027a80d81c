"""Text from files shown on a terminal: control characters made visible."""

from __future__ import annotations

_CONTROL = {c: f"\\x{c:02x}" for c in [*range(0x20), *range(0x7F, 0xA0)] if c != 0x09}
# bidirectional overrides and isolates, zero-width marks, line and paragraph separators
_CONTROL |= {c: f"\\u{c:04x}" for c in [0x200E, 0x200F, 0x2028, 0x2029, *range(0x202A, 0x202F),
                                          *range(0x2066, 0x206A), 0xFEFF]}


def printable(text: str) -> str:
    """Control characters (newlines, ANSI escapes, C1 codes) shown as \\xNN, and bidirectional or
    line-separator code points as \\uNNNN: a hostile file name or error text cannot forge report
    lines, reorder them visually or recolour the terminal."""
    return str(text).translate(_CONTROL)
