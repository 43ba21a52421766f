"""What every detector shares: the output contract, map post-processing, and the Lightning steps.

A detector is a pure `nn.Module` whose forward maps images in [0, 1] to `AnomalyOutput`, wrapped
by a thin `AnomalyModule` subclass that only says how to train it. Validation-threshold fitting,
test metrics, metrics.json, TensorBoard logging and predict live here, written once.
"""

from __future__ import annotations

import inspect
import json
import math
from dataclasses import asdict
from pathlib import Path
from typing import Literal, NamedTuple

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only, rank_zero_warn
from torch import nn

from mvtec_ad.data.dataset import Batch, unique_by_index
from mvtec_ad.evaluation.figures import confusion_figure, roc_figure, score_histogram
from mvtec_ad.evaluation.metrics import AnomalyMetrics
from mvtec_ad.evaluation.overlays import OverlaySelection
from mvtec_ad.evaluation.plots import overlay_panels, save_png
from mvtec_ad.evaluation.thresholds import ThresholdConfig, fit_threshold

METRIC_KEYS = (
    "detector",
    "category",
    "protocol",
    "n_test",
    "image_auroc",
    "pixel_auroc",
    "pixel_aupro",
    "image_f1_max",
    "threshold",
    "precision",
    "recall",
    "specificity",
    "balanced_accuracy",
    "error_rate",
)


class AnomalyOutput(NamedTuple):
    """Image scores [B] and anomaly maps [B, 1, H, W] at the input resolution (higher = more anomalous)."""

    score: torch.Tensor
    map: torch.Tensor


def gaussian_kernel1d(sigma: float) -> torch.Tensor:
    """Normalised 1-D Gaussian truncated at 4 sigma (scipy.ndimage's default)."""
    radius = max(1, int(4.0 * sigma + 0.5))
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    return kernel / kernel.sum()


class AnomalyMapHead(nn.Module):
    """Raw low-resolution map -> AnomalyOutput: score by the detector's rule, map upsampled and blurred.

    The score is taken from the raw map (top-k mean or max, as the seeds define it); the map is
    bilinearly upsampled to the input size and smoothed with a Gaussian (sigma 4 by default, as
    is usual on MVTec AD). Being an nn.Module, it is part of every exported model.
    """

    def __init__(self, sigma: float = 4.0, score: Literal["max", "topk", "mean"] = "max", top_k: int = 10):
        super().__init__()
        self.sigma = sigma
        self.score_rule = score
        self.top_k = top_k
        self.register_buffer(
            "kernel", gaussian_kernel1d(sigma) if sigma > 0 else torch.ones(1), persistent=False
        )

    def image_score(self, raw_map: torch.Tensor) -> torch.Tensor:
        flat = raw_map.flatten(1)
        if self.score_rule == "max":
            return flat.amax(1)
        if self.score_rule == "mean":
            return flat.mean(1)
        return flat.topk(min(self.top_k, flat.shape[1]), dim=1).values.mean(1)

    def blur(self, maps: torch.Tensor) -> torch.Tensor:
        if self.sigma <= 0:
            return maps
        k = self.kernel.to(maps.dtype)
        pad = k.numel() // 2
        # reflect padding needs pad < size; fall back to replicate for tiny maps
        mode = "reflect" if pad < min(maps.shape[-2:]) else "replicate"
        maps = F.conv2d(F.pad(maps, (pad, pad, 0, 0), mode=mode), k.view(1, 1, 1, -1))
        return F.conv2d(F.pad(maps, (0, 0, pad, pad), mode=mode), k.view(1, 1, -1, 1))

    def forward(self, raw_map: torch.Tensor, size: tuple[int, int]) -> AnomalyOutput:
        maps = F.interpolate(raw_map, size=size, mode="bilinear", align_corners=False)
        return AnomalyOutput(self.image_score(raw_map), self.blur(maps))


class ResizableBuffers(nn.Module):
    """An nn.Module whose named buffers take the shape of the state dict they are loaded from.

    Memory banks and fitted estimators have a size known only after fitting; with this a model
    built from a config loads any checkpoint of it (Lightning's and plain `load_state_dict`).
    """

    resizable_buffers: tuple[str, ...] = ()

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        for name in self.resizable_buffers:
            stored = state_dict.get(prefix + name)
            if stored is not None:
                setattr(self, name, torch.empty_like(stored, device=getattr(self, name).device))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class AnomalyModule(L.LightningModule):
    """Thin Lightning wrapper around a pure detector `self.model`; shared evaluation for all detectors.

    Subclasses set `detector_name`, build `self.model`, and implement training (if any). The
    validation pass collects image scores of normal validation images; at its end the operating
    threshold is fitted and stored in a buffer, so it travels in every checkpoint and export.
    `num_overlays` is per group: up to that many worst-scored normals, best- and worst-scored
    defects are drawn after each test run.
    """

    detector_name = "detector"
    produces_maps = True  # False for image-only detectors: their pixel metrics are null, never faked

    def __init__(self, threshold: ThresholdConfig | None = None, num_overlays: int = 6) -> None:
        super().__init__()
        if isinstance(threshold, dict):  # as stored in a checkpoint's hyperparameters
            threshold = ThresholdConfig(**threshold)
        self.threshold_config = threshold or ThresholdConfig()
        self.num_overlays = num_overlays
        self.register_buffer("threshold", torch.tensor(float("nan")))
        self._val_scores: list[torch.Tensor] = []
        self._val_labels: list[torch.Tensor] = []
        self._val_index: list[torch.Tensor] = []
        self.test_results: dict | None = None

    def save_hyperparameters(self, *args, **kwargs) -> None:
        """Lightning's, with the threshold config stored as a plain dict (weights_only checkpoint loading)."""
        frame = kwargs.pop("frame", None) or inspect.currentframe().f_back  # the subclass __init__
        super().save_hyperparameters(*args, frame=frame, **kwargs)
        if "threshold" in self.hparams:
            self.hparams.threshold = asdict(self.threshold_config)

    def forward(self, images: torch.Tensor) -> AnomalyOutput:
        return self.model(images)

    # ---- validation: threshold fitting -------------------------------------------------------
    def collect_validation_scores(
        self, scores: torch.Tensor, labels: torch.Tensor, index: torch.Tensor | None = None
    ) -> None:
        """Keep a validation batch's scores; with dataset indices, DDP padding repeats are dropped later."""
        self._val_scores.append(scores.detach())
        self._val_labels.append(labels.detach())
        if index is not None:
            self._val_index.append(index.detach())

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        self.collect_validation_scores(self(batch.image).score, batch.label, batch.index)

    def on_validation_epoch_start(self) -> None:
        self._val_scores, self._val_labels, self._val_index = [], [], []

    def threshold_scores(self) -> tuple[torch.Tensor, torch.Tensor | None] | None:
        """Scores and labels (None = all normal) the operating threshold is fitted on, or None to keep it.

        By default the validation scores collected this epoch, gathered from every process; a
        detector whose seed fits its threshold on other scores overrides this.
        """
        if not self._val_scores:
            return None
        scores = self.all_gather(torch.cat(self._val_scores)).flatten()
        labels = self.all_gather(torch.cat(self._val_labels)).flatten()
        if len(self._val_index) == len(self._val_scores):
            index = self.all_gather(torch.cat(self._val_index)).flatten()
            scores, labels = unique_by_index(index, scores, labels)
        return scores, labels

    def on_validation_epoch_end(self) -> None:
        fitted_on = self.threshold_scores()
        if fitted_on is None:
            return
        value = fit_threshold(*fitted_on, self.threshold_config)
        self.threshold.fill_(value)
        if math.isfinite(value):
            self.log("val_threshold", value, sync_dist=False)

    # ---- test: metrics, metrics.json, overlays ----------------------------------------------
    def on_test_epoch_start(self) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        pixel = self.produces_maps and bool(getattr(datamodule, "has_masks", True))
        self.test_metrics = AnomalyMetrics(pixel=pixel).to(self.device)
        self._overlays = OverlaySelection(self.num_overlays)
        if not math.isfinite(float(self.threshold)):
            rank_zero_warn(
                "No operating threshold in this model (no validation data was seen): precision, recall "
                "and the other thresholded metrics are reported as null."
            )

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        out = self(batch.image)
        self.test_metrics.update(out.score, batch.label, out.map, batch.mask, batch.index)
        maps = out.map if self.produces_maps else None  # an image-only detector's map is a constant
        self._overlays.update(out.score, batch.label, batch.index, batch.path, batch.image, maps, batch.mask)

    def on_test_epoch_end(self) -> None:
        threshold = float(self.threshold)
        metrics = self.test_metrics.compute(threshold if math.isfinite(threshold) else None)
        datamodule = getattr(self.trainer, "datamodule", None)
        results = {
            "detector": self.detector_name,
            "category": getattr(datamodule, "category", None),
            "protocol": getattr(datamodule, "protocol", None),
            **metrics,
            "protocol_detail": getattr(datamodule, "protocol_description", None),
            "image_size": getattr(datamodule, "image_size", None),
            "root": str(getattr(datamodule, "root", "")) or None,
            "checkpoint": str(self.trainer.ckpt_path) if self.trainer.ckpt_path else None,
        }
        results |= self.extra_results()
        self.test_results = {key: results[key] for key in METRIC_KEYS} | results
        loggable = {f"test/{k}": float(v) for k, v in metrics.items() if isinstance(v, (int, float))}
        self.log_dict(loggable, sync_dist=False)
        # Trainer.log_dir is a broadcast: every process must ask, not only rank 0
        log_dir = Path(self.trainer.log_dir or self.trainer.default_root_dir)
        self._write_test_outputs(log_dir, *self.gathered_test_scores())

    def gathered_test_scores(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Image scores and labels of every test image from every process, DDP repeats dropped (CPU)."""
        scores, labels, index = (t.to(self.device) for t in self._overlays.scores_labels_index())
        gathered = (self.all_gather(t).flatten() for t in (scores, labels, index))
        scores, labels, index = (t.cpu() for t in gathered)
        return unique_by_index(index, scores, labels)

    def extra_results(self) -> dict:
        """Detector-specific facts for metrics.json (chosen hyperparameters, bank size, ...)."""
        return {}

    @rank_zero_only
    def _write_test_outputs(self, log_dir: Path, scores: torch.Tensor, labels: torch.Tensor) -> None:
        """metrics.json, then the charts (plots/) and the chosen overlays (overlays/), also to TensorBoard."""
        log_dir.mkdir(parents=True, exist_ok=True)
        (log_dir / "metrics.json").write_text(json.dumps(self.test_results, indent=2) + "\n")
        rank_zero_info(f"Test metrics written to {log_dir / 'metrics.json'}")
        tensorboard = next((lg for lg in self.trainer.loggers if isinstance(lg, TensorBoardLogger)), None)

        def write(relative: str, tag: str, rgb: np.ndarray) -> None:
            save_png(log_dir / relative, rgb)
            if tensorboard is not None:
                tensorboard.experiment.add_image(tag, rgb, self.global_step, dataformats="HWC")

        threshold = float(self.threshold)
        write("plots/roc.png", "test/roc", roc_figure(scores, labels, threshold))
        write("plots/histogram.png", "test/histogram", score_histogram(scores, labels, threshold))
        write("plots/confusion.png", "test/confusion", confusion_figure(scores, labels, threshold))
        vmin, vmax = self._overlays.map_range()
        for group, chosen in self._overlays.selected().items():
            for rank, c in enumerate(chosen):
                caption = c.caption(group, rank, threshold)
                panel = overlay_panels(c.image, c.map, c.mask, c.score, threshold, vmin, vmax, caption)
                write(f"overlays/{c.file_name(group, rank)}", f"test_overlays/{group}_{rank:02d}", panel)

    # ---- predict -----------------------------------------------------------------------------
    def predict_step(self, batch: Batch, batch_idx: int) -> dict:
        out = self(batch.image)
        threshold = self.threshold
        label = out.score >= threshold if torch.isfinite(threshold) else torch.full_like(out.score, -1)
        return {"path": batch.path, "score": out.score, "map": out.map, "label": label}
