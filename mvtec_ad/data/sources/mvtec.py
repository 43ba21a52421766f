"""Source `mvtec`: a category folder in the official MVTec AD layout, scanned and validated.

    <root>/<category>/train/good/*.png
    <root>/<category>/test/good/*.png
    <root>/<category>/test/<defect>/*.png
    <root>/<category>/ground_truth/<defect>/<stem>_mask.png

Everything downstream works on the `Sample` lists returned here, so every check that can fail
on a user's folder fails here, early, with a message that names the path and the fix.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from mvtec_ad.data.samples import (
    GOOD,
    IMAGE_EXTENSIONS,
    CategoryLayout,
    Sample,
    list_images,
    missing_masks_error,
)
from mvtec_ad.errors import DataError

# The official category order of MVTec AD (used for tables and `--categories all`).
MVTEC_CATEGORIES = (
    "bottle",
    "cable",
    "capsule",
    "carpet",
    "grid",
    "hazelnut",
    "leather",
    "metal_nut",
    "pill",
    "screw",
    "tile",
    "toothbrush",
    "transistor",
    "wood",
    "zipper",
)

MVTEC_HELP = (
    "Download MVTec AD from https://www.mvtec.com/company/research/datasets/mvtec-ad, extract it "
    "and pass the folder that holds the category folders (e.g. --data.root datasets/mvtec), "
    "or make the procedural demo set with `python -m mvtec_ad synth --out datasets/demo`."
)


def list_categories(root: str | Path) -> list[str]:
    """Category folders under `root` (those with a train/good folder), MVTec's official order first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = {p.name for p in root.iterdir() if (p / "train" / GOOD).is_dir()}
    official = [c for c in MVTEC_CATEGORIES if c in found]
    return official + sorted(found - set(official))


def resolve_categories(root: str | Path, requested: Sequence[str]) -> list[str]:
    """`all` -> every category under root (MVTec's official order first); otherwise the names given
    (comma- or space-separated, duplicates dropped), each checked to exist, so a typo fails first."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"Dataset root '{root}' does not exist. {MVTEC_HELP}")
    present = list_categories(root)
    if not present:
        raise DataError(
            f"No category folders in '{root}' (a category folder holds train/good/). "
            f"Pass the folder that holds the category folders with --data.root. {MVTEC_HELP}"
        )
    names = list(dict.fromkeys(n.strip() for item in requested for n in item.split(",") if n.strip()))
    if names == ["all"]:
        return present
    unknown = [name for name in names if name not in present]
    if unknown or not names:
        raise DataError(
            f"Unknown category {', '.join(repr(n) for n in unknown) or '(none given)'} in '{root}'. "
            f"Categories there: {', '.join(present)}. Pass some of them, comma-separated, or 'all' "
            f"with --categories."
        )
    return names


def find_mask(ground_truth: Path, defect: str, image: Path) -> Path | None:
    """The mask of `image`: ground_truth/<defect>/<stem>_mask.<ext> (MVTec) or <stem>.<ext>."""
    folder = ground_truth / defect
    for stem in (f"{image.stem}_mask", image.stem):
        for ext in IMAGE_EXTENSIONS:
            candidate = folder / f"{stem}{ext}"
            if candidate.is_file():
                return candidate
    return None


def scan_category(root: str | Path, category: str, require_masks: bool = True) -> CategoryLayout:
    """Scan one category folder and validate it.

    Args:
        root: folder that holds the category folders.
        category: name of the category folder.
        require_masks: if True, a defective test image without a mask is an error; if False it
            is kept for image-level evaluation and pixel metrics are reported as null.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"Dataset root '{root}' does not exist. {MVTEC_HELP}")
    folder = root / category
    if not folder.is_dir():
        present = list_categories(root)
        listing = ", ".join(present) if present else "none (no folder with a train/good subfolder)"
        raise DataError(
            f"Category '{category}' not found in '{root}'. Categories there: {listing}. "
            f"Pass one of them with --data.category."
        )

    train_dir = folder / "train" / GOOD
    train = [Sample(p, 0, GOOD) for p in list_images(train_dir)]
    if not train:
        raise DataError(
            f"No training images in '{train_dir}'. Put the defect-free training images there "
            f"({', '.join(IMAGE_EXTENSIONS)})."
        )

    test_dir = folder / "test"
    ground_truth = folder / "ground_truth"
    test: list[Sample] = []
    missing: list[str] = []
    defect_dirs = sorted(p for p in test_dir.iterdir() if p.is_dir()) if test_dir.is_dir() else []
    for defect_dir in defect_dirs:
        defect = defect_dir.name
        for path in list_images(defect_dir):
            if defect == GOOD:
                test.append(Sample(path, 0, GOOD))
                continue
            mask = find_mask(ground_truth, defect, path)
            if mask is None:
                missing.append(str(path))
            test.append(Sample(path, 1, defect, mask))
    if not test:
        raise DataError(
            f"No test images in '{test_dir}'. Expected test/good/ and one folder per defect type."
        )
    if missing and require_masks:
        raise missing_masks_error(missing, f"'{folder}'", "ground_truth/<defect>/<stem>_mask.png")
    return CategoryLayout(root, category, train, test)
