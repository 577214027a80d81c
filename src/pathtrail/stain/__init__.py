"""Macenko stain normalization, batched (NumPy). Public API: `MacenkoNormalizer`.

`macenko` holds the normalizer, `ops` its vectorised kernels. Imports core only.
"""

from pathtrail.stain.macenko import MacenkoNormalizer

__all__ = ["MacenkoNormalizer"]
