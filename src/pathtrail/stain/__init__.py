"""Macenko stain normalization, batched (NumPy). Public API: `MacenkoNormalizer`.

`macenko` holds the normalizer, `ops` its batched torch kernels (CPU and CUDA), `fast` and
`kernels` the CPU fast path (fused numba loops, bitwise the results of `ops`), `inputs` its input
checks. Imports core only.
"""

from pathtrail.stain.macenko import MacenkoNormalizer

__all__ = ["MacenkoNormalizer"]
