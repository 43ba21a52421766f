"""The Lightning base of detectors trained by gradient descent: Adam, early stopping, best/last checkpoints."""

from __future__ import annotations

import os
import random
from collections.abc import Iterable

import numpy as np
import torch
from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint

from mvtec_ad.data.epochs import derived_seed
from mvtec_ad.evaluation.thresholds import ThresholdConfig
from mvtec_ad.models.components.anomaly_module import AnomalyModule
from mvtec_ad.models.components.detector import Detector


class EpochSeed(Callback):
    """At each training epoch's start, seed torch, numpy and random from (the run's seed, epoch).

    What a model draws while training (FAVAE's reparameterisation noise, dropout) then depends on
    the epoch alone, so a fit resumed from last.ckpt continues exactly as an uninterrupted one.
    The data's own randomness is EpochSampler's (mvtec_ad.data.epochs).
    """

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        seed = derived_seed(os.environ.get("PL_GLOBAL_SEED", "0"), "model", trainer.current_epoch)
        torch.manual_seed(seed)
        np.random.seed(seed % 2**32)
        random.seed(seed)


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
            EpochSeed(),
            EarlyStopping(monitor="val_loss", patience=self.early_stopping_patience, mode="min"),
            ModelCheckpoint(monitor="val_loss", mode="min", filename="best", save_last=True),
        ]
