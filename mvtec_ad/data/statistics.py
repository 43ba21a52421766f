"""Dataset statistics of seed report 1, measured one image at a time (the numbers behind `stats`).

Definitions (the seed names the measures; where it does not define them, the standard one is used):
- perceived brightness: mean over pixels of the luma Y = 0.299 R + 0.587 G + 0.114 B (ITU-R
  BT.601, 0-255; seed report 2's "luminance", the gray image of mvtec_ad.features.handcrafted).
- contrast: RMS contrast, the population standard deviation of Y over the image's pixels (0-255
  scale). Per channel (heatmap): brightness_c = mean, contrast_c = standard deviation, sum_c = sum of
  the pixel values of channel c (seed report 2, section 3).
- anomaly area: pixels of a defective test image's ground-truth mask that are non-zero, and that
  count as % of the mask's width x height. Category averages take the images whose mask marks at
  least one pixel: an empty mask (magnetic_tile has four) is a missing annotation, not a zero-sized
  defect; empty and missing masks are counted separately.
- category averages are means over images (each image counts once whatever its size), train and
  test alike; images are used at their own size, never resized.

Only per-image numbers and one 3 x 256 histogram per category are kept, so memory stays flat on
the full MVTec AD.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mvtec_ad.data.decode import decode_image, decode_mask
from mvtec_ad.data.samples import Sample
from mvtec_ad.data.sources.mvtec import scan_category
from mvtec_ad.progress import track

CHANNELS = ("b", "g", "r")  # the seed's (OpenCV) channel order; decode_image gives R, G, B
LUMA_WEIGHTS_RGB = np.array([0.299, 0.587, 0.114])  # ITU-R BT.601


IMAGE_COLUMNS = (
    "category",
    "split",
    "defect",
    "label",
    "path",
    "width",
    "height",
    *(f"sum_{c}" for c in CHANNELS),
    *(f"brightness_{c}" for c in CHANNELS),
    *(f"contrast_{c}" for c in CHANNELS),
    "perceived_brightness",
    "contrast",
    "anomaly_area_px",
    "anomaly_area_pct",
)
# Numeric per-image features of the correlation heatmap (anomaly area: defective images only).
CORRELATION_FEATURES = IMAGE_COLUMNS[5:-2] + ("anomaly_area_pct",)

CATEGORY_COLUMNS = (
    "category",
    "train",
    "test_good",
    "test_defective",
    "defect_types",
    "defect_type_names",
    "width_min",
    "width_max",
    "height_min",
    "height_max",
    "avg_anomaly_area_px",
    "avg_anomaly_area_pct",
    "masks_empty",
    "masks_missing",
    "avg_perceived_brightness",
    "avg_contrast",
)


def image_statistics(rgb: np.ndarray) -> dict[str, float]:
    """Size, per-channel sums/means/standard deviations, perceived brightness and contrast of one
    8-bit RGB image, plus its per-channel (B, G, R) histograms under the key "histogram" [3, 256]."""
    height, width = rgb.shape[:2]
    n = height * width
    levels = np.arange(256, dtype=np.float64)
    histogram = np.stack([np.bincount(rgb[:, :, 2 - i].ravel(), minlength=256) for i in range(3)])
    stats: dict = {"width": width, "height": height, "histogram": histogram}
    for channel, counts in zip(CHANNELS, histogram, strict=True):
        # from the histogram: exact, and one pass over the pixels instead of three
        total = int(counts @ np.arange(256))
        mean = total / n
        stats[f"sum_{channel}"] = total
        stats[f"brightness_{channel}"] = mean
        stats[f"contrast_{channel}"] = float(np.sqrt(counts @ (levels - mean) ** 2 / n))
    luma = rgb @ LUMA_WEIGHTS_RGB  # float64 H x W
    stats["perceived_brightness"] = float(luma.mean())
    stats["contrast"] = float(luma.std())
    return stats


def mask_area(mask: np.ndarray) -> tuple[int, float]:
    """Defective pixels of a {0, 1} mask and their share of the mask in %."""
    area = int(mask.sum(dtype=np.int64))
    return area, 100.0 * area / mask.size


@dataclass
class CategoryStats:
    """What one pass over a category leaves: per-image rows and the pooled B, G, R histograms."""

    category: str
    defect_types: list[str]
    images: list[dict] = field(default_factory=list)
    histogram: np.ndarray = field(default_factory=lambda: np.zeros((3, 256), dtype=np.int64))
    masks_empty: int = 0
    masks_missing: int = 0

    def add(self, sample: Sample, split: str) -> None:
        stats = image_statistics(decode_image(sample.path))
        self.histogram += stats.pop("histogram")
        row = {"category": self.category, "split": split, "defect": sample.defect, "label": sample.label}
        row |= {"path": str(sample.path), **stats, "anomaly_area_px": None, "anomaly_area_pct": None}
        if sample.label == 1 and sample.mask_path is None:
            self.masks_missing += 1
        elif sample.label == 1:
            area, percent = mask_area(decode_mask(sample.mask_path))
            row["anomaly_area_px"], row["anomaly_area_pct"] = area, percent
            self.masks_empty += area == 0
        self.images.append(row)

    def areas(self) -> list[dict]:
        """Rows of the defective images whose mask marks at least one pixel."""
        return [r for r in self.images if r["anomaly_area_px"]]

    def summary(self) -> dict:
        """The category's row of stats.csv."""
        rows, areas = self.images, self.areas()
        count = {split: sum(r["split"] == split for r in rows) for split in ("train", "test")}
        defective = sum(r["label"] for r in rows)

        def mean(key: str, among: list[dict]) -> float | None:
            return float(np.mean([r[key] for r in among])) if among else None

        return {
            "category": self.category,
            "train": count["train"],
            "test_good": count["test"] - defective,
            "test_defective": defective,
            "defect_types": len(self.defect_types),
            "defect_type_names": ";".join(self.defect_types),
            "width_min": min(r["width"] for r in rows),
            "width_max": max(r["width"] for r in rows),
            "height_min": min(r["height"] for r in rows),
            "height_max": max(r["height"] for r in rows),
            "avg_anomaly_area_px": mean("anomaly_area_px", areas),
            "avg_anomaly_area_pct": mean("anomaly_area_pct", areas),
            "masks_empty": self.masks_empty,
            "masks_missing": self.masks_missing,
            "avg_perceived_brightness": mean("perceived_brightness", rows),
            "avg_contrast": mean("contrast", rows),
        }


def category_stats(root: str | Path, category: str) -> CategoryStats:
    """Scan one category with the shared layout checks and measure its images one at a time (a
    progress bar on a terminal)."""
    layout = scan_category(root, category, require_masks=False)
    result = CategoryStats(category, layout.defect_types)
    samples = [("train", s) for s in layout.train] + [("test", s) for s in layout.test]
    for split, sample in track(samples, f"Statistics: {category}"):
        result.add(sample, split)
    return result
