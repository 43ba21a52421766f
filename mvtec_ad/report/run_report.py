"""What a test run leaves for a person: metrics.json, the charts, the chosen overlays and report/index.html."""

from __future__ import annotations

import shlex
import sys
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

import numpy as np

from mvtec_ad.evaluation.metrics import ImageCurves, PixelCurves
from mvtec_ad.evaluation.selection import OverlaySelection
from mvtec_ad.report.charts import confusion_figure, pro_figure, roc_figure, score_histogram
from mvtec_ad.report.files import save_png, write_json
from mvtec_ad.report.gallery import Card
from mvtec_ad.report.overlays import overlay_panels
from mvtec_ad.report.page import write_run_page

CHARTS = (
    ("ROC", "plots/roc.png"),
    ("PRO", "plots/pro.png"),
    ("score histogram", "plots/histogram.png"),
    ("confusion matrix", "plots/confusion.png"),
)
GEOMETRY_KEYS = ("image_size", "resize", "pad", "tile_size", "tile_stride", "tiles")


def run_command() -> str:
    """The command line of this process as a user would type it again."""
    argv = sys.argv
    if argv and Path(argv[0]).name == "__main__.py" and Path(argv[0]).parent.name == "mvtec_ad":
        return shlex.join(["python", "-m", "mvtec_ad", *argv[1:]])
    return shlex.join(argv)


def run_rows(record: dict, threshold: float | None, n_images: int) -> list[tuple[str, str]]:
    """The page's Run table from a metrics.json-like record (detector, data, geometry, checkpoint)."""
    geometry = ", ".join(f"{k} {record[k]}" for k in GEOMETRY_KEYS if record.get(k) is not None)
    rows = [
        ("detector", record.get("detector")),
        ("category", record.get("category")),
        ("protocol", record.get("protocol_detail") or record.get("protocol")),
        ("geometry", geometry or None),
        ("search", record.get("search")),
        ("threshold", f"{threshold:.6g}" if threshold is not None else "none (no validation data was seen)"),
        ("images", str(n_images)),
        ("data root", record.get("root")),
        ("checkpoint", record.get("checkpoint") or "none (the model as trained in this process)"),
        ("command", run_command()),
        ("written", datetime.now().astimezone().strftime("%Y-%m-%d %H:%M:%S %Z")),
    ]
    return [(k, str(v)) for k, v in rows if v is not None]


def write_test_report(
    log_dir: Path,
    results: dict,
    curves: ImageCurves,
    selection: OverlaySelection,
    tensorboard=None,
    step: int = 0,
    pixel_curves: PixelCurves | None = None,
    cards: Sequence[Card] = (),
) -> Path:
    """metrics.json, then plots/{roc,pro,histogram,confusion}.png, overlays/*.png (also to `tensorboard`,
    a SummaryWriter, when given) and report/index.html over `cards` (their pictures are drawn
    already, see gallery.py). Returns the path of metrics.json."""
    metrics_path = write_json(log_dir / "metrics.json", results)

    def write(relative: str, tag: str, rgb: np.ndarray) -> None:
        save_png(log_dir / relative, rgb)
        if tensorboard is not None:
            tensorboard.add_image(tag, rgb, step, dataformats="HWC")

    write("plots/roc.png", "test/roc", roc_figure(curves))
    write("plots/pro.png", "test/pro", pro_figure(pixel_curves))
    write("plots/histogram.png", "test/histogram", score_histogram(curves))
    write("plots/confusion.png", "test/confusion", confusion_figure(curves))
    threshold = curves.threshold
    pixel_threshold = results.get("pixel_threshold")
    vmin, vmax = selection.map_range()
    for group, chosen in selection.selected().items():
        for rank, c in enumerate(chosen):
            caption = c.caption(group, rank, threshold)
            panel = overlay_panels(c.image, c.map, c.mask, pixel_threshold, vmin, vmax, caption)
            write(f"overlays/{c.file_name(group, rank)}", f"test_overlays/{group}_{rank:02d}", panel)
    known = results.get("threshold")
    charts = [(name, f"../{path}") for name, path in CHARTS]
    write_run_page(
        log_dir / "report",
        "test",
        run_rows(results, known, len(cards)),
        results,
        results.get("notes") or [],
        charts,
        list(cards),
        known,
    )
    return metrics_path
