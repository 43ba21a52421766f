"""Source `visa`: VisA (Zou et al., ECCV 2022) read in place through its split file, one object at a time.

    <root>/split_csv/1cls.csv      columns object, split (train/test), label (normal/anomaly), image, mask
    <root>/<object>/Data/Images/{Normal,Anomaly}/*.JPG, <object>/Data/Masks/Anomaly/*.png

Paths in the CSV are relative to the VisA root. Masks hold 0 for background and 255 or a class
id for defects; `decode_mask` counts every value > 0 as defective, which covers both.
"""

from __future__ import annotations

import csv
from operator import attrgetter
from pathlib import Path

from mvtec_ad.data.samples import GOOD, CategoryLayout, Sample, missing_masks_error
from mvtec_ad.errors import DataError

VISA_COLUMNS = ("object", "split", "label", "image", "mask")
VISA_ANOMALY = "anomaly"  # 1cls.csv carries no defect type: every anomaly is this one kind
VISA_HELP = (
    "Download VisA from https://github.com/amazon-science/spot-diff, extract it and pass the folder "
    "that holds split_csv/ and the object folders with --data.root."
)


def read_split_csv(path: Path) -> list[dict[str, str]]:
    """The rows of a VisA split file, cells stripped; a missing file or column is an error."""
    if not path.is_file():
        raise DataError(f"VisA split file '{path}' not found. {VISA_HELP}")
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        absent = [c for c in VISA_COLUMNS if c not in (reader.fieldnames or [])]
        if absent:
            raise DataError(
                f"VisA split file '{path}' lacks the column(s) {absent}; expected {', '.join(VISA_COLUMNS)}."
            )
        return [{k: (v or "").strip() for k, v in row.items() if k in VISA_COLUMNS} for row in reader]


def scan_visa(
    root: str | Path, category: str, split_csv: str = "split_csv/1cls.csv", require_masks: bool = True
) -> CategoryLayout:
    """The train and test samples of one VisA object (`category`) as its split file lists them.

    Train rows must be normal (the detectors learn from normal images only); an anomaly without
    a mask file is an error unless `require_masks` is False.
    """
    root = Path(root)
    csv_path = root / split_csv
    rows = read_split_csv(csv_path)
    objects = sorted({row["object"] for row in rows})
    if category not in objects:
        raise DataError(
            f"Object '{category}' is not in '{csv_path}'. Objects there: {', '.join(objects) or 'none'}. "
            f"Pass one of them with --data.category."
        )
    train: list[Sample] = []
    test: list[Sample] = []
    missing_images: list[str] = []
    missing_masks: list[str] = []
    for line, row in enumerate(rows, start=2):  # line 1 is the header
        if row["object"] != category:
            continue
        split, label, image = row["split"].lower(), row["label"].lower(), root / row["image"]
        if split not in ("train", "test") or label not in ("normal", VISA_ANOMALY):
            raise DataError(
                f"'{csv_path}' line {line}: split '{row['split']}' / label '{row['label']}'; expected split "
                f"train or test and label normal or {VISA_ANOMALY}."
            )
        if split == "train" and label == VISA_ANOMALY:
            raise DataError(
                f"'{csv_path}' line {line}: an anomaly in the train split; the detectors train on normal "
                f"images only. Use split_csv/1cls.csv (--data.split_csv)."
            )
        if not image.is_file():
            missing_images.append(str(image))
            continue
        if label == "normal":
            (train if split == "train" else test).append(Sample(image, 0, GOOD))
            continue
        mask = root / row["mask"] if row["mask"] else None
        if mask is None or not mask.is_file():
            missing_masks.append(f"{image} (mask column: '{row['mask']}')")
            mask = None
        test.append(Sample(image, 1, VISA_ANOMALY, mask))
    if missing_images:
        shown = "\n  ".join(missing_images[:5]) + ("\n  ..." if len(missing_images) > 5 else "")
        raise DataError(
            f"{len(missing_images)} image(s) listed in '{csv_path}' for '{category}' do not exist:\n  {shown}\n"
            f"Paths in the CSV are relative to --data.root; pass the extracted VisA folder."
        )
    if missing_masks and require_masks:
        raise missing_masks_error(
            missing_masks, f"'{csv_path}' ({category})", "a mask file in the mask column"
        )
    for samples, split in ((train, "train"), (test, "test")):
        if not samples:
            raise DataError(f"'{csv_path}' lists no {split} images for '{category}'.")
    by_path = attrgetter("path")  # sorted by file: the seeded splits do not depend on row order
    return CategoryLayout(root, category, sorted(train, key=by_path), sorted(test, key=by_path))
