"""`python -m mvtec_ad predict`: scores, labels and heatmaps of new images, written to the run's log dir.

    python -m mvtec_ad predict --config C --ckpt_path P --data.path <file | folder | glob>

writes, in the run's log dir (lightning_logs/version_N):
    predictions.csv, predictions.json   one row per image: path, score, label (1 = anomalous,
                                        score >= threshold; null without a threshold), threshold,
                                        pixel_threshold, anomalous_share (the share of the image's
                                        pixels at or above it) and the PNGs' file names
    predictions/<stem>_heatmap.png      the anomaly map in JET colours (blue = the run's lowest map
                                        value, red = its highest)
    predictions/<stem>_overlay.png      the image with that heatmap blended over it
    predictions/<stem>_mask.png         the predicted mask, 255 where map >= pixel threshold, else 0
                                        (only with a pixel threshold)
    report/index.html                   every image's card (score, verdict), sortable, filterable,
                                        with thumbnails and full-size panels (report.page)
    plots/predict_histogram.png         the scores, with the threshold
The PNGs are at the model's input size (the image resized as the model saw it, keep_aspect's
padding cut off); where stems
repeat (e.g. a glob over several folders) the parent folder's name is put in front.
AnomalyCLI adds PredictionWriter to every `predict` run. The image size is the model's own (its
pre-processor, built from the checkpoint's hyperparameters); the threshold and the input
normalisation are model buffers, restored with the weights.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import lightning as L
import numpy as np
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.utilities import rank_zero_info

from mvtec_ad.data.dataset import Batch
from mvtec_ad.report.charts import prediction_histogram
from mvtec_ad.report.files import save_png, write_json, write_text
from mvtec_ad.report.gallery import Card, Gallery
from mvtec_ad.report.page import write_run_page
from mvtec_ad.report.run_report import run_rows

COLUMNS = (
    "path",
    "score",
    "label",
    "threshold",
    "pixel_threshold",
    "anomalous_share",
    "heatmap",
    "overlay",
    "mask",
)


class PredictionWriter(BasePredictionWriter):
    """Stages each batch's images and maps (report.gallery); at the end of predict writes the PNGs,
    report/index.html and the CSV/JSON tables.

    All heatmaps of a run share one colour range, [min, max] of all its maps (as the test
    overlays): colours compare across the images of a run, not across runs. Maps wait on disk
    until then (the gallery's staging folder), not in memory.
    """

    def __init__(self) -> None:
        super().__init__(write_interval="batch")
        self._gallery: Gallery | None = None

    def on_predict_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._gallery is not None:
            self._gallery.close()
        # Trainer.log_dir is a broadcast: every process asks
        self._gallery = Gallery(Path(trainer.log_dir or trainer.default_root_dir) / "report")

    def write_on_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        prediction: dict,
        batch_indices,
        batch: Batch,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self._gallery.add(
            prediction["score"],
            list(prediction["path"]),
            batch.image,
            prediction["map"],
            batch.index,
            batch.content,
        )

    def on_predict_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        threshold = float(pl_module.threshold) if pl_module.has_threshold() else None
        pixel_threshold = float(pl_module.pixel_threshold) if pl_module.has_pixel_threshold() else None
        record = {"detector": pl_module.detector_name, **pl_module.model.describe_geometry()}
        record["checkpoint"] = str(trainer.ckpt_path) if trainer.ckpt_path else None
        try:
            write_predictions(
                Path(trainer.log_dir or trainer.default_root_dir),
                self._gallery,
                threshold,
                pixel_threshold,
                record,
                trainer,
            )
        finally:  # nothing of a stopped run's pictures is left in its folder
            self._gallery.close()
            self._gallery = None

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        if self._gallery is not None:  # nothing of a stopped run's pictures is left in its folder
            self._gallery.close()

    @staticmethod
    def write_tables(rows: list[dict], folder: Path) -> None:
        """predictions.csv (an empty cell for a missing label/threshold) and predictions.json (null)."""
        table = [{key: row[key] for key in COLUMNS} for row in rows]
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(table)
        write_text(folder / "predictions.csv", buffer.getvalue())
        write_json(folder / "predictions.json", table)
        rank_zero_info(f"Predictions for {len(table)} image(s) written to {folder / 'predictions.csv'}.")


def write_predictions(
    folder: Path,
    gallery: Gallery,
    threshold: float | None,
    pixel_threshold: float | None,
    record: dict,
    trainer: L.Trainer | None = None,
) -> list[dict]:
    """Draw the gallery's staged images and write predict's files into `folder` (the module docstring's list).

    The one writer of predict's output: PredictionWriter calls it at the end of a Lightning predict,
    `predict --model_path` (mvtec_ad.commands.predict_model) after its Inferencer has run. `record`
    describes the run for the page (detector, geometry, checkpoint or model file). The rows written.
    """
    shares: dict[str, float] = {}

    def also_in_predictions(card: Card, image, heatmap, overlay, predicted) -> None:  # the gallery's own
        save_png(folder / f"predictions/{card.name}_heatmap.png", heatmap)
        save_png(folder / f"predictions/{card.name}_overlay.png", overlay)
        if predicted is not None:
            save_png(folder / f"predictions/{card.name}_mask.png", predicted.astype(np.uint8) * 255)
            shares[card.name] = float(predicted.mean())

    cards = gallery.finish(trainer, threshold, pixel_threshold, on_picture=also_in_predictions)
    if not cards or (trainer is not None and not trainer.is_global_zero):
        return []
    rows = [
        {
            "path": card.path,
            "score": card.score,
            "label": card.verdict(threshold),
            "threshold": threshold,
            "pixel_threshold": pixel_threshold,
            "anomalous_share": shares.get(card.name),
            "heatmap": f"predictions/{card.name}_heatmap.png",
            "overlay": f"predictions/{card.name}_overlay.png",
            "mask": f"predictions/{card.name}_mask.png" if card.name in shares else None,
        }
        for card in cards
    ]
    PredictionWriter.write_tables(rows, folder)
    charts = [("score histogram", "../plots/predict_histogram.png")]
    save_png(
        folder / "plots/predict_histogram.png", prediction_histogram([c.score for c in cards], threshold)
    )
    page = write_run_page(
        folder / "report",
        "predict",
        run_rows(record, threshold, len(cards)),
        None,
        [],
        charts,
        cards,
        threshold,
    )
    rank_zero_info(f"Prediction report: {page.resolve().as_uri()}")
    return rows
