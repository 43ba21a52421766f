"""A small category in MVTec AD 2's layout, drawn by the procedural demo generator (64 px fabric).

Shared by the source tests and the submit tests. File names follow the dataset's: `000_regular.png`
in train, validation, test_public and test_private, `000_mixed.png` in test_private_mixed; masks are
test_public/ground_truth/bad/<stem>_mask.png. Private images are 48 x 80 px (not the canvas's
shape), so a map written at the image's own size is told apart from one at the model's size.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from mvtec_ad.data.demo_set import DEMO_DEFECTS, render_sample

# images per folder of the tree
AD2_COUNTS = {"train": 8, "validation": 3, "good": 2, "bad": 3, "test_private": 3, "test_private_mixed": 2}
AD2_SIZE = 64
PRIVATE_SHAPE = (48, 80)  # (h, w) of the private images


def write_png(path: Path, image: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), image)
    return path


def make_ad2_category(root: Path, category: str = "fabric", counts: dict[str, int] | None = None) -> Path:
    """<root>/<category>/{train/good, validation/good, test_public/..., test_private, test_private_mixed}."""
    counts = {**AD2_COUNTS, **(counts or {})}
    folder = root / category
    defects = DEMO_DEFECTS["fabric"]
    index = 0  # every normal image its own rendering: no file is in two splits
    for split in ("train", "validation"):
        for i in range(counts[split]):
            write_png(
                folder / split / "good" / f"{i:03d}_regular.png",
                render_sample("fabric", "train", index, None, AD2_SIZE).image,
            )
            index += 1
    public = folder / "test_public"
    for i in range(counts["good"]):
        write_png(
            public / "good" / f"{i:03d}_regular.png", render_sample("fabric", "test", i, None, AD2_SIZE).image
        )
    for i in range(counts["bad"]):
        sample = render_sample("fabric", "test", i, defects[i % len(defects)], AD2_SIZE)
        write_png(public / "bad" / f"{i:03d}_regular.png", sample.image)
        write_png(public / "ground_truth" / "bad" / f"{i:03d}_regular_mask.png", sample.mask)
    h, w = PRIVATE_SHAPE
    for split, suffix in (("test_private", "regular"), ("test_private_mixed", "mixed")):
        for i in range(counts[split]):
            defect = None if i % 2 == 0 else defects[i % len(defects)]
            image = render_sample(
                "fabric", "test", 100 + i + (50 if suffix == "mixed" else 0), defect, AD2_SIZE
            ).image
            write_png(
                folder / split / f"{i:03d}_{suffix}.png",
                cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA),
            )
    return root
