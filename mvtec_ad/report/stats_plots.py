"""The plots of `python -m mvtec_ad stats` (seed report 1), drawn from mvtec_ad.data.statistics' CategoryStats.

matplotlib's Figure API only (Agg canvas, no display, no pyplot state).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from mvtec_ad.data.statistics import CHANNELS, CORRELATION_FEATURES, CategoryStats

CHANNEL_COLOURS = ("tab:blue", "tab:green", "tab:red")

# Seed report 1 groups the MVTec categories like this for its BGR density plots.
MVTEC_GROUPS = {
    "texture": ("carpet", "leather", "tile", "wood", "zipper"),
    "industrial component": ("cable", "grid", "metal_nut", "screw", "transistor"),
    "consumer product": ("bottle", "capsule", "toothbrush"),
    "edible": ("hazelnut", "pill"),
}


def group_of(category: str) -> str:
    return next((group for group, members in MVTEC_GROUPS.items() if category in members), "")


def plot_bgr_density(results: Sequence[CategoryStats], path: Path) -> None:
    """One panel per category: the share of pixels at each intensity 0-255, per channel B, G, R."""
    ordered = sorted(results, key=lambda s: [*MVTEC_GROUPS, ""].index(group_of(s.category)))
    columns = min(4, len(ordered))
    rows = -(-len(ordered) // columns)
    fig = Figure(figsize=(4 * columns, 3 * rows), layout="constrained")
    for i, stats in enumerate(ordered):
        ax = fig.add_subplot(rows, columns, i + 1)
        for channel, colour, counts in zip(CHANNELS, CHANNEL_COLOURS, stats.histogram, strict=True):
            ax.plot(np.arange(256), counts / max(counts.sum(), 1), color=colour, label=channel.upper())
        group = group_of(stats.category)
        ax.set_title(f"{stats.category} ({group})" if group else stats.category)
        ax.set_xlim(0, 255)
        ax.set_xlabel("intensity")
        ax.set_ylabel("density")
        ax.legend(fontsize="small")
    fig.savefig(path, dpi=100)


def plot_anomaly_area_violin(results: Sequence[CategoryStats], path: Path) -> bool:
    """Violins of the anomaly area % per category (dots where too few values for a density)."""
    data = [(s.category, [r["anomaly_area_pct"] for r in s.areas()]) for s in results]
    data = [(name, values) for name, values in data if values]
    if not data:
        return False
    fig = Figure(figsize=(max(6, 0.8 * len(data) + 2), 4.5), layout="constrained")
    ax = fig.add_subplot()
    for position, (_, values) in enumerate(data, start=1):
        if len(set(values)) > 1:  # the kernel density needs some spread
            ax.violinplot([values], positions=[position], showmedians=True)
        else:
            ax.plot([position] * len(values), values, "o", color="tab:blue")
    ax.set_xticks(range(1, len(data) + 1), [name for name, _ in data], rotation=45, ha="right")
    ax.set_ylabel("anomaly area (% of image)")
    ax.set_title("Anomaly area per defective image")
    fig.savefig(path, dpi=100)
    return True


def pairwise_correlation(values: np.ndarray) -> np.ndarray:
    """Pearson correlation of the columns of [N, F], each pair over the rows where both are finite;
    NaN where a column is constant there or fewer than two rows remain."""
    n_features = values.shape[1]
    result = np.full((n_features, n_features), np.nan)
    for i in range(n_features):
        for j in range(i, n_features):
            both = np.isfinite(values[:, i]) & np.isfinite(values[:, j])
            x, y = values[both, i], values[both, j]
            if len(x) < 2 or x.std() == 0 or y.std() == 0:
                continue
            result[i, j] = result[j, i] = float(np.corrcoef(x, y)[0, 1])
    return result


def plot_feature_correlation(results: Sequence[CategoryStats], path: Path) -> None:
    """Heatmap of the correlation between the per-image features, all images of all categories."""
    rows = [r for s in results for r in s.images]
    values = np.array(
        [[np.nan if r[k] is None else r[k] for k in CORRELATION_FEATURES] for r in rows], dtype=float
    )
    correlation = pairwise_correlation(values)
    fig = Figure(figsize=(10, 8.5), layout="constrained")
    ax = fig.add_subplot()
    image = ax.imshow(np.ma.masked_invalid(correlation), cmap="coolwarm", vmin=-1, vmax=1)
    ticks = range(len(CORRELATION_FEATURES))
    ax.set_xticks(ticks, CORRELATION_FEATURES, rotation=60, ha="right")
    ax.set_yticks(ticks, CORRELATION_FEATURES)
    for (i, j), value in np.ndenumerate(correlation):
        if np.isfinite(value):
            ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=6)
    fig.colorbar(image, ax=ax, label="Pearson correlation (blank: constant feature)")
    ax.set_title(f"Feature correlation ({len(rows)} images: {', '.join(s.category for s in results)})")
    fig.savefig(path, dpi=100)


def plot_channel_sums_vs_brightness(stats: CategoryStats, path: Path) -> None:
    """Sum of each channel's pixel values against perceived brightness, normal red, anomalous blue."""
    fig = Figure(figsize=(13, 4), layout="constrained")
    for i, channel in enumerate(CHANNELS):
        ax = fig.add_subplot(1, 3, i + 1)
        for label, colour, name in ((0, "tab:red", "normal"), (1, "tab:blue", "anomalous")):
            rows = [r for r in stats.images if r["label"] == label]
            x = [r[f"sum_{channel}"] for r in rows]
            ax.scatter(x, [r["perceived_brightness"] for r in rows], s=8, alpha=0.6, c=colour, label=name)
        ax.set_xlabel(f"sum of {channel.upper()} pixel values")
        ax.set_ylabel("perceived brightness")
        ax.legend(fontsize="small")
    fig.suptitle(f"Feature relationships for {stats.category}")
    fig.savefig(path, dpi=100)
