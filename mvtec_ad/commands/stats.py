"""`python -m mvtec_ad stats`: the dataset exploration of seed report 1, as tables and plots.

    python -m mvtec_ad stats --data.root datasets/mvtec --categories all --out stats/

Per category: image counts (train / test good / test defective), defect types, image size, average
anomaly area, perceived brightness and contrast -> stats.csv and stats.md; one row per image ->
images.csv; plots: BGR intensity densities, violins of anomaly area %, feature correlation heatmap,
channel sums vs perceived brightness. The measures and their definitions are in
mvtec_ad.data.statistics (stats.md repeats them); the plots in mvtec_ad.report.stats_plots.
"""

from __future__ import annotations

import argparse
import csv
import io
import time
from collections.abc import Sequence
from pathlib import Path

from mvtec_ad.data.sources.mvtec import resolve_categories
from mvtec_ad.data.statistics import CATEGORY_COLUMNS, IMAGE_COLUMNS, category_stats
from mvtec_ad.report.files import write_text
from mvtec_ad.report.stats_plots import (
    plot_anomaly_area_violin,
    plot_bgr_density,
    plot_channel_sums_vs_brightness,
    plot_feature_correlation,
)


def write_csv(path: Path, columns: Sequence[str], rows: Sequence[dict]) -> None:
    """Rows as CSV; None (not applicable) becomes an empty cell."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), extrasaction="ignore")
    writer.writeheader()
    writer.writerows({k: "" if v is None else v for k, v in row.items()} for row in rows)
    write_text(path, buffer.getvalue())


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


def main(argv: Sequence[str]) -> None:
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
    write_text(out / "stats.md", markdown_report(a.root, summaries))
    plot_bgr_density(results, out / "bgr_density.png")
    if not plot_anomaly_area_violin(results, out / "anomaly_area_violin.png"):
        print("No defective image with a non-empty mask: anomaly_area_violin.png not written.")
    plot_feature_correlation(results, out / "feature_correlation.png")
    for stats in results:
        plot_channel_sums_vs_brightness(stats, out / f"channel_sums_vs_brightness_{stats.category}.png")
    print((out / "stats.md").read_text())
    print(f"Written to {out}/")
