"""Scan and validate a category folder in the official MVTec AD layout.

    <root>/<category>/train/good/*.png
    <root>/<category>/test/good/*.png
    <root>/<category>/test/<defect>/*.png
    <root>/<category>/ground_truth/<defect>/<stem>_mask.png

Everything downstream works on the `Sample` lists returned here, so every check that can fail
on a user's folder fails here, early, with a message that names the path and the fix.
"""

from __future__ import annotations

import glob
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")

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

GOOD = "good"

MVTEC_HELP = (
    "Download MVTec AD from https://www.mvtec.com/company/research/datasets/mvtec-ad, extract it "
    "and pass the folder that holds the category folders (e.g. --data.root datasets/mvtec), "
    "or make the procedural demo set with `python -m mvtec_ad synth --out datasets/demo`."
)


class DatasetError(ValueError):
    """A dataset folder that does not follow the expected layout; the message says how to fix it."""


@dataclass(frozen=True)
class Sample:
    """One image of a category: where it is, whether it is defective, and where its mask is."""

    path: Path
    label: int  # 0 = good, 1 = defective
    defect: str  # "good" or the defect type (folder name)
    mask_path: Path | None = None


@dataclass(frozen=True)
class CategoryLayout:
    """The scanned train and test samples of one category."""

    root: Path
    category: str
    train: list[Sample]
    test: list[Sample]

    @property
    def defect_types(self) -> list[str]:
        return sorted({s.defect for s in self.test if s.label == 1})

    @property
    def has_masks(self) -> bool:
        """True when every defective test image has a ground-truth mask (pixel metrics apply)."""
        defective = [s for s in self.test if s.label == 1]
        return bool(defective) and all(s.mask_path is not None for s in defective)


def list_images(folder: Path) -> list[Path]:
    """Image files directly in `folder`, sorted by name (deterministic across file systems)."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


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
        raise DatasetError(f"Dataset root '{root}' does not exist. {MVTEC_HELP}")
    present = list_categories(root)
    if not present:
        raise DatasetError(
            f"No category folders in '{root}' (a category folder holds train/good/). "
            f"Pass the folder that holds the category folders with --data.root. {MVTEC_HELP}"
        )
    names = list(dict.fromkeys(n.strip() for item in requested for n in item.split(",") if n.strip()))
    if names == ["all"]:
        return present
    unknown = [name for name in names if name not in present]
    if unknown or not names:
        raise DatasetError(
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
        raise DatasetError(f"Dataset root '{root}' does not exist. {MVTEC_HELP}")
    folder = root / category
    if not folder.is_dir():
        present = list_categories(root)
        listing = ", ".join(present) if present else "none (no folder with a train/good subfolder)"
        raise DatasetError(
            f"Category '{category}' not found in '{root}'. Categories there: {listing}. "
            f"Pass one of them with --data.category."
        )

    train_dir = folder / "train" / GOOD
    train = [Sample(p, 0, GOOD) for p in list_images(train_dir)]
    if not train:
        raise DatasetError(
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
        raise DatasetError(
            f"No test images in '{test_dir}'. Expected test/good/ and one folder per defect type."
        )
    if missing and require_masks:
        raise missing_masks_error(missing, f"'{folder}'", "ground_truth/<defect>/<stem>_mask.png")
    return CategoryLayout(root, category, train, test)


def missing_masks_error(missing: list[str], where: str, expected: str) -> DatasetError:
    """The error for defective images without a mask: the first few, where masks were sought, the way out."""
    shown = "\n  ".join(missing[:5]) + ("\n  ..." if len(missing) > 5 else "")
    return DatasetError(
        f"{len(missing)} defective test image(s) in {where} have no ground-truth mask "
        f"(expected {expected}):\n  {shown}\n"
        f"Add the masks, or pass --data.require_masks false to evaluate image-level metrics only."
    )


def find_images(path: str | Path) -> list[Path]:
    """Images to predict on: one file, a folder's images (not its subfolders) or a glob, sorted.

    A glob may recurse with `**` (e.g. 'parts/**/*.png'); only files with an image extension are
    kept. No image at all is an error that names the path.
    """
    text = str(path)
    if glob.has_magic(text):
        found = [Path(p) for p in glob.glob(text, recursive=True)]
        images = sorted(p for p in found if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    elif Path(text).is_file():
        images = [Path(text)]
    else:
        images = list_images(Path(text))
    if images:
        return images
    if glob.has_magic(text):
        reason = "matches no image file"
    elif Path(text).exists():
        reason = "holds no image file (subfolders are not searched: use a glob such as 'folder/**/*.png')"
    else:
        reason = "does not exist"
    raise DatasetError(
        f"--data.path '{text}' {reason}. Pass an image file, a folder of images or a glob "
        f"({', '.join(IMAGE_EXTENSIONS)})."
    )
