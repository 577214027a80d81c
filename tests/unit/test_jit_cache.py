"""numba's cache of the Macenko kernels is keyed by the source's content, not its folder
(`pathtrail.stain.jit_cache`): a second clone loads the first one's compile."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from pathtrail.stain import jit_cache, kernels

MODULE = '''
import sys
jit_cache = sys.modules["jit_cache"]  # pathtrail/stain/jit_cache.py, loaded alone (no torch import)
jit_cache.serve(__file__)
import numba

@numba.njit(cache=True)
def plus(x):
    return x + {k}
'''

RUN = '''
import importlib.util, json, sys
spec = importlib.util.spec_from_file_location("jit_cache", sys.argv[2])
sys.modules["jit_cache"] = module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
sys.path.insert(0, sys.argv[1])
import mod
value = mod.plus(1)
print(json.dumps({"value": value, "hits": sum(mod.plus.stats.cache_hits.values()),
                  "path": mod.plus._cache._cache_path}))
'''


def _run(path: Path, cache: Path) -> dict:
    env = {**os.environ, "PATHTRAIL_NUMBA_CACHE": str(cache)}
    done = subprocess.run([sys.executable, "-c", RUN, str(path.parent), jit_cache.__file__], env=env, capture_output=True, text=True,
                          check=True, timeout=120)
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_a_copy_of_the_source_elsewhere_loads_the_first_compile(tmp_path):
    cache = tmp_path / "cache"
    first, second, changed = (tmp_path / d / "mod.py" for d in ("clone1", "clone2", "clone3"))
    for p in (first, second, changed):
        p.parent.mkdir()
    first.write_text(MODULE.format(k=1))
    shutil.copy(first, second)
    changed.write_text(MODULE.format(k=2))
    a = _run(first, cache)
    assert a == {"value": 2, "hits": 0, "path": a["path"]} and Path(a["path"]).parent == cache
    b = _run(second, cache)  # another folder, the same content: numba's own locators would compile again
    assert b["hits"] == 1 and b["path"] == a["path"] and b["value"] == 2
    c = _run(changed, cache)  # other content: another folder, compiled anew
    assert c["hits"] == 0 and c["path"] != a["path"] and c["value"] == 3
    assert not (first.parent / "__pycache__").exists() or not any((first.parent / "__pycache__").glob("*.nbi"))


def test_an_unwritable_root_falls_back_to_numbas_locators(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    mod = tmp_path / "src" / "mod.py"
    mod.parent.mkdir()
    mod.write_text(MODULE.format(k=1))
    out = _run(mod, blocker / "cache")
    assert out["value"] == 2 and Path(out["path"]) == mod.parent / "__pycache__"


def test_the_kernels_are_served_by_it():
    folder = Path(kernels.apply_tables._cache._cache_path)
    assert folder.parent == jit_cache.cache_root() and folder.name.startswith("kernels-")
