"""What a test run leaves for a person: metrics.json, the charts and the chosen overlays, on disk and in TensorBoard."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mvtec_ad.evaluation.metrics import ImageCurves
from mvtec_ad.evaluation.selection import OverlaySelection
from mvtec_ad.report.charts import confusion_figure, roc_figure, score_histogram
from mvtec_ad.report.files import save_png, write_json
from mvtec_ad.report.overlays import overlay_panels


def write_test_report(
    log_dir: Path,
    results: dict,
    curves: ImageCurves,
    selection: OverlaySelection,
    tensorboard=None,
    step: int = 0,
) -> Path:
    """metrics.json, then plots/{roc,histogram,confusion}.png and overlays/*.png (also to `tensorboard`,
    a SummaryWriter, when given). Returns the path of metrics.json."""
    metrics_path = write_json(log_dir / "metrics.json", results)

    def write(relative: str, tag: str, rgb: np.ndarray) -> None:
        save_png(log_dir / relative, rgb)
        if tensorboard is not None:
            tensorboard.add_image(tag, rgb, step, dataformats="HWC")

    write("plots/roc.png", "test/roc", roc_figure(curves))
    write("plots/histogram.png", "test/histogram", score_histogram(curves))
    write("plots/confusion.png", "test/confusion", confusion_figure(curves))
    threshold = curves.threshold
    vmin, vmax = selection.map_range()
    for group, chosen in selection.selected().items():
        for rank, c in enumerate(chosen):
            caption = c.caption(group, rank, threshold)
            panel = overlay_panels(c.image, c.map, c.mask, c.score, threshold, vmin, vmax, caption)
            write(f"overlays/{c.file_name(group, rank)}", f"test_overlays/{group}_{rank:02d}", panel)
    return metrics_path
