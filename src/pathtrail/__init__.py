"""PathTrail: audit-grade, reproducible training for histopathology image classification."""

__version__ = "0.1.0"
