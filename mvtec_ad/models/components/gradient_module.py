"""The Lightning base of detectors trained by gradient descent: Adam, early stopping, best/last checkpoints."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint

from mvtec_ad.evaluation.thresholds import ThresholdConfig
from mvtec_ad.models.components.anomaly_module import AnomalyModule
from mvtec_ad.models.components.detector import Detector


class GradientModule(AnomalyModule):
    """Adam on `trainable_parameters()`, early stopping on val_loss, best.ckpt and last.ckpt.

    Args:
        lr: Adam learning rate.
        early_stopping_patience: epochs without val_loss improvement before stopping.
        weight_decay: Adam weight decay.
        threshold, num_overlays: see AnomalyModule.
    """

    def __init__(
        self,
        model: Detector,
        lr: float,
        early_stopping_patience: int,
        weight_decay: float = 0.0,
        threshold: ThresholdConfig | dict | None = None,
        num_overlays: int = 6,
    ) -> None:
        super().__init__(model, threshold=threshold, num_overlays=num_overlays)
        self.lr = lr
        self.early_stopping_patience = early_stopping_patience
        self.weight_decay = weight_decay

    def trainable_parameters(self) -> Iterable[torch.nn.Parameter]:
        """What the optimizer updates: every parameter that requires a gradient (frozen backbones do not)."""
        return [p for p in self.model.parameters() if p.requires_grad]

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.trainable_parameters(), lr=self.lr, weight_decay=self.weight_decay)

    def configure_callbacks(self) -> list[Callback]:
        return [
            *super().configure_callbacks(),
            EarlyStopping(monitor="val_loss", patience=self.early_stopping_patience, mode="min"),
            ModelCheckpoint(monitor="val_loss", mode="min", filename="best", save_last=True),
        ]
