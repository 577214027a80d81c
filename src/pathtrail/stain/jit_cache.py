"""Where numba caches the compiled Macenko kernels: one folder per user, keyed by the content of
the kernels' source, so every clone of the repository on a machine shares one compile.

numba's own locators key the cache by the source's folder (`__pycache__` beside it, or under
NUMBA_CACHE_DIR by the folder's path): a fresh clone compiled the kernels again (14-20 s on the
2-core machine, more than the demo's whole stain work). Here the folder is
`<root>/kernels-<sha256 of kernels.py, 20 hex>`, with `<root>` = $PATHTRAIL_NUMBA_CACHE, else
$XDG_CACHE_HOME/pathtrail/numba, else ~/.cache/pathtrail/numba. Inside it numba's index still
keys each entry by the signature, the numba version and the CPU (name and features), and its
source stamp is the file's content hash, so a cached kernel is the one this source compiles to on
this CPU. A root that cannot be written falls back to numba's locators (`__pycache__`).
Nothing cached here changes a result: the kernels are the same source either way
(test_jit_cache.py: a second copy of the source at another path loads the first one's compile).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import ClassVar

from numba.core import caching


def cache_root() -> Path:
    """The folder under which the kernels' compiled code is cached (see the module docstring)."""
    if os.environ.get("PATHTRAIL_NUMBA_CACHE"):
        return Path(os.environ["PATHTRAIL_NUMBA_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "pathtrail" / "numba"


class ContentKeyedLocator(caching._SourceFileBackedLocatorMixin, caching._CacheLocator):
    """A numba cache locator for the files in `SERVED` only: the folder is keyed by content."""

    SERVED: ClassVar[set[str]] = set()

    def __init__(self, py_func, py_file: str) -> None:
        self._py_file = py_file
        self._lineno = py_func.__code__.co_firstlineno
        digest = hashlib.sha256(Path(py_file).read_bytes()).hexdigest()[:20]
        self._cache_path = str(cache_root() / f"{Path(py_file).stem}-{digest}")

    def get_cache_path(self) -> str:
        return self._cache_path

    @classmethod
    def from_function(cls, py_func, py_file: str):
        if os.path.realpath(py_file) not in cls.SERVED:
            return None
        return super().from_function(py_func, py_file)  # None when the folder cannot be written


def serve(py_file: str) -> None:
    """Cache the numba functions of `py_file` (a module's __file__) with `ContentKeyedLocator`;
    call it before the module's first `@numba.njit(cache=True)`."""
    ContentKeyedLocator.SERVED.add(os.path.realpath(py_file))
    classes = caching.CacheImpl._locator_classes
    if ContentKeyedLocator not in classes:
        classes.insert(0, ContentKeyedLocator)
