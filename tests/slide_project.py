"""The slide project's dvc.yaml: the demo's, with the README's tile stage in place of demo_data."""

from __future__ import annotations

import re

from conftest import REPO


def readme_tile_fragment() -> str:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text[text.index("## Starting from whole slides"):text.index("## Reviewing a model")]
    return re.search(r"```yaml\n(.*?)```", section, re.DOTALL).group(1)


def slide_dvc_yaml(demo: str) -> str:
    """`demo` (a dvc.yaml text) with its demo_data stage replaced by the README's tile stage."""
    start = demo.index("  demo_data:\n")
    end = demo.index("\n  validate:\n", start)
    return demo[:start] + readme_tile_fragment().rstrip("\n") + "\n" + demo[end:]
