"""The lowest layer: errors, atomic files, canonical JSON and sha256, logging, figures, machine facts.

Imports nothing else from pathtrail. Modules: `errors` (PathTrailError), `files` (atomic writes,
readers), `hashing` (canonical_json, digest, sha256_*), `logs` (structlog setup), `figures`
(deterministic PNGs), `system` (usable_cpus).
"""
