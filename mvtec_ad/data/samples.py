"""What every source scans a dataset into: samples with labels and masks, and the image files found.

A source (mvtec_ad.data.sources) turns a folder into a `CategoryLayout`; everything downstream
(splits, datasets, evaluation) works on its `Sample` lists, so every check that can fail on a
user's folder fails while scanning, early, with a message that names the path and the fix.
"""

from __future__ import annotations

import fnmatch
import glob
import os
import warnings
from collections.abc import Iterator
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
    """The scanned train and test samples of one category, and its own validation samples if it has any.

    `val` is None for layouts without a validation split (the DataModule holds out a share of train);
    a dataset that ships one (MVTec AD 2's validation/good) gives it here and train stays whole.
    """

    root: Path
    category: str
    train: list[Sample]
    test: list[Sample]
    val: list[Sample] | None = None

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
    kept, each once (glob_files). No image at all is an error that names the path.
    """
    text = str(path)
    if glob.has_magic(text):
        images = sorted(p for p in glob_files(text) if p.suffix.lower() in IMAGE_EXTENSIONS)
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


def glob_files(pattern: str) -> list[Path]:
    """The files `pattern` matches, as glob.glob(pattern, recursive=True) finds them, but always ending.

    Folder links are followed, except one that leads back to a folder `**` is searching (`up -> ..`,
    `latest -> .`), which glob would follow until the path is too long. A file reached by several
    paths is kept once, by a path without a link where there is one. One warning names what was left.
    """
    skipped: list[Path] = []
    found: dict[str, tuple[bool, str, Path]] = {}  # real path -> (reached through a link, text, path)
    whole = Path(pattern)
    anchor, parts = (Path(whole.anchor), whole.parts[1:]) if whole.is_absolute() else (Path("."), whole.parts)
    for path, linked in matches(anchor, tuple(parts), (), False, skipped):
        if path.is_file():
            key = (linked, str(path), path)
            real = os.path.realpath(path)
            found[real] = min(found.get(real, key), key)
    if skipped:
        links = sorted({str(link) for link in skipped})
        named = ", ".join(f"'{link}'" for link in links[:3]) + (
            f" and {len(links) - 3} more" if len(links) > 3 else ""
        )
        warnings.warn(
            f"--data.path '{pattern}': the folder link(s) {named} lead back into a folder already being "
            "searched, so they were not followed (each image is predicted once).",
            stacklevel=3,
        )
    return [path for _, _, path in found.values()]


def matches(
    folder: Path, parts: tuple[str, ...], searched: tuple[str, ...], linked: bool, skipped: list[Path]
) -> Iterator[tuple[Path, bool]]:
    """Paths under `folder` that match the pattern `parts`, with whether a link was crossed to reach them.

    Follows glob's rules (names starting with '.' only match a pattern that starts with '.'; `**`
    matches zero or more folders); `searched` holds the real paths of the folders `**` is inside, and a
    folder link back into one of them is recorded in `skipped` instead of followed.
    """
    if not parts:
        yield folder, linked
        return
    head, rest = parts[0], parts[1:]
    if head == "**":
        yield from matches(folder, rest, searched, linked, skipped)
        inside = (*searched, os.path.realpath(folder))
        for child in children(folder, "*"):
            if not child.is_dir():
                if not rest:  # a trailing `**` matches files too
                    yield child, linked or child.is_symlink()
                continue
            if os.path.realpath(child) in inside:
                skipped.append(child)
                continue
            yield from matches(child, parts, inside, linked or child.is_symlink(), skipped)
    elif glob.has_magic(head):
        for child in children(folder, head):
            yield from matches(child, rest, searched, linked or child.is_symlink(), skipped)
    else:
        child = folder / head
        if os.path.lexists(child):
            yield from matches(child, rest, searched, linked or child.is_symlink(), skipped)


def children(folder: Path, pattern: str) -> list[Path]:
    """The entries of `folder` whose names match `pattern` (hidden ones only for a pattern that starts
    with '.'), sorted; none where `folder` is not a readable folder."""
    try:
        names = os.listdir(folder)
    except OSError:
        return []
    hidden = pattern.startswith(".")
    return [
        folder / name for name in sorted(fnmatch.filter(names, pattern)) if hidden or not name.startswith(".")
    ]
