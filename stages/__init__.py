"""One thin entry per DVC stage, run as `python -m stages.<name>` from the repository root.

Two things happen here, before any stage module (and so numpy or torch) is imported:
- this checkout's `src/` goes first on `sys.path`, so a stage runs the library of the tree it lives
  in (a queued or temporary DVC experiment runs its own snapshot, not the editable install's);
- the reproducible execution contract (params section `execution`, see
  `pathtrail.core.execution`) is set in the environment, which numpy, MKL, oneDNN and torch read
  once when they load.
"""

import sys
from pathlib import Path

_SRC = str(Path(__file__).resolve().parents[1] / "src")
if _SRC in sys.path:
    sys.path.remove(_SRC)
sys.path.insert(0, _SRC)

if sys.argv and sys.argv[0] == "-m":  # `python -m stages.<name>` (not an import by a test)
    from pathtrail.core.execution import apply_before_libraries

    apply_before_libraries(sys.argv[1:])
