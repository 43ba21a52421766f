"""The contract every detector keeps, and the base of every pure (Lightning-free) detector module."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import nn

from mvtec_ad.errors import ConfigError
from mvtec_ad.models.components.pre_processor import PreProcessor


class AnomalyOutput(NamedTuple):
    """Image scores [B] and anomaly maps [B, 1, H, W] at the input resolution (higher = more anomalous)."""

    score: torch.Tensor
    map: torch.Tensor


class Detector(nn.Module):
    """A pure detector: images in [0, 1] -> AnomalyOutput. Exportable; no Lightning inside.

    It owns its input geometry (`pre_processor`); subclasses implement `detect` for images at
    that geometry, and every hyperparameter is an argument of their `__init__` (the Lightning
    wrappers forward theirs here unchanged).
    """

    def __init__(self, image_size: int | Sequence[int] = 224) -> None:
        """
        Args:
            image_size: side S or [H, W] every image is resized to: the model's input geometry.
        """
        super().__init__()
        self.pre_processor = PreProcessor(image_size)

    def require_side(self, minimum: int, reason: str) -> None:
        """Refuse an input geometry with a side below `minimum` (e.g. a backbone's largest stride)."""
        height, width = self.pre_processor.geometry.size
        if min(height, width) < minimum:
            raise ConfigError(
                f"--model.image_size {self.pre_processor.geometry.image_size} is smaller than {reason} "
                f"({minimum} px): use sides of at least {minimum} (e.g. 224)."
            )

    def detect(self, images: torch.Tensor) -> AnomalyOutput:
        """Scores and maps of images at the pre-processor's geometry."""
        raise NotImplementedError

    def forward(self, images: torch.Tensor) -> AnomalyOutput:
        size = images.shape[-2:]
        out = self.detect(self.pre_processor(images))
        return AnomalyOutput(out.score, self.pre_processor.restore(out.map, size))
