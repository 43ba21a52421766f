"""Source `folder`: your own data, a folder of good images, folders of defective images and their masks.

    <root>/<good_dir>/*.png                         normal images; a seeded share becomes test/good
    <root>/<defect_dirs[i]>/*.png                   defective images, defect type = folder name
    <root>/<mask_dirs[i]>/<mask_pattern>            the mask of each defective image, e.g. {stem}_mask.png

`scan_folders` turns this into the same `CategoryLayout` as the MVTec layout, so splits,
protocols, loaders and evaluation are the DataModule's own, as for every source.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from string import Formatter

from mvtec_ad.data.samples import (
    GOOD,
    IMAGE_EXTENSIONS,
    CategoryLayout,
    Sample,
    list_images,
    missing_masks_error,
)
from mvtec_ad.data.splits import split_train_val
from mvtec_ad.errors import ConfigError, DataError

MASK_PATTERN_FIELDS = ("stem", "suffix", "name")  # of the image: 000, .png, 000.png


def check_mask_pattern(pattern: str) -> None:
    """Fail early on a pattern that cannot name one mask per image (bad braces, unknown or no field)."""
    fields_help = ", ".join("{" + f + "}" for f in MASK_PATTERN_FIELDS)
    try:
        fields = {field for _, field, _, _ in Formatter().parse(pattern) if field is not None}
        unknown = sorted(fields - set(MASK_PATTERN_FIELDS))
        if not unknown:
            pattern.format(stem="000", suffix=".png", name="000.png")
    except ValueError as error:
        raise ConfigError(
            f"--data.mask_pattern '{pattern}' is not a valid pattern ({error}). Use the fields {fields_help}, "
            f"e.g. '{{stem}}_mask.png'."
        ) from None
    if unknown:
        raise ConfigError(
            f"--data.mask_pattern '{pattern}' has unknown field(s) {unknown}; the fields are {fields_help}, "
            f"e.g. '{{stem}}_mask.png'."
        )
    if not fields & {"stem", "name"}:
        raise ConfigError(
            f"--data.mask_pattern '{pattern}' names the same file for every image; include {{stem}} or "
            f"{{name}}, e.g. '{{stem}}_mask.png'."
        )


def mask_path(mask_dir: Path, pattern: str, image: Path) -> Path:
    """Where `pattern` puts the mask of `image` inside `mask_dir`."""
    return mask_dir / pattern.format(stem=image.stem, suffix=image.suffix, name=image.name)


def folder_images(folder: Path, option: str) -> list[Path]:
    """The images directly in `folder`; a missing or empty folder is an error naming `option`."""
    if not folder.is_dir():
        raise DataError(
            f"{option}: folder '{folder}' does not exist. Check the path (relative to --data.root)."
        )
    images = list_images(folder)
    if not images:
        raise DataError(f"{option}: no images in '{folder}'. Put {', '.join(IMAGE_EXTENSIONS)} files there.")
    return images


def check_folder_options(
    defect_dirs: Sequence[str],
    mask_dirs: Sequence[str] | None,
    mask_pattern: str,
    good_test_share: float,
    require_masks: bool,
) -> None:
    """The folder options that can be wrong before any folder is read; each error names its option."""
    check_mask_pattern(mask_pattern)
    if not defect_dirs:
        raise ConfigError("--data.defect_dirs is empty: give one or more folders of defective images.")
    if mask_dirs and len(mask_dirs) != len(defect_dirs):
        raise ConfigError(
            f"--data.mask_dirs has {len(mask_dirs)} folder(s) for {len(defect_dirs)} --data.defect_dirs; "
            f"give one mask folder per defect folder, in the same order."
        )
    if not mask_dirs and require_masks:
        raise ConfigError(
            "No --data.mask_dirs given: pass one mask folder per defect folder (with --data.mask_pattern), "
            "or --data.require_masks false to evaluate image-level metrics only."
        )
    if not 0.0 < good_test_share < 1.0:
        raise ConfigError(f"--data.good_test_share must be in (0, 1), got {good_test_share}.")


def scan_folders(
    root: str | Path,
    category: str,
    good_dir: str,
    defect_dirs: Sequence[str],
    mask_dirs: Sequence[str] | None = None,
    mask_pattern: str = "{stem}_mask.png",
    good_test_share: float = 0.2,
    seed: int = 42,
    require_masks: bool = True,
) -> CategoryLayout:
    """Scan and validate the folders; a seeded `good_test_share` of the good images becomes test/good.

    Folders are relative to `root` (absolute paths are taken as they are). `mask_dirs[i]` holds
    the masks of `defect_dirs[i]`; without mask folders only image-level metrics apply.
    """
    root = Path(root)
    check_folder_options(defect_dirs, mask_dirs, mask_pattern, good_test_share, require_masks)

    good = [Sample(p, 0, GOOD) for p in folder_images(root / good_dir, "--data.good_dir")]
    train, test = split_train_val(good, good_test_share, seed, option="--data.good_test_share")
    missing: list[str] = []
    for i, defect_dir in enumerate(defect_dirs):
        folder = root / defect_dir
        images = folder_images(folder, "--data.defect_dirs")
        mask_dir = root / mask_dirs[i] if mask_dirs else None
        if mask_dir is not None and not mask_dir.is_dir():
            raise DataError(f"--data.mask_dirs: folder '{mask_dir}' does not exist (masks of '{folder}').")
        if (
            mask_dir is not None
        ):  # masks kept beside their images (mask_dir = the defect folder) are no images
            masks = {mask_path(mask_dir, mask_pattern, image) for image in images}
            images = [image for image in images if image not in masks]
        for image in images:
            mask = mask_path(mask_dir, mask_pattern, image) if mask_dir is not None else None
            if mask is not None and not mask.is_file():
                missing.append(f"{image} (no {mask})")
                mask = None
            test.append(Sample(image, 1, folder.name, mask))
    if missing and require_masks:
        raise missing_masks_error(
            missing,
            "the --data.defect_dirs folders",
            f"'{mask_pattern}' in the matching --data.mask_dirs folder",
        )
    return CategoryLayout(root, category, train, test)
