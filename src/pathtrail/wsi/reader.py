"""Opening a whole-slide image: OpenSlide first, tiffslide (pure Python) for tiled TIFFs it refuses.

`open_slide(path, backend, assume_mpp)` checks the path from its `stat` before any library sees it
(a FIFO would block OpenSlide forever, a folder or device is no slide), then opens it and reads its
resolution. A slide without MPP metadata is an error naming `tile.assume_mpp`, unless that is set;
`Slide.mpp_source` then says "assumed". Errors are `SlideError`s: what, which file, how to fix.
Regions are read inside the image only (the grid never leaves it), where both libraries return
the same pixels (tests/unit/test_wsi.py).
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from typing import Any, Self

import numpy as np

from pathtrail.core.errors import PathTrailError
from pathtrail.core.files import file_kind

TIFF_MAGIC = (b"II*\0", b"MM\0*", b"II+\0", b"MM\0+")  # classic and BigTIFF, both byte orders
BACKENDS = ("openslide", "tiffslide")


class SlideError(PathTrailError):
    """A slide that cannot be tiled; the message names the file, the reason and the fix."""


@dataclass
class Slide:
    """An open slide: level geometry, resolution and `read(...)` of RGB regions."""

    path: str
    backend: str
    handle: Any
    dimensions: list[tuple[int, int]]   # (width, height) per level, level 0 first
    downsamples: list[float]            # level-0 pixels per level pixel
    mpp: float                          # micrometres per level-0 pixel
    mpp_source: str                     # "metadata" or "assumed" (tile.assume_mpp)

    def read(self, x: int, y: int, level: int, width: int, height: int) -> np.ndarray:
        """RGB uint8 (height, width, 3) at `level`, top-left corner (x, y) in level-0 pixels."""
        region = self.handle.read_region((int(x), int(y)), int(level), (int(width), int(height)))
        rgb = np.asarray(region.convert("RGB") if region.mode != "RGB" else region)
        return np.ascontiguousarray(rgb, dtype=np.uint8)

    def close(self) -> None:
        self.handle.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def check_file(path: str) -> None:
    """Refuse, from `stat` and the first bytes, what is not a readable regular file."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise SlideError(f"slide '{path}': does not exist; fix: check its path in the slide table "
                         "(relative to tile.slide_root)") from None
    except (OSError, ValueError) as exc:
        raise SlideError(f"slide '{path}': cannot be read ({exc}); fix: check the path and its "
                         "permissions") from None
    if not stat.S_ISREG(st.st_mode):
        raise SlideError(f"slide '{path}': is {file_kind(st.st_mode)}, not a file; fix: point the "
                         "slide table at a slide file (pipes, devices and sockets are never read)")
    if st.st_size == 0:
        raise SlideError(f"slide '{path}': is empty; fix: copy the slide again")


def _is_tiff(path: str) -> bool:
    with open(path, "rb") as f:
        return f.read(4) in TIFF_MAGIC


def _open_openslide(path: str) -> Any | None:
    import openslide

    if openslide.OpenSlide.detect_format(path) is None:
        return None
    return openslide.OpenSlide(path)


def _open_tiffslide(path: str) -> Any | None:
    import tiffslide

    if not _is_tiff(path):
        return None
    return tiffslide.TiffSlide(path)


def _mpp(properties: Any) -> float | None:
    values = []
    for key in ("openslide.mpp-x", "openslide.mpp-y", "tiffslide.mpp-x", "tiffslide.mpp-y"):
        value = properties.get(key)
        if value not in (None, ""):
            try:
                values.append(float(value))
            except (TypeError, ValueError):
                continue
    good = [v for v in values if np.isfinite(v) and v > 0]
    return good[0] if good else None


def open_slide(path: str, backend: str = "auto", assume_mpp: float | None = None) -> Slide:
    """Open `path` with `backend` ("auto": OpenSlide, then tiffslide); resolution checked."""
    check_file(path)
    order = BACKENDS if backend == "auto" else (backend,)
    handle, used, failures = None, "", []
    for name in order:
        try:
            handle = (_open_openslide if name == "openslide" else _open_tiffslide)(path)
            if handle is None:
                failures.append(f"{name}: not a format it reads")
                continue
            dims = [tuple(int(v) for v in d) for d in handle.level_dimensions]
            downs = [float(d) for d in handle.level_downsamples]
            if not dims or min(min(d) for d in dims) < 1:
                raise ValueError("no image levels")
            mpp, source = _mpp(handle.properties), "metadata"
        except Exception as exc:  # noqa: BLE001 - each library raises its own types
            failures.append(f"{name}: {str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__}")
            if handle is not None:
                handle.close()
            handle = None
            continue
        used = name
        break
    if handle is None:
        raise SlideError(f"slide '{path}': not a whole-slide image that {' or '.join(order)} can read "
                         f"({'; '.join(failures)}); fix: export it as a pyramidal tiled TIFF (or a "
                         "format OpenSlide reads: SVS, NDPI, MRXS, SCN, ...)")
    if mpp is None:
        if assume_mpp is None:
            handle.close()
            raise SlideError(f"slide '{path}': its metadata give no resolution (microns per pixel), so "
                             "patches at tile.mpp cannot be cut; fix: re-export it with its resolution, "
                             "or set tile.assume_mpp to the scanner's (e.g. 0.25 for 40x, 0.5 for 20x; "
                             "recorded in the manifest's mpp_source and the card)")
        mpp, source = float(assume_mpp), "assumed"
    return Slide(path, used, handle, dims, downs, mpp, source)
