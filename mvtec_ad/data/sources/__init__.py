"""Where a category's samples come from: one scanner per dataset layout, all into one CategoryLayout.

    mvtec      the official MVTec AD layout (any folder in it, e.g. the demo set)       sources/mvtec.py
    folder     your own folders: good images, one folder per defect type, mask folders   sources/folder.py
    visa       VisA read in place through its split file                                sources/visa.py
    mvtec_ad2  MVTec AD 2 in place: its own validation/good, test_public, private splits sources/mvtec_ad2.py

`SOURCE_OPTIONS` names the DataModule options that belong to one source only; the DataModule
refuses them for another source, so a misplaced option is an error, not silently ignored.
"""

from __future__ import annotations

from pathlib import Path

from mvtec_ad.data.samples import CategoryLayout, Sample
from mvtec_ad.errors import ConfigError

SOURCES = ("mvtec", "folder", "visa", "mvtec_ad2")
SOURCE_OPTIONS: dict[str, tuple[str, ...]] = {
    "mvtec": (),
    "folder": ("good_dir", "defect_dirs", "mask_dirs", "mask_pattern", "good_test_share"),
    "visa": ("split_csv",),
    "mvtec_ad2": ("predict_split",),
}
FOLDER_DEFAULTS = {"good_dir": "good", "mask_pattern": "{stem}_mask.png", "good_test_share": 0.2}
VISA_DEFAULTS = {"split_csv": "split_csv/1cls.csv"}
MVTEC_AD2_DEFAULTS = {"predict_split": "test_public"}

SOURCE_DEFAULTS = {
    "mvtec": {},
    "folder": FOLDER_DEFAULTS,
    "visa": VISA_DEFAULTS,
    "mvtec_ad2": MVTEC_AD2_DEFAULTS,
}
# the AU-PRO integration limit each dataset's paper uses (MVTec AD: 0.3, Bergmann et al. 2021; MVTec AD 2:
# 0.05, Heckler-Kram et al. 2025); every other source gets 0.3
AUPRO_FPR_LIMITS = {"mvtec_ad2": 0.05}
# sources whose datasets ship a validation split: it is the validation data, and train is not cut
OWN_VALIDATION = {"mvtec_ad2": "validation/good"}


def source_options(source: str, require_masks: bool, **options) -> dict:
    """`source`'s options with None replaced by its defaults, checked before any folder is read.

    The DataModule calls this once when it is built; scan_source and source_detail take its result.
    """
    resolved = {**options, **{k: v for k, v in SOURCE_DEFAULTS[source].items() if options.get(k) is None}}
    if source == "folder":
        from mvtec_ad.data.sources.folder import check_folder_options

        if resolved["defect_dirs"] is None:
            raise ConfigError(
                "--data.source folder needs --data.defect_dirs: one or more folders of defective images."
            )
        check_folder_options(
            resolved["defect_dirs"],
            resolved["mask_dirs"],
            resolved["mask_pattern"],
            resolved["good_test_share"],
            require_masks,
        )
    if source == "mvtec_ad2":
        from mvtec_ad.data.sources.mvtec_ad2 import check_split

        check_split(resolved["predict_split"])
    return resolved


def scan_source(
    source: str, root: Path, category: str | None, require_masks: bool, seed: int, **options
) -> CategoryLayout:
    """Scan one category with `source`'s scanner; `options` are that source's own, as source_options gives them."""
    if source == "folder":
        from mvtec_ad.data.sources.folder import scan_folders

        return scan_folders(root, category, seed=seed, require_masks=require_masks, **options)
    if category is None:
        raise ConfigError(f"--data.category is required for source {source}: name the category to use.")
    if source == "visa":
        from mvtec_ad.data.sources.visa import scan_visa

        return scan_visa(root, category, require_masks=require_masks, **options)
    if source == "mvtec_ad2":
        from mvtec_ad.data.sources.mvtec_ad2 import scan_mvtec_ad2

        return scan_mvtec_ad2(root, category, require_masks=require_masks)
    from mvtec_ad.data.sources.mvtec import scan_category

    return scan_category(root, category, require_masks=require_masks)


def source_predict_samples(source: str, root: Path, category: str | None, **options) -> list[Sample] | None:
    """What `predict` reads when the source names it (mvtec_ad2's private splits, unlabelled); None: the test split."""
    if source != "mvtec_ad2" or options["predict_split"] == "test_public":
        return None
    if category is None:
        raise ConfigError(f"--data.category is required for source {source}: name the category to use.")
    from mvtec_ad.data.sources.mvtec_ad2 import split_samples

    return split_samples(root, category, options["predict_split"])


def source_detail(source: str, seed: int, **options) -> str | None:
    """What the source adds to the protocol's description (options as source_options gives them)."""
    if source == "mvtec_ad2":
        return "test = test_public"
    if source != "folder":
        return None
    return f"test/good = {options['good_test_share']:.0%} of {options['good_dir']} (seed {seed})"
