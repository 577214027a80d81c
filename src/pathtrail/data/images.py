"""Per-file checks of the patches a manifest lists: where the file is, if it decodes, what it is.

`inspect_file` reads a file once and returns plain facts (sha256, mode, size, tissue fraction) or
the reason it cannot be used; `judge_file` applies the policies (what is an error, what a
warning). `inspect_files` runs on a thread pool: reading, hashing, PNG/JPEG decoding and the NumPy
work release the GIL, so threads scale on a few cores without pickling costs.

Tissue is defined per pixel on the RGB image: a pixel is tissue when its darkest channel is below
215 or its mean over the three channels is below 220, i.e. when it is not near-white glass or
background (stained tissue absorbs strongly in at least one channel, so its darkest channel drops
well below the ~240 of bright-field background). The tissue fraction is the share of such pixels.
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from pathtrail.core.system import usable_cpus

TISSUE_MAX_MIN_CHANNEL = 215  # a pixel whose darkest channel is below this is tissue
TISSUE_MAX_MEAN = 220  # ... and so is a pixel whose channel mean is below this
RGB_CONVERTIBLE = frozenset({"1", "L", "LA", "La", "P", "PA", "RGBA", "RGBa", "RGBX", "CMYK",
                             "YCbCr",
                             "LAB", "HSV"})
_CHUNK = 64  # files per thread-pool task: keeps the per-task overhead small


@dataclass(frozen=True)
class FileFacts:
    """What one file is, or why it cannot be used (`problem` is a rule id, `detail` says more)."""

    problem: str | None = None
    detail: str = ""
    sha256: str | None = None
    mode: str | None = None
    width: int | None = None
    height: int | None = None
    tissue_fraction: float | None = None


def tissue_fraction(rgb: np.ndarray) -> float:
    """Share of tissue pixels (see the module docstring) in a uint8 (H, W, 3) array."""
    if rgb.size == 0:
        return 0.0
    darkest = rgb.min(axis=2)
    total = rgb.sum(axis=2, dtype=np.uint16)
    tissue = (darkest < TISSUE_MAX_MIN_CHANNEL) | (total < 3 * TISSUE_MAX_MEAN)
    return float(np.count_nonzero(tissue)) / tissue.size


def inspect_file(root_real: str, rel: str) -> FileFacts:
    """Check `rel` (a relative, syntax-checked path) under the resolved folder `root_real`."""
    if "\0" in rel:
        return FileFacts("file_unreadable", "the path contains a NUL character")
    real = os.path.realpath(os.path.join(root_real, rel))
    if not real.startswith(root_real.rstrip(os.sep) + os.sep):
        return FileFacts("path_outside_root",
                         "resolves, through a symbolic link, to a place outside it")
    try:
        with open(real, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return FileFacts("file_missing")
    except IsADirectoryError:
        return FileFacts("not_a_file", "is a folder")
    except OSError as exc:
        return FileFacts("file_unreadable", exc.strerror or type(exc).__name__)
    if not data:
        return FileFacts("file_empty")
    digest = hashlib.sha256(data).hexdigest()
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()  # forces a full decode: a truncated file fails here, not in training
            mode, (width, height) = img.mode, img.size
            rgb = _as_rgb(img)
    except Exception as exc:  # noqa: BLE001  PIL raises many types (OSError, SyntaxError, ...)
        return FileFacts("image_decode", _decode_reason(exc), sha256=digest)
    return FileFacts(None, "", digest, mode, width, height,
                     tissue_fraction(rgb) if rgb is not None else None)


def _as_rgb(img: Image.Image) -> np.ndarray | None:
    """The RGB pixels the pipeline's readers would see, or None for modes they cannot convert."""
    if img.mode == "RGB":
        return np.asarray(img)
    if img.mode not in RGB_CONVERTIBLE:
        return None
    return np.asarray(img.convert("RGB"))


def _decode_reason(exc: Exception) -> str:
    text = str(exc).strip() or type(exc).__name__
    if "cannot identify image file" in text:
        return "not an image (its content is no image format Pillow can read)"
    return text


def inspect_files(root_real: str, rels: Sequence[str], workers: int) -> list[FileFacts]:
    """`inspect_file` for every path, in order, on `workers` threads (1: in this thread)."""
    chunks = [rels[i:i + _CHUNK] for i in range(0, len(rels), _CHUNK)]

    def run(chunk: Sequence[str]) -> list[FileFacts]:
        return [inspect_file(root_real, rel) for rel in chunk]

    if workers <= 1 or len(chunks) <= 1:
        return [facts for chunk in chunks for facts in run(chunk)]
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="inspect") as pool:
        return [facts for result in pool.map(run, chunks) for facts in result]


def default_workers() -> int:
    return max(1, min(8, 2 * usable_cpus()))


_FILE_RULES = {  # FileFacts.problem -> (message, hint)
    "file_missing": ("the file does not exist under the data root '{root}'",
                     "check the path (relative to the data root, case-sensitive) or add the file"),
    "not_a_file": ("the path {detail}, not a file", "point the path at an image file"),
    "file_unreadable": ("the file cannot be read ({detail})", "fix its permissions"),
    "path_outside_root": ("the path {detail} (data root '{root}')",
                          "copy the file into the data root instead of linking to it"),
    "file_empty": ("the file is empty (0 bytes)",
                   "re-export or re-copy the patch (an empty file is usually an interrupted copy)"),
    "image_decode": ("the file cannot be decoded as an image: {detail}",
                     "re-export the patch (it is truncated, corrupt, or no image at all)"),
}


def judge_file(f: FileFacts, rules: Any, root: str) -> list[tuple[str, str, str, str]]:
    """(severity, rule, message, hint) for one file under the policies of `rules`.

    `rules` is a `pathtrail.data.validation.Rules`: patch_size (None: not checked here), mode_policy
    (convert: non-RGB is a warning, the readers convert; reject: an error), size_policy (resize:
    other sizes are warnings; reject: errors), min_tissue_fraction and tissue_policy (warn|reject).
    """
    if f.problem:
        message, hint = _FILE_RULES[f.problem]
        return [("error", f.problem, message.format(root=root, detail=f.detail), hint)]
    out: list[tuple[str, str, str, str]] = []

    def add(severity: str, rule: str, message: str, hint: str) -> None:
        out.append((severity, rule, message, hint))

    if f.mode != "RGB" and f.mode not in RGB_CONVERTIBLE:
        add("error", "image_mode_unsupported", f"image mode {f.mode} cannot be converted to 8-bit "
            "RGB", "save the patch as 8-bit RGB (PNG or JPEG)")
    elif f.mode != "RGB" and rules.mode_policy == "convert":
        add("warning", "image_mode", f"image mode is {f.mode}, not RGB; the readers convert it to "
            "RGB", "save RGB patches to silence this (data.mode_policy=convert)")
    elif f.mode != "RGB":
        add("error", "image_mode", f"image mode is {f.mode}, not RGB (data.mode_policy=reject)",
            "save the patch as 8-bit RGB, or set data.mode_policy / --mode-policy to convert")
    size = rules.patch_size
    if size is not None and (f.width, f.height) != (size, size):
        got = f"the image is {f.width}x{f.height}, expected {size}x{size}"
        if rules.size_policy == "resize":
            add("warning", "image_size", f"{got}; the readers resize it",
                "export patches at the expected size to silence this (data.size_policy=resize)")
        else:
            add("error", "image_size", f"{got} (data.size_policy=reject)", f"export patches at "
                f"{size}x{size}, or set data.size_policy / --size-policy to resize")
    tissue, low = f.tissue_fraction, rules.min_tissue_fraction
    if tissue is not None and tissue < low:
        text = f"tissue fraction {tissue:.3f} is below min_tissue_fraction {low}"
        if rules.tissue_policy == "reject":
            add("error", "low_tissue", f"{text} (data.tissue_policy=reject)", "drop the patch, "
                "lower data.min_tissue_fraction, or set data.tissue_policy to warn")
        else:
            add("warning", "low_tissue", f"{text}; the patch is mostly background",
                "check the patch and drop it if it shows no tissue")
    return out
