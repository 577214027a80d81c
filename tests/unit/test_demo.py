"""The synthetic H&E demo generator: determinism, IDs, and colour carrying no label."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from PIL import Image
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import GroupKFold, cross_val_predict

from pathtrail.config.sections import DemoParams
from pathtrail.data.demo import MANIFEST_COLUMNS, generate_cohorts, write_cohorts

TINY = DemoParams(
    seed=11,
    patch_size=32,
    internal_sites=["site_a", "site_b"],
    external_site="site_c",
    patients_per_site=4,
    external_patients=3,
    patches_per_patient=3,
    max_slides_per_patient=3,
)
# big enough for the statistical checks, still about a second to generate
STATS = dataclasses.replace(
    TINY,
    seed=20261121,
    patch_size=64,
    patients_per_site=24,
    external_patients=16,
    patches_per_patient=8,
)


@pytest.fixture(scope="module")
def tiny() -> dict:
    return generate_cohorts(TINY)


@pytest.fixture(scope="module")
def stats() -> dict:
    return generate_cohorts(STATS)


def _arrays(patches: list) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    images = np.stack([p.image for p in patches]).astype(np.float64)
    labels = np.array([p.label for p in patches])
    sites = np.array([p.site for p in patches])
    patients = np.array([p.patient_id for p in patches])
    return images, labels, sites, patients


def _mean_od(images: np.ndarray) -> np.ndarray:
    return -np.log((images + 1) / 256).reshape(len(images), -1, 3).mean(axis=1)


def test_generation_is_deterministic(tiny: dict) -> None:
    again = generate_cohorts(TINY)
    for cohort in ("internal", "external"):
        assert [p.relpath for p in again[cohort]] == [p.relpath for p in tiny[cohort]]
        for a, b in zip(again[cohort], tiny[cohort], strict=True):
            assert (a.label, a.patient_id, a.slide_id, a.site) == (
                b.label,
                b.patient_id,
                b.slide_id,
                b.site,
            )
            np.testing.assert_array_equal(a.image, b.image)


def test_written_files_are_byte_identical(tiny: dict, tmp_path) -> None:
    first = write_cohorts(tiny, tmp_path / "one")
    second = write_cohorts(generate_cohorts(TINY), tmp_path / "two")
    for cohort, patches in tiny.items():
        assert first[cohort].equals(second[cohort])
        for patch in patches:
            one = (tmp_path / "one" / patch.relpath).read_bytes()
            assert one == (tmp_path / "two" / patch.relpath).read_bytes()
        np.testing.assert_array_equal(
            np.asarray(Image.open(tmp_path / "one" / patches[0].relpath)), patches[0].image
        )


def test_shapes_dtypes_and_counts(tiny: dict) -> None:
    assert set(tiny) == {"internal", "external"}
    assert len(tiny["internal"]) == 2 * 4 * 3
    assert len(tiny["external"]) == 3 * 3
    for patch in tiny["internal"] + tiny["external"]:
        assert patch.image.shape == (32, 32, 3)
        assert patch.image.dtype == np.uint8
        assert patch.label in (0, 1)


def test_manifests_match_files(tiny: dict, tmp_path) -> None:
    manifests = write_cohorts(tiny, tmp_path)
    for cohort, frame in manifests.items():
        assert list(frame.columns) == MANIFEST_COLUMNS
        assert frame["label"].dtype == np.int64
        assert frame["path"].is_monotonic_increasing and frame.index.is_monotonic_increasing
        assert frame["path"].str.startswith(f"{cohort}/").all()
        assert not frame["path"].str.contains("\\\\", regex=False).any()
        assert all((tmp_path / path).is_file() for path in frame["path"])
        assert len(frame) == len(tiny[cohort])


def test_ids_unique_and_never_shared_between_cohorts(tiny: dict) -> None:
    internal, external = tiny["internal"], tiny["external"]
    everything = internal + external
    assert len({p.relpath for p in everything}) == len(everything)
    assert not {p.patient_id for p in internal} & {p.patient_id for p in external}
    assert not {p.slide_id for p in internal} & {p.slide_id for p in external}
    by_patient: dict[str, set] = {}
    for patch in everything:
        assert patch.slide_id.startswith(patch.patient_id + "-S")
        assert f"/{patch.patient_id}/{patch.slide_id}_" in patch.relpath
        by_patient.setdefault(patch.patient_id, set()).add((patch.label, patch.site))
    assert all(len(v) == 1 for v in by_patient.values())  # one label, one site per patient
    slides = {p.slide_id for p in everything}
    assert all(int(s.rsplit("-S", 1)[1]) <= TINY.max_slides_per_patient for s in slides)


@pytest.mark.parametrize("seed", range(8))
def test_both_classes_in_every_site(seed: int) -> None:
    params = dataclasses.replace(
        TINY,
        seed=seed,
        patch_size=16,
        patients_per_site=2,
        external_patients=2,
        patches_per_patient=1,
    )
    cohorts = generate_cohorts(params)
    for site in [*params.internal_sites, params.external_site]:
        labels = {p.label for c in cohorts.values() for p in c if p.site == site}
        assert labels == {0, 1}


def test_site_does_not_depend_on_other_sites() -> None:
    alone = generate_cohorts(dataclasses.replace(TINY, internal_sites=["site_a"]))
    both = generate_cohorts(TINY)
    site_a = [p for p in both["internal"] if p.site == "site_a"]
    assert [p.relpath for p in alone["internal"]] == [p.relpath for p in site_a]
    for a, b in zip(alone["internal"], site_a, strict=True):
        np.testing.assert_array_equal(a.image, b.image)


def test_label_not_predictable_from_mean_colour(stats: dict) -> None:
    images, labels, _, patients = _arrays(stats["internal"])
    colour = images.reshape(len(images), -1, 3).mean(axis=1)
    scores = cross_val_predict(
        LogisticRegression(max_iter=1000),
        colour,
        labels,
        cv=GroupKFold(4),
        groups=patients,
        method="predict_proba",
    )[:, 1]
    assert roc_auc_score(labels, scores) < 0.7
    ext_images, *_ = _arrays(stats["external"])
    class_gap = np.abs(colour[labels == 1].mean(0) - colour[labels == 0].mean(0)).max()
    site_gap = np.abs(colour.mean(0) - ext_images.reshape(-1, 3).mean(0)).max()
    assert class_gap < 0.25 * site_gap


def test_external_colour_clearly_differs(stats: dict) -> None:
    images, _, sites, _ = _arrays(stats["internal"])
    od = _mean_od(images)
    site_a, site_b = od[sites == "site_a"].mean(0), od[sites == "site_b"].mean(0)
    external = _mean_od(_arrays(stats["external"])[0]).mean(0)
    internal_gap = np.linalg.norm(site_a - site_b)
    assert np.linalg.norm(external - od.mean(0)) > max(0.15, 2 * internal_gap)


def test_morphology_differs_by_class(stats: dict) -> None:
    images, labels, sites, _ = _arrays(stats["internal"])
    # nuclear pixels: hematoxylin absorbs red, so nuclei are much redder-darker than the patch's
    # typical (stroma or background) pixel, whatever the stain protocol
    red = images[..., 0]
    typical = np.median(red.reshape(len(red), -1), axis=1)[:, None, None]
    nuclear = (red < typical - 35).mean(axis=(1, 2))
    for site in STATS.internal_sites:
        in_site = sites == site
        assert (
            nuclear[in_site & (labels == 1)].mean() > 1.2 * nuclear[in_site & (labels == 0)].mean()
        )


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"seed": -1}, "seed"),
        ({"patients_per_site": 1}, "patients_per_site"),
        ({"internal_sites": ["site_a", "a"]}, "prefixes"),
        ({"external_site": "Site C"}, "site name"),
    ],
)
def test_invalid_params_raise_with_the_key(change: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(TINY, **change)
