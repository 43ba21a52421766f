"""The one evaluation of every detector, as a Lightning callback that every AnomalyModule brings.

validation  collects the image scores validation_step returns (and, where it returns an
            AnomalyOutput, each normal image's map peak and a sample of its pixels); at the
            epoch's end fits the operating thresholds (image: on what the module's
            `threshold_basis` says, validation scores by default; pixel: on the normal validation
            maps; never on test data) into the module's `threshold` and `pixel_threshold`
            buffers, before the checkpoint callbacks save them
test        feeds test_step's AnomalyOutput to AnomalyMetrics (on the module's device) and to
            the overlay selection; at the end computes every metric once, logs them, and
            rank 0 writes metrics.json, the charts and the overlays (mvtec_ad.report); every test
            image is staged for report/index.html (mvtec_ad.report.gallery) and drawn at the end
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from mvtec_ad.data.contract import AnomalyData
from mvtec_ad.data.dataset import Batch, unique_by_index
from mvtec_ad.evaluation.metrics import AnomalyMetrics
from mvtec_ad.evaluation.results import test_record
from mvtec_ad.evaluation.selection import OverlaySelection
from mvtec_ad.evaluation.thresholds import ThresholdConfig, fit_pixel_threshold, fit_threshold, pixel_sample
from mvtec_ad.features.backbone import FeatureExtractor
from mvtec_ad.features.engine import engine_version
from mvtec_ad.models.components.detector import AnomalyOutput
from mvtec_ad.report.gallery import Gallery
from mvtec_ad.report.run_report import write_test_report


def pixel_inputs(
    maps: torch.Tensor, batch: Batch
) -> tuple[list[torch.Tensor] | torch.Tensor, list[torch.Tensor] | torch.Tensor, str]:
    """What the pixel metrics compare, image by image, and at which resolution.

    With the masks at their files' own resolution (`batch.full_mask`), each map's image part is
    upsampled (bilinear) to its mask's size, masks never resized: MVTec AD's official way.
    Otherwise maps and masks are compared at the input size; either way padding (outside
    `batch.content`) is left out.
    """
    if batch.content is None:
        return maps, batch.mask, "input"
    out_maps, out_masks = [], []
    for i, (h, w) in enumerate(batch.content.tolist()):
        part = maps[i : i + 1, :, :h, :w]
        if batch.full_mask is not None:
            mask = batch.full_mask[i]
            part = F.interpolate(part, size=tuple(mask.shape[-2:]), mode="bilinear", align_corners=False)
        else:
            mask = batch.mask[i, :, :h, :w]
        out_maps.append(part[0, 0])
        out_masks.append(mask.reshape(part.shape[-2:]))
    return out_maps, out_masks, "original" if batch.full_mask is not None else "input"


def map_summary(maps: torch.Tensor, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """Each image's map peak [B] and pixel sample [B, PIXEL_SAMPLE] (thresholds.pixel_sample), padding left out."""
    peaks, samples = [], []
    for i, amap in enumerate(maps):
        if batch.content is not None:
            h, w = batch.content[i].tolist()
            amap = amap[..., :h, :w]
        peaks.append(amap.max())
        samples.append(pixel_sample(amap))
    return torch.stack(peaks).float(), torch.stack(samples)


def gathered_rows(
    pl_module: L.LightningModule,
    columns: Sequence[Sequence[torch.Tensor]],
    index: Sequence[torch.Tensor | None],
) -> tuple[torch.Tensor, ...]:
    """Each column's per-batch tensors as one tensor of rows from every process, DDP padding repeats dropped.

    `index` holds each batch's dataset positions (None where unknown: rows are then kept as gathered).
    """
    local = [torch.cat(list(column)) for column in columns]
    rows = [pl_module.all_gather(t).reshape(-1, *t.shape[1:]) for t in local]
    if all(i is not None for i in index):
        positions = pl_module.all_gather(torch.cat(list(index))).flatten()
        rows = list(unique_by_index(positions, *rows))
    return tuple(rows)


def data_of(trainer: L.Trainer) -> AnomalyData | None:
    """The trainer's DataModule when it keeps the data contract; None for plain dataloaders."""
    datamodule = trainer.datamodule
    return datamodule if isinstance(datamodule, AnomalyData) else None


class Evaluator(Callback):
    """Operating threshold on validation data, metrics and the test report; see the module docstring.

    `results` holds the last test run's metrics.json as a dict.
    """

    def __init__(self, threshold_config: ThresholdConfig | None = None, num_overlays: int = 6) -> None:
        """`threshold_config`: how both thresholds are fitted; `num_overlays`: see AnomalyModule."""
        self.threshold_config = threshold_config or ThresholdConfig()
        self.num_overlays = num_overlays
        self.results: dict | None = None
        self._val: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]] = []
        self._val_maps: list[tuple[torch.Tensor, torch.Tensor]] = []  # per image: map peak, pixel sample
        self._metrics: AnomalyMetrics | None = None
        self._selection: OverlaySelection | None = None
        self._gallery: Gallery | None = None
        self._resolution: str | None = None

    # ---- validation: the operating threshold -------------------------------------------------
    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._val, self._val_maps = [], []

    def on_validation_batch_end(
        self,
        trainer,
        pl_module,
        outputs: torch.Tensor | AnomalyOutput | None,
        batch: Batch,
        batch_idx: int,
        dataloader_idx=0,
    ) -> None:
        if outputs is None:  # fit-once detectors have nothing to score before they are fitted
            return
        scores = outputs.score if isinstance(outputs, AnomalyOutput) else outputs
        self._val.append((scores.detach().flatten(), batch.label.detach(), batch.index))
        wanted = self.threshold_config.pixel_method != "none" and pl_module.produces_maps
        if isinstance(outputs, AnomalyOutput) and wanted:
            self._val_maps.append(map_summary(outputs.map, batch))

    def pixel_basis(self, pl_module: L.LightningModule) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Map peaks [N] and pixel samples [N, S] of the normal validation images of every process."""
        if not self._val_maps or len(self._val_maps) != len(self._val):
            return None
        peaks, samples = zip(*self._val_maps, strict=True)
        _, labels, index = zip(*self._val, strict=True)
        peaks, samples, labels = gathered_rows(pl_module, (peaks, samples, labels), index)
        normal = labels == 0
        return peaks[normal], samples[normal]

    def validation_scores(self, pl_module: L.LightningModule) -> tuple[torch.Tensor, torch.Tensor] | None:
        """This epoch's validation scores and labels from every process, DDP padding repeats dropped."""
        if not self._val:
            return None
        scores, labels, index = zip(*self._val, strict=True)
        return gathered_rows(pl_module, (scores, labels), index)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        fitted_on = pl_module.threshold_basis(self.validation_scores(pl_module))
        pixels = self.pixel_basis(pl_module)
        self._val, self._val_maps = [], []
        if pixels is not None:
            pl_module.pixel_threshold.fill_(fit_pixel_threshold(*pixels, self.threshold_config))
        if fitted_on is None:
            return
        value = fit_threshold(*fitted_on, self.threshold_config)
        pl_module.threshold.fill_(value)
        if math.isfinite(value):
            pl_module.log("val_threshold", value, sync_dist=False)

    # ---- test: metrics, metrics.json, charts, overlays --------------------------------------
    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        data = data_of(trainer)
        pixel = pl_module.produces_maps and (data is None or data.has_masks())
        limit = data.describe().aupro_fpr_limit if data is not None else 0.3
        self._metrics = AnomalyMetrics(pixel=pixel, fpr_limit=limit).to(pl_module.device)
        self._selection = OverlaySelection(self.num_overlays)
        if self._gallery is not None:
            self._gallery.close()  # a test run that stopped early left its staging folder
        # Trainer.log_dir is a broadcast: every process asks
        self._gallery = Gallery(Path(trainer.log_dir or trainer.default_root_dir) / "report")
        if not pl_module.has_threshold():
            rank_zero_warn(
                "No operating threshold in this model (no validation data was seen): precision, recall "
                "and the other thresholded metrics are reported as null."
            )

    def on_test_batch_end(
        self, trainer, pl_module, outputs, batch: Batch, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        if self._metrics.pixel:
            maps, masks, self._resolution = pixel_inputs(outputs.map, batch)
        else:
            maps, masks = None, None
        self._metrics.update(outputs.score, batch.label, maps, masks, batch.index)
        maps = outputs.map if pl_module.produces_maps else None  # an image-only detector's map is a constant
        self._selection.update(
            outputs.score, batch.label, batch.index, batch.path, batch.image, maps, batch.mask, batch.content
        )
        self._gallery.add(
            outputs.score, batch.path, batch.image, maps, batch.index, batch.content, batch.label, batch.mask
        )

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        threshold = float(pl_module.threshold) if pl_module.has_threshold() else None
        pixel_threshold = float(pl_module.pixel_threshold) if pl_module.has_pixel_threshold() else None
        metrics = self._metrics.compute(threshold, pixel_threshold)
        metrics["threshold_method"] = self.threshold_config.describe()
        metrics["pixel_resolution"] = self._resolution if metrics["pixel_auroc"] is not None else None
        metrics["notes"] = self._metrics.notes
        data = data_of(trainer)
        self.results = test_record(
            pl_module.detector_name,
            data.describe() if data is not None else None,
            metrics,
            pl_module.model.describe_geometry(),
            str(trainer.ckpt_path) if trainer.ckpt_path else None,
            pl_module.extra_results() | backbone_engines(pl_module),
        )
        loggable = {f"test/{k}": float(v) for k, v in metrics.items() if isinstance(v, (int, float))}
        pl_module.log_dict(loggable, sync_dist=False)
        # Trainer.log_dir is a broadcast: every process must ask, not only rank 0
        log_dir = Path(trainer.log_dir or trainer.default_root_dir)
        cards = self._gallery.finish(trainer, threshold, pixel_threshold)  # each process draws its own
        if trainer.is_global_zero:
            tensorboard = next((lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)), None)
            writer = tensorboard.experiment if tensorboard is not None else None
            path = write_test_report(
                log_dir,
                self.results,
                self._metrics.curves,
                self._selection,
                writer,
                pl_module.global_step,
                self._metrics.pixel_curves,
                cards,
            )
            rank_zero_info(f"Test report: {(log_dir / 'report' / 'index.html').resolve().as_uri()}")
            rank_zero_info(f"Test metrics written to {path}")
        self._metrics = self._selection = self._gallery = None

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        if self._gallery is not None:  # nothing of a stopped run's pictures is left in its folder
            self._gallery.close()


def backbone_engines(module: torch.nn.Module) -> dict:
    """{"backbone_engine": "onnxruntime 1.x"} for metrics.json: what ran the module's frozen backbones."""
    engines = sorted({engine_version(m.engine) for m in module.modules() if isinstance(m, FeatureExtractor)})
    return {"backbone_engine": ", ".join(engines)} if engines else {}
