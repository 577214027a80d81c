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
import re
import threading
import warnings
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from PIL import Image

from pathtrail.core.system import usable_cpus
from pathtrail.data.access import Refusal, read_regular

TISSUE_MAX_MIN_CHANNEL = 215  # a pixel whose darkest channel is below this is tissue
TISSUE_MAX_MEAN = 220  # ... and so is a pixel whose channel mean is below this
RGB_CONVERTIBLE = frozenset({"1", "L", "LA", "La", "P", "PA", "RGBA", "RGBa", "RGBX", "CMYK",
                             "YCbCr",
                             "LAB", "HSV"})
_CHUNK = 64  # files per thread-pool task: keeps the per-task overhead small
DEFAULT_MAX_PIXELS = 1 << 20  # data.max_image_pixels: 1024x1024, 256 times a 64x64 patch
# Raster formats decoded in-process. Others are refused unopened: Pillow's EPS plugin, say, runs
# Ghostscript on the file, and validation executes nothing a user supplies.
IMAGE_FORMATS = ("PNG", "JPEG", "TIFF", "BMP", "GIF", "WEBP", "PPM")
# Each scan of a JPEG is a pass over the whole image: a 4 MB file repeating one tiny progressive
# scan 300,000 times decodes for minutes within every byte and pixel budget. Normal progressive
# JPEGs have about 10 scans (libjpeg's default script: 10 for colour), baseline ones 1.
MAX_JPEG_SCANS = 100


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
    hint: str = ""  # a fix matched to the failure (an errno, say), when the rule's own is too vague
    notes: tuple[str, ...] = ()  # warnings the imaging library issued while reading the file


def tissue_fraction(rgb: np.ndarray) -> float:
    """Share of tissue pixels (see the module docstring) in a uint8 (H, W, 3) array."""
    if rgb.size == 0:
        return 0.0
    darkest = rgb.min(axis=2)
    total = rgb.sum(axis=2, dtype=np.uint16)
    tissue = (darkest < TISSUE_MAX_MIN_CHANNEL) | (total < 3 * TISSUE_MAX_MEAN)
    return float(np.count_nonzero(tissue)) / tissue.size


def file_byte_limit(max_pixels: int) -> int:
    """Bytes read at most per file: an uncompressed RGBA image of `max_pixels`, plus 1 MiB."""
    return 4 * max_pixels + (1 << 20)


def inspect_file(root_real: str, rel: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> FileFacts:
    """Check `rel` (a relative, syntax-checked path) under the resolved folder `root_real`.

    Only a regular file is opened (`pathtrail.data.access`), at most `file_byte_limit(max_pixels)`
    bytes are read, and the header (size, mode, frames) is judged before any pixel is decoded, so
    one file costs at most a few times `max_pixels` bytes of memory. Warnings the imaging library
    issues meanwhile are kept in `FileFacts.notes` (test_validation_budgets).
    """
    if "\0" in rel:
        return FileFacts("file_unreadable", "the path contains a NUL character", hint="fix the path")
    real = os.path.realpath(os.path.join(root_real, rel))
    if not real.startswith(root_real.rstrip(os.sep) + os.sep):
        return FileFacts("path_outside_root",
                         "resolves, through a symbolic link, to a place outside it")
    with _warnings_kept() as notes:
        facts = _inspect_regular(real, max_pixels)
    return replace(facts, notes=tuple(notes)) if notes else facts


def _inspect_regular(real: str, max_pixels: int) -> FileFacts:
    data = read_regular(real, file_byte_limit(max_pixels))
    if isinstance(data, Refusal):
        problem = {"missing": "file_missing", "not_a_file": "not_a_file",
                   "unreadable": "file_unreadable", "too_large": "file_too_large"}[data.kind]
        own_hint = data.kind in ("unreadable", "not_a_file")  # else the rule's hint says more
        return FileFacts(problem, data.reason, hint=data.hint if own_hint else "")
    if not data:
        return FileFacts("file_empty")
    digest = hashlib.sha256(data).hexdigest()
    try:
        with Image.open(io.BytesIO(data), formats=IMAGE_FORMATS) as img:  # lazy: the header only
            mode, (width, height) = img.mode, img.size
            if width * height > max_pixels:
                return FileFacts("image_too_large", f"{width}x{height} = {width * height} pixels, "
                                 f"over the budget of {max_pixels}", digest, mode, width, height)
            if getattr(img, "is_animated", False):  # seeks to frame 2 at most, unlike n_frames
                return FileFacts("image_frames", "more than one frame", digest, mode, width, height)
            if img.format == "JPEG" and jpeg_scans(data, MAX_JPEG_SCANS + 1) > MAX_JPEG_SCANS:
                return FileFacts("image_scans", f"more than {MAX_JPEG_SCANS} scans", digest, mode,
                                 width, height)
            if img.format == "PNG" and data[24:25] == b"\x10" and mode in ("RGB", "RGBA"):
                mode += ";16"  # Pillow would silently drop the low byte of 16-bit colour
            img.load()  # forces a full decode: a truncated file fails here, not in training
            rgb = _as_rgb(img)
    except Image.DecompressionBombError:  # over twice Pillow's own limit, seen in the header
        width, height = _header_size(data) or (0, 0)
        size = f"{width}x{height} = {width * height} pixels" if width else "larger than"
        return FileFacts("image_too_large", f"{size}, over the budget of {max_pixels}", digest)
    except Exception as exc:  # noqa: BLE001  PIL raises many types (OSError, SyntaxError, ...)
        return FileFacts("image_decode", _decode_reason(exc), sha256=digest)
    return FileFacts(None, "", digest, mode, width, height,
                     tissue_fraction(rgb) if rgb is not None else None)


def _header_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from the header alone: the format plugins, without `Image.open`'s bomb check."""
    for fmt in IMAGE_FORMATS:
        factory, accept = Image.OPEN[fmt]
        if accept is None or accept(data[:16]):
            try:
                with factory(io.BytesIO(data)) as img:
                    return img.size
            except Exception:  # noqa: BLE001, S112  not this format: try the next
                continue
    return None


# After a scan's header, its entropy-coded data run to the next marker. There every 0xFF byte is
# followed by a stuffed 0x00 (T.81 B.1.1.5) and the only markers allowed are RST0-7 (FFD0-D7), so
# the first FF followed by anything else (after optional FF fill bytes) is the next real marker.
_NEXT_MARKER = re.compile(rb"\xff+[^\x00\xff\xd0-\xd7]")
_ANY_MARKER = re.compile(rb"\xff+[^\x00\xff]")


def jpeg_scans(data: bytes, stop: int | None = None) -> int:
    """How many scans (SOS segments) a JPEG holds, read from its marker structure (segments are
    skipped by their length, so an FF DA inside a comment or thumbnail is not counted); counting
    ends at `stop`, at EOI or at the end of the data; junk between segments is skipped as libjpeg
    skips it (to the next FF that starts a marker), so it cannot hide scans from the count."""
    scans, pos, n = 0, 2, len(data)
    while pos + 4 <= n:
        if data[pos] != 0xFF:  # junk between segments: libjpeg skips to the next marker, so do we
            junk = _ANY_MARKER.search(data, pos)
            if junk is None:
                break
            pos = junk.end() - 2
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
        elif marker == 0xD9:  # EOI
            break
        elif 0xD0 <= marker <= 0xD7 or marker == 0x01:  # no length
            pos += 2
        else:
            end = pos + 2 + int.from_bytes(data[pos + 2:pos + 4], "big")
            if marker != 0xDA:
                pos = end
                continue
            scans += 1
            found = _NEXT_MARKER.search(data, end)
            if (stop is not None and scans >= stop) or found is None:
                break
            pos = found.end() - 2
    return scans


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
        return f"not an image in an accepted format ({', '.join(IMAGE_FORMATS)})"
    return text


# Warnings are routed per thread: `warnings.catch_warnings` swaps process-wide state and is not
# thread-safe, so `_warnings_routed` enters it once, in the calling thread, around the whole pool;
# while it is active every warning goes to `_route`, which appends it to the list of the file the
# issuing thread is reading (a thread-local), never to stderr.
_local = threading.local()
_routing = threading.Lock()
_routed_depth = 0


def _route(message: Any, category: type[Warning], filename: str, lineno: int, file: Any = None,
           line: str | None = None) -> None:
    sink = getattr(_local, "sink", None)
    if sink is None:  # not issued while a file was read: not ours to keep
        _original_showwarning(message, category, filename, lineno, file, line)
    else:
        sink.append(f"{category.__name__}: {message}")


_original_showwarning = warnings.showwarning


@contextmanager
def _warnings_routed() -> Iterator[None]:
    """While active, every warning of any thread is routed by `_route`; re-entrant."""
    global _routed_depth
    with _routing:
        outer = _routed_depth == 0
        _routed_depth += 1
    if not outer:
        try:
            yield
        finally:
            with _routing:
                _routed_depth -= 1
        return
    with warnings.catch_warnings():
        warnings.simplefilter("always")  # once per file, not once per process
        warnings.showwarning = _route
        try:
            yield
        finally:
            with _routing:
                _routed_depth -= 1


@contextmanager
def _warnings_kept() -> Iterator[list[str]]:
    """The warnings this thread issues during the block, as text (`inspect_files` routes them; a
    direct call from one thread routes them itself)."""
    notes: list[str] = []
    previous = getattr(_local, "sink", None)
    _local.sink = notes
    try:
        if _routed_depth:
            yield notes
        else:
            with _warnings_routed():
                yield notes
    finally:
        _local.sink = previous


def inspect_files(root_real: str, rels: Sequence[str], workers: int,
                  max_pixels: int = DEFAULT_MAX_PIXELS) -> list[FileFacts]:
    """`inspect_file` for every path, in order, on `workers` threads (1: in this thread)."""
    chunks = [rels[i:i + _CHUNK] for i in range(0, len(rels), _CHUNK)]

    def run(chunk: Sequence[str]) -> list[FileFacts]:
        return [inspect_file(root_real, rel, max_pixels) for rel in chunk]

    with _warnings_routed():
        if workers <= 1 or len(chunks) <= 1:
            return [facts for chunk in chunks for facts in run(chunk)]
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="inspect") as pool:
            return [facts for result in pool.map(run, chunks) for facts in result]


def default_workers() -> int:
    return max(1, min(8, 2 * usable_cpus()))


_FILE_RULES = {  # FileFacts.problem -> (message, hint)
    "file_missing": ("the file does not exist under the data root '{root}'",
                     "check the path (relative to the data root, case-sensitive) or add the file"),
    "not_a_file": ("the path {detail}", "point the path at an image file"),
    "file_unreadable": ("the file cannot be read ({detail})", "fix its permissions"),
    "file_too_large": ("the file {detail} (4 x data.max_image_pixels + 1 MiB); it was not read",
                       ("check that this is a patch, not a slide; re-export it, or raise "
                       "data.max_image_pixels / --max-image-pixels")),
    "image_too_large": ("the image is {detail}; it was not decoded",
                        ("export patches, not whole slides or tiles; or raise data.max_image_pixels "
                        "/ --max-image-pixels")),
    "image_frames": ("the image holds {detail} (an animated or multi-page file); it was not decoded",
                     "save each patch as a single-frame PNG or JPEG"),
    "image_scans": (("the JPEG holds {detail} (a normal progressive JPEG has about 10; each costs "
                     "a full decoding pass); it was not decoded"),
                    "re-export the patch (as PNG, or as a baseline JPEG)"),
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
    notes = [("warning", "image_library_warning", f"the imaging library warned: {note}",
              "check that the file opens cleanly in an image viewer; re-export it if not")
             for note in f.notes]
    if f.problem:
        message, hint = _FILE_RULES[f.problem]
        return [("error", f.problem, message.format(root=root, detail=f.detail), f.hint or hint),
                *notes]
    out: list[tuple[str, str, str, str]] = notes

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
