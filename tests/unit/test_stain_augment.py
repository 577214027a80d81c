"""train.stain_augment: HED jitter against a NumPy oracle of skimage's rgb2hed / hed2rgb, keyed draws,
strict params, and a disabled option that leaves the demo's training hash as it was."""

from __future__ import annotations

import numpy as np
import pytest
from test_training import make_tiny_store

from conftest import tiny_params, write_params
from pathtrail.config.loading import ParamsError, load_section
from pathtrail.config.sections import TRAINING_SECTIONS, TrainParams, training_sections
from pathtrail.config.subsections import StainAugmentParams
from pathtrail.core.hashing import digest
from pathtrail.data.loaders import PatchDataset
from pathtrail.data.stain_augment import draw_jitter, hed_jitter, random_hed_jitter

# skimage.color.colorconv (0.2x): rgb_from_hed and the log_adjust of separate_stains / combine_stains
RGB_FROM_HED = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]])


def rgb2hed(img: np.ndarray) -> np.ndarray:
    """skimage's rgb2hed without its final clip at 0."""
    rgb = np.maximum(img / 255.0, 1e-6)
    return (np.log(rgb) / np.log(1e-6)) @ np.linalg.inv(RGB_FROM_HED)


def hed2rgb(hed: np.ndarray) -> np.ndarray:
    return np.clip(np.exp(-(hed * -np.log(1e-6)) @ RGB_FROM_HED), 0, 1) * 255.0


def _patch(seed: int = 0, size: int = 32) -> np.ndarray:
    """An H&E-like patch: pink background, purple blobs, a few white and black pixels."""
    rng = np.random.default_rng(seed)
    img = rng.integers(190, 235, (size, size, 3)).astype(np.uint8)
    img[..., 1] -= 40
    img[4:14, 4:14] = rng.integers(60, 120, (10, 10, 3))
    img[0, :4] = 255
    img[1, :4] = 0
    return img


def test_identity_jitter_returns_the_patch():
    img = _patch()
    assert np.array_equal(hed_jitter(img, [1, 1, 1], [0, 0, 0]), img)


@pytest.mark.parametrize("scale, shift", [([1.2, 0.9, 1.0], [0.0, 0.0, 0.0]), ([0.95, 1.05, 1.02], [0.01, -0.01, 0.005])])
def test_jitter_matches_the_skimage_oracle(scale, shift):
    img = _patch(1)
    expected = hed2rgb(rgb2hed(img) * np.array(scale) + np.array(shift))
    got = hed_jitter(img, scale, shift).astype(np.float64)
    assert np.abs(got - expected).max() <= 0.5 + 1e-6  # rounding to the nearest level only


def test_a_larger_hematoxylin_scale_adds_hematoxylin_only():
    img = _patch(2)
    before, after = rgb2hed(img), rgb2hed(hed_jitter(img, [1.3, 1.0, 1.0], [0, 0, 0]))
    tissue = before[..., 0] > 0.02
    assert (after[..., 0][tissue] > before[..., 0][tissue]).mean() > 0.9
    assert np.abs(after[..., 1] - before[..., 1]).mean() < 0.1 * np.abs(after[..., 0] - before[..., 0]).mean()


def test_draws_are_keyed_on_the_sample_and_within_the_strengths():
    a = draw_jitter(0.05, 0.01, seed=1, epoch=2, index=3)
    assert all(np.array_equal(x, y) for x, y in zip(a, draw_jitter(0.05, 0.01, 1, 2, 3), strict=True))
    for other in [(2, 2, 3), (1, 3, 3), (1, 2, 4)]:
        assert not np.array_equal(a[0], draw_jitter(0.05, 0.01, *other)[0])
    scales, shifts = zip(*(draw_jitter(0.05, 0.01, 0, 0, i) for i in range(200)), strict=True)
    assert np.all(np.abs(np.array(scales) - 1) <= 0.05) and np.all(np.abs(np.array(shifts)) <= 0.01)
    assert np.abs(np.array(scales) - 1).max() > 0.04  # the full range is used
    img = _patch()
    assert np.array_equal(random_hed_jitter(img, 0, 0, 1, 2, 3), img)  # zero strength: unchanged


def test_dataset_applies_it_only_when_enabled(tmp_path):
    store, train, _ = make_tiny_store(tmp_path)
    on = StainAugmentParams(True, 0.2, 0.05)
    plain = PatchDataset(store, train.rows, train.labels, augment=True, seed=3)
    off = PatchDataset(store, train.rows, train.labels, True, 3, StainAugmentParams(False, 0.2, 0.05))
    jitter = PatchDataset(store, train.rows, train.labels, True, 3, on)
    again = PatchDataset(store, train.rows, train.labels, True, 3, on)
    for key in [(0, 0), (1, 0), (0, 5)]:
        assert np.array_equal(plain[key][0].numpy(), off[key][0].numpy())
        assert not np.array_equal(plain[key][0].numpy(), jitter[key][0].numpy())
        assert np.array_equal(jitter[key][0].numpy(), again[key][0].numpy())
    assert not np.array_equal(jitter[(0, 0)][0].numpy(), jitter[(1, 0)][0].numpy())  # another epoch, another draw


def test_params_are_explicit_strict_and_off_by_default(tmp_path, repo_params):
    assert repo_params["train"]["stain_augment"] == {"enabled": False, "sigma_scale": 0.05, "sigma_shift": 0.01}
    path = write_params(tmp_path, tiny_params(tmp_path, **{"train.stain_augment.enabled": True}))
    assert load_section(path, "train", TrainParams).stain_augment == StainAugmentParams(True, 0.05, 0.01)
    for key, value, match in [("sigma_scale", 1.5, r"sigma_scale' must be in \[0, 1\)"),
                              ("sigma_shift", 0.5, r"sigma_shift' must be in \[0, 0\.1\]"),
                              ("strength", 1, r"unknown params key\(s\) 'train\.stain_augment\.strength'")]:
        path = write_params(tmp_path, tiny_params(tmp_path, **{f"train.stain_augment.{key}": value}))
        with pytest.raises(ParamsError, match=match):
            load_section(path, "train", TrainParams)


def test_disabled_it_leaves_the_training_params_hash_as_before(repo_params):
    """models/model.pt's params_sha256 of a run without stain augmentation is the hash it had before
    the option existed, so the demo's model file stays bitwise what it was."""
    before = {k: repo_params.get(k) for k in TRAINING_SECTIONS}
    before["train"] = {k: v for k, v in before["train"].items() if k not in ("stain_augment", "optimizer_impl")}
    before["data"] = {k: v for k, v in before["data"].items() if k not in ("label_mode", "label_columns")}
    assert digest(training_sections(repo_params)) == digest(before)
    on = {**repo_params, "train": {**repo_params["train"],
                                   "stain_augment": {"enabled": True, "sigma_scale": 0.05, "sigma_shift": 0.01}}}
    assert digest(training_sections(on)) != digest(before)
    assert training_sections(on)["train"]["stain_augment"]["enabled"] is True
