"""Your own data: a folder of good images, folders of defective images and, optionally, their masks.

    <root>/<good_dir>/*.png                         normal images; a seeded share becomes test/good
    <root>/<defect_dirs[i]>/*.png                   defective images, defect type = folder name
    <root>/<mask_dirs[i]>/<mask_pattern>            the mask of each defective image, e.g. {stem}_mask.png

`FolderDataModule` scans this into the same `CategoryLayout` as the MVTec layout; splits,
protocols, loaders and evaluation are MVTecDataModule's own.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from string import Formatter

from mvtec_ad.data.datamodule import MVTecDataModule, split_train_val
from mvtec_ad.data.layout import (
    GOOD,
    IMAGE_EXTENSIONS,
    CategoryLayout,
    DatasetError,
    Sample,
    list_images,
    missing_masks_error,
)

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
        raise DatasetError(
            f"--data.mask_pattern '{pattern}' is not a valid pattern ({error}). Use the fields {fields_help}, "
            f"e.g. '{{stem}}_mask.png'."
        ) from None
    if unknown:
        raise DatasetError(
            f"--data.mask_pattern '{pattern}' has unknown field(s) {unknown}; the fields are {fields_help}, "
            f"e.g. '{{stem}}_mask.png'."
        )
    if not fields & {"stem", "name"}:
        raise DatasetError(
            f"--data.mask_pattern '{pattern}' names the same file for every image; include {{stem}} or "
            f"{{name}}, e.g. '{{stem}}_mask.png'."
        )


def mask_path(mask_dir: Path, pattern: str, image: Path) -> Path:
    """Where `pattern` puts the mask of `image` inside `mask_dir`."""
    return mask_dir / pattern.format(stem=image.stem, suffix=image.suffix, name=image.name)


def folder_images(folder: Path, option: str) -> list[Path]:
    """The images directly in `folder`; a missing or empty folder is an error naming `option`."""
    if not folder.is_dir():
        raise DatasetError(
            f"{option}: folder '{folder}' does not exist. Check the path (relative to --data.root)."
        )
    images = list_images(folder)
    if not images:
        raise DatasetError(
            f"{option}: no images in '{folder}'. Put {', '.join(IMAGE_EXTENSIONS)} files there."
        )
    return images


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
    check_mask_pattern(mask_pattern)
    if not defect_dirs:
        raise DatasetError("--data.defect_dirs is empty: give one or more folders of defective images.")
    if mask_dirs and len(mask_dirs) != len(defect_dirs):
        raise DatasetError(
            f"--data.mask_dirs has {len(mask_dirs)} folder(s) for {len(defect_dirs)} --data.defect_dirs; "
            f"give one mask folder per defect folder, in the same order."
        )
    if not mask_dirs and require_masks:
        raise DatasetError(
            "No --data.mask_dirs given: pass one mask folder per defect folder (with --data.mask_pattern), "
            "or --data.require_masks false to evaluate image-level metrics only."
        )
    if not 0.0 < good_test_share < 1.0:
        raise DatasetError(f"--data.good_test_share must be in (0, 1), got {good_test_share}.")

    good = [Sample(p, 0, GOOD) for p in folder_images(root / good_dir, "--data.good_dir")]
    train, test = split_train_val(good, good_test_share, seed, option="--data.good_test_share")
    missing: list[str] = []
    for i, defect_dir in enumerate(defect_dirs):
        folder = root / defect_dir
        images = folder_images(folder, "--data.defect_dirs")
        mask_dir = root / mask_dirs[i] if mask_dirs else None
        if mask_dir is not None and not mask_dir.is_dir():
            raise DatasetError(f"--data.mask_dirs: folder '{mask_dir}' does not exist (masks of '{folder}').")
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


class FolderDataModule(MVTecDataModule):
    """Your own images in plain folders, with every split, protocol and option of MVTecDataModule.

    Args:
        good_dir: folder of defect-free images (relative to `root`).
        defect_dirs: folders of defective images; each folder's name is its defect type.
        mask_dirs: one mask folder per defect folder, same order (None: image-level metrics only,
            with require_masks false).
        mask_pattern: file name of an image's mask in its mask folder; fields {stem}, {suffix},
            {name} of the image, e.g. "{stem}_mask.png" or "{stem}.png".
        good_test_share: seeded share of the good images that is test/good instead of training.
        root: folder the other folders are relative to.
        category: name in metrics.json and tables (default: the name of good_dir's parent).
        **kwargs: every other MVTecDataModule option (image_size, protocol, val_split, seed, ...).
    """

    def __init__(
        self,
        good_dir: str,
        defect_dirs: Sequence[str],
        mask_dirs: Sequence[str] | None = None,
        mask_pattern: str = "{stem}_mask.png",
        good_test_share: float = 0.2,
        root: str | Path = ".",
        category: str | None = None,
        **kwargs,
    ) -> None:
        check_mask_pattern(mask_pattern)
        category = category or (Path(root) / good_dir).resolve().parent.name
        super().__init__(root=root, category=category, **kwargs)
        self.hparams.defect_dirs = list(defect_dirs)  # plain lists: checkpoints load with weights_only=True
        self.hparams.mask_dirs = list(mask_dirs) if mask_dirs else None
        self.good_dir = good_dir
        self.defect_dirs = list(defect_dirs)
        self.mask_dirs = list(mask_dirs) if mask_dirs else None
        self.mask_pattern = mask_pattern
        self.good_test_share = good_test_share

    def scan_layout(self) -> CategoryLayout:
        return scan_folders(
            self.root,
            self.category,
            self.good_dir,
            self.defect_dirs,
            self.mask_dirs,
            self.mask_pattern,
            self.good_test_share,
            self.seed,
            self.require_masks,
        )

    @property
    def protocol_description(self) -> str:
        """The base protocol, plus where test/good came from (here there is no official test split)."""
        return (
            f"{super().protocol_description}; test/good = {self.good_test_share:.0%} of {self.good_dir} "
            f"(seed {self.seed})"
        )
