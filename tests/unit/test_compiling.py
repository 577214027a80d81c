"""The pipeline's torch.compile runs with inductor's graph-level caches off (`train.compiling`)."""

from __future__ import annotations

import ast
from pathlib import Path

import torch

from pathtrail.train.compiling import compile_module, graph_caches_off

SRC = Path(__file__).resolve().parents[2] / "src" / "pathtrail"


def test_compiling_turns_the_graph_caches_off():
    import torch._inductor.config as inductor_config

    before = inductor_config.fallback_random
    try:
        compiled = compile_module(torch.nn.Linear(2, 2), "default", fallback_random=True)
        assert graph_caches_off() and inductor_config.fallback_random is True
        assert callable(compiled)
    finally:
        inductor_config.fallback_random = before


def test_no_other_module_calls_torch_compile():
    """Every compile goes through compile_module, so none can load a cached graph."""
    callers = []
    for path in sorted(SRC.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "compile"
                    and isinstance(node.func.value, ast.Name) and node.func.value.id == "torch"):
                callers.append(path.relative_to(SRC).as_posix())
    assert callers == ["train/compiling.py"]
