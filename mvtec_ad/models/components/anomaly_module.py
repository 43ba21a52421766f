"""The Lightning base of every detector: a thin wrapper around its pure `Detector`.

A subclass builds `self.model` from `**model_args` (the torch model's own signature is the one
source of every model hyperparameter) and says how to train it. Evaluation is not here: the
`Evaluator` callback every detector brings fits the operating threshold on validation scores and
evaluates test runs. The threshold is a buffer of this module, so it travels in every checkpoint.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import asdict

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

from mvtec_ad.data.contract import AnomalyData, require_anomaly_data
from mvtec_ad.data.dataset import Batch
from mvtec_ad.data.geometry import InputGeometry
from mvtec_ad.evaluation.evaluator import Evaluator
from mvtec_ad.evaluation.thresholds import ThresholdConfig
from mvtec_ad.models.components.detector import AnomalyOutput, Detector

# Image scores and labels a threshold is fitted on (labels None = all normal), or None to keep it.
ThresholdBasis = tuple[torch.Tensor, torch.Tensor | None] | None


class AnomalyModule(L.LightningModule):
    """Shared Lightning steps of every detector around `self.model`; evaluation by `self.evaluator`.

    validation_step returns image scores, test_step the AnomalyOutput; the Evaluator callback
    collects them. `num_overlays` is per group: up to that many worst-scored normals, best- and
    worst-scored defects are drawn after each test run.
    """

    detector_name = "detector"
    produces_maps = True  # False for image-only detectors: their pixel metrics are null, never faked

    def __init__(
        self, model: Detector, threshold: ThresholdConfig | dict | None = None, num_overlays: int = 6
    ) -> None:
        super().__init__()
        if isinstance(threshold, dict):  # as stored in a checkpoint's hyperparameters
            threshold = ThresholdConfig(**threshold)
        self.model = model
        self.evaluator = Evaluator(threshold or ThresholdConfig(), num_overlays)
        self.register_buffer("threshold", torch.tensor(float("nan")))  # image score threshold
        # pixel (anomaly map) threshold: the predicted masks and SegF1; NaN = none fitted
        self.register_buffer("pixel_threshold", torch.tensor(float("nan")))

    def save_hyperparameters(self, *args, **kwargs) -> None:
        """Lightning's, with the threshold config stored as a plain dict (weights_only checkpoint loading)."""
        frame = kwargs.pop("frame", None) or inspect.currentframe().f_back  # the subclass __init__
        super().save_hyperparameters(*args, frame=frame, **kwargs)
        if "threshold" in self.hparams:
            self.hparams.threshold = asdict(self.evaluator.threshold_config)

    def load_state_dict(self, state_dict, *args, **kwargs):
        """torch's, also for checkpoints written before the pixel threshold existed (it loads as none)."""
        if "pixel_threshold" not in state_dict:
            state_dict = {**state_dict, "pixel_threshold": torch.tensor(float("nan"))}
        return super().load_state_dict(state_dict, *args, **kwargs)

    @property
    def geometry(self) -> InputGeometry:
        """The input geometry the model was built for (its pre-processor's)."""
        return self.model.pre_processor.geometry

    @property
    def data(self) -> AnomalyData:
        """The trainer's DataModule, as the typed contract says a detector may use it."""
        return require_anomaly_data(self.trainer.datamodule, self.detector_name)

    @property
    def test_results(self) -> dict | None:
        """metrics.json of the last test run (None before one)."""
        return self.evaluator.results

    def setup(self, stage: str) -> None:
        """Tell the data the model's geometry before any loader is built (subclasses call this first)."""
        if self.trainer.datamodule is not None:
            self.data.bind_input(self.geometry)

    def forward(self, images: torch.Tensor, content: torch.Tensor | None = None) -> AnomalyOutput:
        return self.model(images, content)

    def detect_batch(self, batch: Batch) -> AnomalyOutput:
        """The model's output for a DataModule batch (on the canvas, its padding said by `content`)."""
        return self(batch.image, batch.content)

    def validation_step(self, batch: Batch, batch_idx: int) -> AnomalyOutput | None:
        """Scores and maps of a validation batch, which the Evaluator fits the thresholds on."""
        return self.detect_batch(batch)

    def test_step(self, batch: Batch, batch_idx: int) -> AnomalyOutput:
        return self.detect_batch(batch)

    def predict_step(self, batch: Batch, batch_idx: int) -> dict:
        out = self.detect_batch(batch)
        threshold = self.threshold
        label = out.score >= threshold if torch.isfinite(threshold) else torch.full_like(out.score, -1)
        return {"path": batch.path, "score": out.score, "map": out.map, "label": label}

    def threshold_basis(self, validation: ThresholdBasis) -> ThresholdBasis:
        """What the operating threshold is fitted on: the validation scores of every process by default.

        A detector whose seed fits its threshold on other scores overrides this.
        """
        return validation

    def has_threshold(self) -> bool:
        return math.isfinite(float(self.threshold))

    def has_pixel_threshold(self) -> bool:
        return math.isfinite(float(self.pixel_threshold))

    def extra_results(self) -> dict:
        """Detector-specific facts for metrics.json (chosen hyperparameters, bank size, ...)."""
        return {}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """How many training images the fit saw, for exports' description of their data (a plain int)."""
        splits = getattr(self._trainer.datamodule if self._trainer is not None else None, "splits", None)
        if splits is not None and getattr(splits, "train", None) is not None:
            checkpoint["train_images"] = len(splits.train)

    def configure_callbacks(self) -> list[Callback]:
        return [self.evaluator]
