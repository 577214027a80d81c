"""Which params the train stage hashes into models/model.pt (`params_sha256`) and records."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pathtrail.config.label_section import without_default_labels

# The params sections the train stage hashes into models/model.pt (and records in the trail).
TRAINING_SECTIONS = ("data", "model", "train", "execution")
# train keys added after models were first hashed, at the value that trains as before they existed
NEUTRAL_TRAIN_KEYS = {"optimizer_impl": "auto"}


def training_sections(params: Mapping[str, Any]) -> dict[str, Any]:
    """The TRAINING_SECTIONS of `params` as models/model.pt hashes them (`params_sha256`).

    A disabled `train.stain_augment` is left out: its strengths change no result, so a model
    trained without it has the hash it had before the option existed (test_stain_augment.py); so
    are the NEUTRAL_TRAIN_KEYS at their neutral value (test_optimizer_impl.py)."""
    out = {k: params.get(k) for k in TRAINING_SECTIONS}
    out["data"] = without_default_labels(out.get("data"))
    train = out.get("train")
    if isinstance(train, Mapping):
        neutral = {k for k, v in NEUTRAL_TRAIN_KEYS.items() if train.get(k) == v}
        if isinstance(train.get("stain_augment"), Mapping) and train["stain_augment"].get("enabled") is False:
            neutral.add("stain_augment")
        out["train"] = {k: v for k, v in train.items() if k not in neutral}
    return out
