"""`python -m mvtec_ad stats`: the dataset exploration of seed report 1, as tables and plots.

    python -m mvtec_ad stats --data.root datasets/mvtec --categories all --out stats/

Per category: image counts (train / test good / test defective), defect types, image size, average
anomaly area, perceived brightness and contrast -> stats.csv and stats.md; one row per image ->
images.csv; plots: BGR intensity densities, violins of anomaly area %, feature correlation heatmap,
channel sums vs perceived brightness.

Definitions (the seed names the measures; where it does not define them, the standard one is used,
and stats.md repeats this):
- perceived brightness: mean over pixels of the luma Y = 0.299 R + 0.587 G + 0.114 B (ITU-R
  BT.601, 0-255; seed report 2's "luminance", the gray image of data/features.py).
- contrast: RMS contrast, the population standard deviation of Y over the image's pixels (0-255
  scale). Per channel (heatmap): brightness_c = mean, contrast_c = standard deviation, sum_c = sum of
  the pixel values of channel c (seed report 2, section 3).
- anomaly area: pixels of a defective test image's ground-truth mask that are non-zero, and that
  count as % of the mask's width x height. Category averages take the images whose mask marks at
  least one pixel: an empty mask (magnetic_tile has four) is a missing annotation, not a zero-sized
  defect; empty and missing masks are counted separately.
- category averages are means over images (each image counts once whatever its size), train and
  test alike; images are used at their own size, never resized.

Images are decoded one at a time; only per-image numbers and one 3 x 256 histogram per category are
kept, so memory stays flat on the full MVTec AD. The plots are in mvtec_ad/stats_plots.py.
"""

from __future__ import annotations

import argparse
import csv
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mvtec_ad.data.dataset import decode_image, decode_mask
from mvtec_ad.data.layout import Sample, resolve_categories, scan_category

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
    """Scan one category with the shared layout checks and measure its images one at a time."""
    layout = scan_category(root, category, require_masks=False)
    result = CategoryStats(category, layout.defect_types)
    for split, samples in (("train", layout.train), ("test", layout.test)):
        for sample in samples:
            result.add(sample, split)
    return result


def write_csv(path: Path, columns: Sequence[str], rows: Sequence[dict]) -> None:
    """Rows as CSV; None (not applicable) becomes an empty cell."""
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        writer.writerows({k: "" if v is None else v for k, v in row.items()} for row in rows)


def size_text(row: dict) -> str:
    """'W×H', or 'Wmin–Wmax × Hmin–Hmax' when the sizes vary within the category."""
    width, height = (
        str(row[f"{d}_min"]) if row[f"{d}_min"] == row[f"{d}_max"] else f"{row[f'{d}_min']}–{row[f'{d}_max']}"
        for d in ("width", "height")
    )
    return f"{width}×{height}" if "–" not in width + height else f"{width} × {height}"


def markdown_report(root: str | Path, rows: Sequence[dict]) -> str:
    """stats.md: the definitions used, then one table row per category and notes on masks."""

    def number(value: float | None, digits: int) -> str:
        return "n/a" if value is None else f"{value:,.{digits}f}"

    lines = [
        "# Dataset statistics",
        "",
        f"Root: `{root}`. Made by `python -m mvtec_ad stats`; per-image values are in images.csv.",
        "",
        "- Counts: images in train/good, test/good and test/<defect>; defect types are the folders of "
        "test/ other than good.",
        "- Size: width × height of the images in pixels (min–max where they vary within a category).",
        "- Anomaly area: non-zero pixels of a defective test image's ground-truth mask, in pixels and in % "
        "of the mask's width × height; averaged over the defective images whose mask marks at least one "
        "pixel (empty and missing masks are listed below the table, not averaged as 0).",
        "- Perceived brightness: mean over pixels of the luma Y = 0.299 R + 0.587 G + 0.114 B "
        "(ITU-R BT.601, 0–255).",
        "- Contrast: RMS contrast, the standard deviation of Y over the image's pixels (0–255 scale, so "
        "at most 127.5). Seed report 1's table reaches 275, a scale it does not define; its contrast "
        "values are not comparable with these.",
        "- Brightness and contrast are averaged over all images of the category (train and test), each "
        "image counting once; no image is resized.",
        "",
        "| category | train | test good | test defective | defect types | size (px) | avg anomaly area (px) "
        "| avg anomaly area (%) | avg perceived brightness | avg contrast |",
        "|---|---:|---:|---:|---:|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['category']} | {r['train']} | {r['test_good']} | {r['test_defective']} "
            f"| {r['defect_types']} | {size_text(r)} | {number(r['avg_anomaly_area_px'], 0)} "
            f"| {number(r['avg_anomaly_area_pct'], 2)} | {number(r['avg_perceived_brightness'], 1)} "
            f"| {number(r['avg_contrast'], 1)} |"
        )
    names = (f"{r['category']} ({r['defect_type_names'].replace(';', ', ')})" for r in rows)
    lines += ["", "Defect types: " + "; ".join(names) + "."]
    for key, what in (("masks_empty", "empty masks"), ("masks_missing", "defective images without a mask")):
        noted = [f"{r['category']} {r[key]}" for r in rows if r[key]]
        if noted:
            lines.append(f"\nNot in the anomaly-area averages, {what}: {', '.join(noted)}.")
    lines += [
        "",
        "Plots: bgr_density.png (B, G, R intensity densities per category), anomaly_area_violin.png "
        "(anomaly area % per category), feature_correlation.png (Pearson correlation of the per-image "
        "features), channel_sums_vs_brightness_<category>.png (normal red, anomalous blue).",
    ]
    return "\n".join(lines) + "\n"


def stats_main(argv: Sequence[str]) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m mvtec_ad stats",
        description="Dataset exploration (seed report 1): counts, sizes, anomaly areas, perceived "
        "brightness and contrast per category; stats.csv, stats.md, images.csv and plots.",
    )
    parser.add_argument("--data.root", dest="root", required=True, help="folder that holds the categories")
    parser.add_argument(
        "--categories", nargs="+", default=["all"], help="'all' (default) or names, comma- or space-separated"
    )
    parser.add_argument("--out", default="stats", help="output folder (default: stats)")
    a = parser.parse_args(argv)
    # the plots import this module's CategoryStats: imported here, not at the top
    from mvtec_ad.stats_plots import (
        plot_anomaly_area_violin,
        plot_bgr_density,
        plot_channel_sums_vs_brightness,
        plot_feature_correlation,
    )

    categories = resolve_categories(a.root, a.categories)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    results = []
    for category in categories:
        start = time.perf_counter()
        results.append(category_stats(a.root, category))
        print(
            f"{category}: {len(results[-1].images)} images, {time.perf_counter() - start:.1f} s", flush=True
        )

    summaries = [s.summary() for s in results]
    write_csv(out / "stats.csv", CATEGORY_COLUMNS, summaries)
    write_csv(out / "images.csv", IMAGE_COLUMNS, [r for s in results for r in s.images])
    (out / "stats.md").write_text(markdown_report(a.root, summaries))
    plot_bgr_density(results, out / "bgr_density.png")
    if not plot_anomaly_area_violin(results, out / "anomaly_area_violin.png"):
        print("No defective image with a non-empty mask: anomaly_area_violin.png not written.")
    plot_feature_correlation(results, out / "feature_correlation.png")
    for stats in results:
        plot_channel_sums_vs_brightness(stats, out / f"channel_sums_vs_brightness_{stats.category}.png")
    print((out / "stats.md").read_text())
    print(f"Written to {out}/")
