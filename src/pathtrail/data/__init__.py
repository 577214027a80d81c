"""Data in: manifests and their validation, the demo cohorts, the patient split, the patch store, loaders.

Modules: `schemas`, `manifests`, `images`, `validation` (validate_cohorts), `report` (readable
validation reports), `demo`, `splits` (split_by_patient), `store` (PatchStore, StoreWriter),
`loaders` (keyed sampler, PatchDataset, make_loader). Imports core and config only.
"""
