"""Source mvtec: scanning and validating a category folder in the official layout (hand-made 32 px categories)."""

from __future__ import annotations

import pytest

from mvtec_ad.data.samples import Sample
from mvtec_ad.data.sources.mvtec import find_mask, list_categories, scan_category
from mvtec_ad.errors import DataError
from tests.helpers import make_category, write_image, write_mask


def test_scan_missing_root_names_root_and_synth(tmp_path):
    root = tmp_path / "nowhere"
    with pytest.raises(DataError) as err:
        scan_category(root, "widget")
    assert str(root) in str(err.value)
    assert "synth" in str(err.value)


def test_scan_missing_category_lists_existing_categories(tmp_path):
    root = tmp_path / "data"
    make_category(root, "zeta")
    make_category(root, "alpha")
    make_category(root, "bottle")  # an official MVTec category: listed first
    (root / "notacategory").mkdir()  # no train/good: not listed
    with pytest.raises(DataError) as err:
        scan_category(root, "widget")
    message = str(err.value)
    assert "'widget'" in message
    assert str(root) in message
    assert "bottle, alpha, zeta" in message
    assert "notacategory" not in message
    assert list_categories(root) == ["bottle", "alpha", "zeta"]
    assert list_categories(tmp_path / "nowhere") == []


def test_scan_missing_category_in_empty_root_says_none(tmp_path):
    with pytest.raises(DataError, match="none"):
        scan_category(tmp_path, "widget")


def test_scan_no_training_images_names_train_good(tmp_path):
    root = make_category(tmp_path / "data", n_train=0)
    (root / "widget" / "train" / "good").mkdir(parents=True, exist_ok=True)
    (root / "widget" / "train" / "good" / "readme.txt").write_text("not an image")
    with pytest.raises(DataError) as err:
        scan_category(root, "widget")
    assert str(root / "widget" / "train" / "good") in str(err.value)


def test_scan_no_test_images_names_test_folder(tmp_path):
    root = make_category(tmp_path / "data", n_good=0, defects={})
    with pytest.raises(DataError) as err:
        scan_category(root, "widget")
    assert str(root / "widget" / "test") in str(err.value)


def test_scan_defect_without_mask_is_an_error_naming_the_image(tmp_path):
    root = make_category(tmp_path / "data")
    orphan = write_image(tmp_path / "data" / "widget" / "test" / "dent" / "007.png", value=250)
    with pytest.raises(DataError) as err:
        scan_category(root, "widget")
    message = str(err.value)
    assert str(orphan) in message
    assert "1 defective test image(s)" in message
    assert "require_masks" in message
    # images that do have masks are not listed as missing
    assert str(root / "widget" / "test" / "crack" / "000.png") not in message


def test_scan_defect_without_mask_kept_when_masks_not_required(tmp_path):
    root = make_category(tmp_path / "data")
    orphan = write_image(tmp_path / "data" / "widget" / "test" / "dent" / "007.png", value=250)
    layout = scan_category(root, "widget", require_masks=False)
    (sample,) = [s for s in layout.test if s.path == orphan]
    assert sample == Sample(orphan, 1, "dent", None)
    assert layout.has_masks is False
    assert layout.defect_types == ["crack", "dent", "scratch"]
    # the images that have masks still get them
    assert all(s.mask_path is not None for s in layout.test if s.label == 1 and s.defect != "dent")


def test_scan_has_masks_and_without_any_mask(tmp_path):
    assert scan_category(make_category(tmp_path / "a"), "widget").has_masks is True
    layout = scan_category(make_category(tmp_path / "b", masks=False), "widget", require_masks=False)
    assert layout.has_masks is False
    assert all(s.mask_path is None for s in layout.test)
    # only good test images: no defective image, so no pixel metrics either
    assert scan_category(make_category(tmp_path / "c", defects={}), "widget").has_masks is False


def test_scan_labels_defects_masks_and_sorted_order(tmp_path):
    root = tmp_path / "data"
    folder = root / "widget"
    # written out of order on purpose
    for name in ["c.png", "a.png", "b.png"]:
        write_image(folder / "train" / "good" / name)
    for name in ["y.png", "x.png"]:
        write_image(folder / "test" / "good" / name)
    for defect in ["scratch", "crack"]:
        for name in ["2.png", "1.png"]:
            write_image(folder / "test" / defect / name)
            write_mask(folder / "ground_truth" / defect / name.replace(".png", "_mask.png"))

    layout = scan_category(root, "widget")
    assert layout.root == root and layout.category == "widget"
    assert [s.path.name for s in layout.train] == ["a.png", "b.png", "c.png"]
    assert all(s.label == 0 and s.defect == "good" and s.mask_path is None for s in layout.train)
    assert [(s.path.parent.name, s.path.name, s.label) for s in layout.test] == [
        ("crack", "1.png", 1),
        ("crack", "2.png", 1),
        ("good", "x.png", 0),
        ("good", "y.png", 0),
        ("scratch", "1.png", 1),
        ("scratch", "2.png", 1),
    ]
    for s in layout.test:
        if s.label == 1:
            assert s.defect == s.path.parent.name
            assert s.mask_path == folder / "ground_truth" / s.defect / f"{s.path.stem}_mask.png"
        else:
            assert s.defect == "good" and s.mask_path is None
    assert layout.defect_types == ["crack", "scratch"]
    # a second scan gives exactly the same samples
    again = scan_category(root, "widget")
    assert again.train == layout.train and again.test == layout.test


def test_scan_accepts_image_extensions_and_ignores_other_files(tmp_path):
    root = tmp_path / "data"
    train = root / "widget" / "train" / "good"
    for name in ["a.png", "b.jpg", "c.bmp", "d.tif", "e.JPG"]:
        write_image(train / name)
    (train / "notes.txt").write_text("hello")
    (train / "f.png.bak").write_bytes(b"x")
    (train / "subdir.png").mkdir()  # a folder with an image-like name is not an image
    write_image(root / "widget" / "test" / "good" / "g.png")
    layout = scan_category(root, "widget")
    assert [s.path.name for s in layout.train] == ["a.png", "b.jpg", "c.bmp", "d.tif", "e.JPG"]


def test_find_mask_conventions(tmp_path):
    gt = tmp_path / "ground_truth"
    image = tmp_path / "test" / "crack" / "003.png"
    assert find_mask(gt, "crack", image) is None
    plain = write_mask(gt / "crack" / "003.bmp")  # <stem>.<ext> fallback
    assert find_mask(gt, "crack", image) == plain
    mvtec = write_mask(gt / "crack" / "003_mask.png")  # MVTec naming wins
    assert find_mask(gt, "crack", image) == mvtec
    assert find_mask(gt, "scratch", image) is None  # looks in the defect's own folder only
