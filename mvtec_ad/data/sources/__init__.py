"""Where a category's samples come from: one scanner per dataset layout, all into one CategoryLayout.

    mvtec   the official MVTec AD layout (any folder in it, e.g. the demo set)        sources/mvtec.py
    folder  your own folders: good images, one folder per defect type, mask folders    sources/folder.py
    visa    VisA read in place through its split file                                 sources/visa.py

`SOURCE_OPTIONS` names the DataModule options that belong to one source only; the DataModule
refuses them for another source, so a misplaced option is an error, not silently ignored.
"""

from __future__ import annotations

from pathlib import Path

from mvtec_ad.data.samples import CategoryLayout
from mvtec_ad.errors import ConfigError

SOURCES = ("mvtec", "folder", "visa")
SOURCE_OPTIONS: dict[str, tuple[str, ...]] = {
    "mvtec": (),
    "folder": ("good_dir", "defect_dirs", "mask_dirs", "mask_pattern", "good_test_share"),
    "visa": ("split_csv",),
}
FOLDER_DEFAULTS = {"good_dir": "good", "mask_pattern": "{stem}_mask.png", "good_test_share": 0.2}
VISA_DEFAULTS = {"split_csv": "split_csv/1cls.csv"}


def with_defaults(options: dict, defaults: dict) -> dict:
    """`options` with None replaced by the source's default."""
    return {**options, **{k: v for k, v in defaults.items() if options.get(k) is None}}


def check_source_options(source: str, require_masks: bool, **options) -> None:
    """Fail on the source's options before any folder is read (called when the DataModule is built)."""
    if source == "folder":
        from mvtec_ad.data.sources.folder import check_folder_options

        folder = with_defaults(options, FOLDER_DEFAULTS)
        if folder["defect_dirs"] is None:
            raise ConfigError(
                "--data.source folder needs --data.defect_dirs: one or more folders of defective images."
            )
        check_folder_options(
            folder["defect_dirs"],
            folder["mask_dirs"],
            folder["mask_pattern"],
            folder["good_test_share"],
            require_masks,
        )


def scan_source(
    source: str, root: Path, category: str | None, require_masks: bool, seed: int, **options
) -> CategoryLayout:
    """Scan one category with `source`'s scanner; `options` are that source's own (None = default)."""
    if source == "folder":
        from mvtec_ad.data.sources.folder import scan_folders

        check_source_options(source, require_masks, **options)
        folder = with_defaults(options, FOLDER_DEFAULTS)
        return scan_folders(root, category, seed=seed, require_masks=require_masks, **folder)
    if category is None:
        raise ConfigError(f"--data.category is required for source {source}: name the category to use.")
    if source == "visa":
        from mvtec_ad.data.sources.visa import scan_visa

        return scan_visa(root, category, require_masks=require_masks, **with_defaults(options, VISA_DEFAULTS))
    from mvtec_ad.data.sources.mvtec import scan_category

    return scan_category(root, category, require_masks=require_masks)


def source_detail(source: str, seed: int, **options) -> str | None:
    """What the source adds to the protocol's description: where test/good came from (folder)."""
    if source != "folder":
        return None
    folder = with_defaults(options, FOLDER_DEFAULTS)
    return f"test/good = {folder['good_test_share']:.0%} of {folder['good_dir']} (seed {seed})"
