"""Text from files shown on a terminal: control characters made visible."""

from __future__ import annotations

_CONTROL = {c: f"\\x{c:02x}" for c in [*range(0x20), *range(0x7F, 0xA0)] if c != 0x09}


def printable(text: str) -> str:
    """Control characters (newlines, ANSI escapes, C1 codes) shown as \\xNN: a hostile file name or
    error text cannot forge report lines or recolour the terminal."""
    return str(text).translate(_CONTROL)
