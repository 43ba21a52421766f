"""What every source scans a dataset into: samples with labels and masks, and the image files found.

A source (mvtec_ad.data.sources) turns a folder into a `CategoryLayout`; everything downstream
(splits, datasets, evaluation) works on its `Sample` lists, so every check that can fail on a
user's folder fails while scanning, early, with a message that names the path and the fix.
"""

from __future__ import annotations

import glob
from dataclasses import dataclass
from pathlib import Path

from mvtec_ad.errors import DataError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")

GOOD = "good"


@dataclass(frozen=True)
class Sample:
    """One image of a category: where it is, whether it is defective, and where its mask is."""

    path: Path
    label: int  # 0 = good, 1 = defective, -1 = unknown (predict)
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


def missing_masks_error(missing: list[str], where: str, expected: str) -> DataError:
    """The error for defective images without a mask: the first few, where masks were sought, the way out."""
    shown = "\n  ".join(missing[:5]) + ("\n  ..." if len(missing) > 5 else "")
    return DataError(
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
    raise DataError(
        f"--data.path '{text}' {reason}. Pass an image file, a folder of images or a glob "
        f"({', '.join(IMAGE_EXTENSIONS)})."
    )
