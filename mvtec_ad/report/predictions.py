"""`python -m mvtec_ad predict`: scores, labels and heatmaps of new images, written to the run's log dir.

    python -m mvtec_ad predict --config C --ckpt_path P --data.path <file | folder | glob>

writes, in the run's log dir (lightning_logs/version_N):
    predictions.csv, predictions.json   one row per image: path, score, label (1 = anomalous,
                                        score >= threshold; null without a threshold), threshold,
                                        and the two PNGs' file names
    predictions/<stem>_heatmap.png      the anomaly map in JET colours (blue = the run's lowest map
                                        value, red = its highest)
    predictions/<stem>_overlay.png      the image with that heatmap blended over it
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
import math
from collections import Counter
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.utilities import rank_zero_info

from mvtec_ad.data.dataset import Batch
from mvtec_ad.report.files import save_png, write_json, write_text
from mvtec_ad.report.overlays import blend, colorize, to_rgb_uint8

COLUMNS = ("path", "score", "label", "threshold", "heatmap", "overlay")


def output_stems(paths: list[Path]) -> list[str]:
    """Names for each image's PNGs: its stem; parent_stem where stems repeat; numbered if still not unique."""
    stems = Counter(p.stem for p in paths)
    names = [p.stem if stems[p.stem] == 1 else f"{p.parent.name}_{p.stem}" for p in paths]
    repeated, seen = Counter(names), Counter()
    unique = []
    for name in names:
        seen[name] += 1
        unique.append(name if repeated[name] == 1 else f"{name}_{seen[name]}")
    return unique


class PredictionWriter(BasePredictionWriter):
    """Collects each batch's scores and maps; at the end of predict writes the PNGs and the CSV/JSON tables.

    All heatmaps of a run share one colour range, [min, max] of all its maps (as the test
    overlays): colours compare across the images of a run, not across runs. Maps wait in memory
    until then, in float16 with the 8-bit image (5 bytes per pixel: ~250 KB per 224 px image).
    """

    def __init__(self) -> None:
        super().__init__(write_interval="batch")
        self._rows: list[dict] = []
        self._pictures: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def on_predict_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._rows, self._pictures = [], {}

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
        threshold = float(pl_module.threshold)
        has_threshold = math.isfinite(threshold)
        maps = prediction["map"][:, 0].float().cpu()
        for i, path in enumerate(prediction["path"]):
            h, w = batch.content[i].tolist() if batch.content is not None else maps.shape[-2:]
            index = (
                int(batch.index[i]) if batch.index is not None and batch.index[i] >= 0 else len(self._rows)
            )
            self._rows.append(
                {
                    "path": str(path),
                    "score": float(prediction["score"][i]),
                    "label": int(prediction["label"][i]) if has_threshold else None,
                    "threshold": threshold if has_threshold else None,
                    "index": index,
                    "map_range": (float(maps[i, :h, :w].min()), float(maps[i, :h, :w].max())),
                }
            )
            image = to_rgb_uint8(batch.image[i, :, :h, :w].float().cpu())
            self._pictures[index] = (image, maps[i, :h, :w].half())  # the padding cut off

    def gathered_rows(self, trainer: L.Trainer) -> list[dict]:
        """Every process's rows, each image once (DistributedSampler pads with repeats), in dataset order."""
        rows = self._rows
        if trainer.world_size > 1:
            parts: list[list[dict]] = [[] for _ in range(trainer.world_size)]
            torch.distributed.all_gather_object(parts, rows)
            rows = [row for part in parts for row in part]
        return sorted({row["index"]: row for row in rows}.values(), key=lambda row: row["index"])

    def on_predict_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        rows = self.gathered_rows(trainer)
        if not rows:
            return
        folder = Path(trainer.log_dir or trainer.default_root_dir)
        vmin = min(row["map_range"][0] for row in rows)
        vmax = max(row["map_range"][1] for row in rows)
        for row, stem in zip(rows, output_stems([Path(row["path"]) for row in rows]), strict=True):
            row["heatmap"] = f"predictions/{stem}_heatmap.png"
            row["overlay"] = f"predictions/{stem}_overlay.png"
            if row["index"] in self._pictures:  # predicted by this process
                image, amap = self._pictures[row["index"]]
                heatmap = colorize(amap.float(), vmin, vmax)
                save_png(folder / row["heatmap"], heatmap)
                save_png(folder / row["overlay"], blend(image, heatmap))
        self._pictures = {}
        if trainer.is_global_zero:
            self.write_tables(rows, folder)

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
