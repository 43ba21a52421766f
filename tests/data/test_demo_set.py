"""Tests for the procedural MVTec-AD-style demo dataset (mvtec_ad.data.demo)."""

from __future__ import annotations

import hashlib
import inspect
from pathlib import Path

import cv2
import numpy as np
import pytest

from mvtec_ad.data.demo_set import (
    DEMO_CATEGORIES,
    DEMO_DEFECTS,
    make_demo_dataset,
    render_sample,
)

SMALL = dict(image_size=64, n_train=6, n_test_good=3, n_test_defect=6)


def _pngs(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.png"))


def _read(path: Path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert image is not None, path
    return image


def _digests(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def small_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("demo") / "mvtec"
    returned = make_demo_dataset(out, seed=0, **SMALL)
    assert returned == out and isinstance(returned, Path)
    return out


def test_defaults_match_documented_signature() -> None:
    params = inspect.signature(make_demo_dataset).parameters
    assert params["categories"].default == DEMO_CATEGORIES == ("fabric", "washer")
    assert {
        k: params[k].default for k in ("image_size", "n_train", "n_test_good", "n_test_defect", "seed")
    } == {
        "image_size": 256,
        "n_train": 60,
        "n_test_good": 15,
        "n_test_defect": 30,
        "seed": 0,
    }


def test_both_categories_with_at_least_three_defect_types(small_set: Path) -> None:
    assert sorted(p.name for p in small_set.iterdir()) == sorted(DEMO_CATEGORIES)
    for category in DEMO_CATEGORIES:
        defect_dirs = {p.name for p in (small_set / category / "test").iterdir()} - {"good"}
        assert len(defect_dirs) >= 3
        assert defect_dirs == set(DEMO_DEFECTS[category])
        assert all(name == name.lower() and " " not in name for name in defect_dirs)


def test_file_counts_match_arguments(small_set: Path) -> None:
    for category in DEMO_CATEGORIES:
        cat = small_set / category
        assert sorted(p.name for p in cat.iterdir()) == ["ground_truth", "test", "train"]
        assert [p.name for p in cat.joinpath("train").iterdir()] == ["good"]
        assert [p.name for p in _pngs(cat / "train" / "good")] == [f"{i:03d}.png" for i in range(6)]
        assert [p.name for p in _pngs(cat / "test" / "good")] == [f"{i:03d}.png" for i in range(3)]
        counts = [len(_pngs(cat / "test" / d)) for d in DEMO_DEFECTS[category]]
        assert sum(counts) == SMALL["n_test_defect"]
        assert max(counts) - min(counts) <= 1


def test_defaults_spread_thirty_defects_evenly(tmp_path: Path) -> None:
    make_demo_dataset(
        tmp_path, categories=["washer"], image_size=64, n_train=0, n_test_good=0, n_test_defect=30
    )
    counts = sorted(len(_pngs(tmp_path / "washer" / "test" / d)) for d in DEMO_DEFECTS["washer"])
    assert counts == [7, 7, 8, 8]
    assert not (tmp_path / "fabric").exists()


def test_images_are_colour_uint8_of_requested_size(small_set: Path) -> None:
    images = [_read(p) for p in small_set.rglob("*.png") if "ground_truth" not in p.parts]
    assert len(images) == 2 * (6 + 3 + 6)
    for image in images:
        assert image.dtype == np.uint8 and image.shape == (64, 64, 3)
    fabric = _read(small_set / "fabric" / "train" / "good" / "000.png").astype(int)
    assert np.abs(fabric[..., 2] - fabric[..., 0]).mean() > 20  # really coloured, not grey


def test_every_defect_image_has_exact_size_binary_nonempty_mask(small_set: Path) -> None:
    for category in DEMO_CATEGORIES:
        gt = small_set / category / "ground_truth"
        assert sorted(p.name for p in gt.iterdir()) == sorted(DEMO_DEFECTS[category])  # no "good"
        for defect in DEMO_DEFECTS[category]:
            images = _pngs(small_set / category / "test" / defect)
            masks = _pngs(gt / defect)
            assert [m.name for m in masks] == [f"{p.stem}_mask.png" for p in images]
            for image_path, mask_path in zip(images, masks, strict=True):
                mask = _read(mask_path)
                assert mask.dtype == np.uint8 and mask.ndim == 2
                assert mask.shape == _read(image_path).shape[:2]
                assert set(np.unique(mask)) == {0, 255}
                assert 0.003 <= (mask == 255).mean() <= 0.08


def test_same_seed_gives_identical_bytes_different_seed_differs(tmp_path: Path) -> None:
    first = _digests(make_demo_dataset(tmp_path / "a", seed=3, **SMALL))
    again = _digests(make_demo_dataset(tmp_path / "b", seed=3, **SMALL))
    reordered = _digests(make_demo_dataset(tmp_path / "c", categories=DEMO_CATEGORIES[::-1], seed=3, **SMALL))
    other = _digests(make_demo_dataset(tmp_path / "d", seed=4, **SMALL))
    assert len(first) == 2 * (6 + 3 + 6 + 6)
    assert first == again == reordered
    assert first.keys() == other.keys()
    assert all(first[name] != other[name] for name in first)


def test_written_files_equal_render_sample(small_set: Path) -> None:
    for category in DEMO_CATEGORIES:
        cat = small_set / category
        good = render_sample(category, "test", 2, image_size=64, seed=0)
        assert good.mask is None and np.array_equal(good.image, good.normal)
        assert np.array_equal(_read(cat / "test" / "good" / "002.png"), good.image)
        defect = DEMO_DEFECTS[category][0]
        sample = render_sample(category, "test", 1, defect, image_size=64, seed=0)
        assert np.array_equal(_read(cat / "test" / defect / "001.png"), sample.image)
        assert np.array_equal(_read(cat / "ground_truth" / defect / "001_mask.png"), sample.mask)


@pytest.mark.parametrize("category", DEMO_CATEGORIES)
def test_masks_mark_exactly_the_changed_pixels(category: str) -> None:
    for defect in DEMO_DEFECTS[category]:
        for index in range(4):
            sample = render_sample(category, "test", index, defect, image_size=128, seed=0)
            inside = sample.mask == 255
            diff = np.abs(sample.image.astype(int) - sample.normal.astype(int)).mean(axis=2)
            assert np.all(diff[~inside] == 0), (defect, index)
            assert diff[inside].mean() > 20, (defect, index)
            assert (diff[inside] >= 5).mean() > 0.95, (defect, index)


def test_defects_contrast_with_their_surroundings(small_set: Path) -> None:
    """Without the helper: the masked region looks different from a band around it."""
    kernel = np.ones((7, 7), np.uint8)
    for category in DEMO_CATEGORIES:
        for defect in DEMO_DEFECTS[category]:
            for image_path in _pngs(small_set / category / "test" / defect):
                image = _read(image_path).astype(float)
                mask = _read(small_set / category / "ground_truth" / defect / f"{image_path.stem}_mask.png")
                band = (cv2.dilate(mask, kernel) > 0) & (mask == 0)
                gap = np.abs(image[mask == 255].mean(0) - image[band].mean(0)).max()
                assert gap > 20, (category, defect, image_path.name, gap)


def test_washer_defects_stay_on_the_object() -> None:
    for defect in DEMO_DEFECTS["washer"]:
        for index in range(3):
            sample = render_sample("washer", "test", index, defect, image_size=128, seed=0)
            gray = cv2.cvtColor(sample.normal, cv2.COLOR_BGR2GRAY)
            on_metal = gray[sample.mask == 255] > 90  # background is ~40-60, metal ~130+
            assert on_metal.mean() > 0.9, (defect, index)


def test_normal_images_vary_but_share_a_distribution() -> None:
    for category in DEMO_CATEGORIES:
        train = np.stack([render_sample(category, "train", i, image_size=64).image for i in range(8)])
        test = np.stack([render_sample(category, "test", i, image_size=64).image for i in range(8)])
        assert len({im.tobytes() for im in np.concatenate([train, test])}) == 16
        pair_diff = np.abs(train[0].astype(int) - train[1].astype(int)).mean()
        assert pair_diff > 3  # nuisance variation, not copies
        assert abs(train.mean() - test.mean()) < 10


def test_unknown_category_raises_value_error_listing_valid_names(tmp_path: Path) -> None:
    with pytest.raises(ValueError) as info:
        make_demo_dataset(tmp_path, categories=["fabric", "bottle"], **SMALL)
    assert "bottle" in str(info.value)
    assert all(name in str(info.value) for name in DEMO_CATEGORIES)
    assert not any(tmp_path.iterdir())  # validated before anything is written
    with pytest.raises(ValueError, match="washer"):
        render_sample("carpet", "train", 0)


def test_invalid_defect_or_split_raises() -> None:
    with pytest.raises(ValueError, match="scratch"):
        render_sample("washer", "test", 0, "hole")
    with pytest.raises(ValueError):
        render_sample("fabric", "train", 0, "hole")
    with pytest.raises(ValueError):
        render_sample("fabric", "valid", 0)
