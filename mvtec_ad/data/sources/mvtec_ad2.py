"""Source `mvtec_ad2`: a category of MVTec AD 2 (Heckler-Kram et al. 2025, arXiv 2503.21622), read in place.

    <root>/<category>/train/good/*.png                                  training (normal)
    <root>/<category>/validation/good/*.png                             the dataset's own validation (normal)
    <root>/<category>/test_public/{good,bad}/*.png                      test, labelled
    <root>/<category>/test_public/ground_truth/bad/<stem>_mask.png      masks of test_public/bad
    <root>/<category>/test_private/*.png, test_private_mixed/*.png      unlabelled (no good/bad folders)

Followed from MVTec's public utility code (MVTecAD2_public_code_utils/mvtec_ad_2_public_offline.py,
class MVTecAD2): the eight objects and five split names; images are the files matching
`[0-9][0-9][0-9]*.png` inside `<split>/[gb][oa][od]*/` (good, bad), or directly inside the split
folder for the private splits (files not matching are ignored there too, so counts agree with
MVTec's loader and upload checker); the mask of `test_public/bad/<name>.png` is
`test_public/ground_truth/bad/<name with .png -> _mask.png>` (255 = defective); only test_public
has ground truth. Private images get label -1, as `predict` images do.
"""

from __future__ import annotations

import fnmatch
from pathlib import Path

from mvtec_ad.data.samples import GOOD, CategoryLayout, Sample, missing_masks_error
from mvtec_ad.errors import ConfigError, DataError

# mvtec_ad_2_public_offline.py, MVTEC_AD_2_OBJECTS
MVTEC_AD2_CATEGORIES = ("can", "fabric", "fruit_jelly", "rice", "sheet_metal", "vial", "wallplugs", "walnuts")
TEST_SPLITS = ("test_public", "test_private", "test_private_mixed")  # what predict and submit read
PRIVATE_SPLITS = ("test_private", "test_private_mixed")  # unlabelled: the evaluation server holds their truth
IMAGE_PATTERN = "[0-9][0-9][0-9]*.png"  # mvtec_ad_2_public_offline.py, MVTecAD2._get_pattern
BAD = "bad"
UNKNOWN = "unknown"

MVTEC_AD2_HELP = (
    "Download MVTec AD 2 from https://www.mvtec.com/company/research/datasets/mvtec-ad-2, extract it and "
    "pass the folder that holds the category folders (can, fabric, ...) with --data.root."
)


def check_split(split: str, option: str = "--data.predict_split") -> str:
    """`split` if it is one of MVTec AD 2's test splits; otherwise a one-line error listing them."""
    if split not in TEST_SPLITS:
        raise ConfigError(
            f"{option} '{split}' is not an MVTec AD 2 test split; use one of {', '.join(TEST_SPLITS)}."
        )
    return split


def official_images(folder: Path) -> list[Path]:
    """The images MVTec's loader takes from `folder`: `[0-9][0-9][0-9]*.png` files, sorted by name."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_file() and fnmatch.fnmatchcase(p.name, IMAGE_PATTERN))


def category_folder(root: str | Path, category: str) -> Path:
    """`<root>/<category>`, or a one-line error naming what is there."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"Dataset root '{root}' does not exist. {MVTEC_AD2_HELP}")
    folder = root / category
    if not folder.is_dir():
        present = sorted(p.name for p in root.iterdir() if (p / "train" / GOOD).is_dir())
        official = [c for c in MVTEC_AD2_CATEGORIES if c in present]
        listing = ", ".join(official + [c for c in present if c not in official]) or "none"
        raise DataError(
            f"Category '{category}' not found in '{root}'. Categories there: {listing}. "
            f"Pass one of them with --data.category."
        )
    return folder


def normal_images(folder: Path, split: str) -> list[Sample]:
    """`<split>/good`'s images as normal samples; a missing or empty folder is a one-line error naming it."""
    good = folder / split / GOOD
    if not good.is_dir():
        raise DataError(
            f"MVTec AD 2 category '{folder}' has no {split}/{GOOD} folder ('{good}'): every category of the "
            f"dataset holds one. Extract the whole category, or check --data.root."
        )
    images = official_images(good)
    if not images:
        raise DataError(
            f"No images in '{good}' (MVTec AD 2 names them {IMAGE_PATTERN}, e.g. 000_regular.png)."
        )
    return [Sample(p, 0, GOOD) for p in images]


def find_mask(image: Path) -> Path:
    """Where MVTec's code looks for the mask of test_public/bad/<name>.png: ground_truth/bad/<stem>_mask.png."""
    return image.parent.parent / "ground_truth" / BAD / f"{image.stem}_mask.png"


def public_test_samples(folder: Path, require_masks: bool = True) -> list[Sample]:
    """test_public: good images (label 0), then bad ones (label 1) with their masks."""
    split = folder / "test_public"
    good = [Sample(p, 0, GOOD) for p in official_images(split / GOOD)]
    bad: list[Sample] = []
    missing: list[str] = []
    for image in official_images(split / BAD):
        mask = find_mask(image)
        if not mask.is_file():
            missing.append(str(image))
        bad.append(Sample(image, 1, BAD, mask if mask.is_file() else None))
    if not good and not bad:
        raise DataError(
            f"No test images in '{split}': MVTec AD 2 keeps them in test_public/good and test_public/bad."
        )
    if missing and require_masks:
        raise missing_masks_error(missing, f"'{split}'", "test_public/ground_truth/bad/<stem>_mask.png")
    return good + bad


def split_samples(root: str | Path, category: str, split: str, require_masks: bool = True) -> list[Sample]:
    """The images of one test split: test_public labelled (with masks), a private split unlabelled (-1)."""
    check_split(split)
    folder = category_folder(root, category)
    if split == "test_public":
        return public_test_samples(folder, require_masks)
    images = official_images(folder / split)
    if not images:
        raise DataError(
            f"No images in '{folder / split}' (MVTec AD 2 names them {IMAGE_PATTERN}, e.g. 000_regular.png): "
            f"extract the {split} part of the category, or pick another split."
        )
    return [Sample(p, -1, UNKNOWN) for p in images]


def scan_mvtec_ad2(root: str | Path, category: str, require_masks: bool = True) -> CategoryLayout:
    """train/good for training, validation/good as the layout's own validation, test_public as test.

    The DataModule takes `val` as it is (no share of train is held out for this source).
    """
    folder = category_folder(root, category)
    train = normal_images(folder, "train")
    val = normal_images(folder, "validation")
    test = public_test_samples(folder, require_masks)
    return CategoryLayout(Path(root), category, train, test, val=val)
