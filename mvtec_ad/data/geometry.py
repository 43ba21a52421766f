"""The input geometry a detector is trained at: the size every image and mask is resized to.

A detector owns its geometry (its pre-processor, mvtec_ad.models.components.pre_processor, holds
one and saves it in every checkpoint); the DataModule is told it by the model and decodes and
resizes images to it once per run. It is a plain value, so datasets carry it into workers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from mvtec_ad.errors import ConfigError


@dataclass(frozen=True)
class InputGeometry:
    """Images are resized (squashed) to height x width before a detector sees them."""

    height: int
    width: int

    @classmethod
    def of(cls, image_size: int | Sequence[int], option: str = "--model.image_size") -> InputGeometry:
        """From `S` (a square) or `[H, W]`; anything else is an error naming `option`."""
        if isinstance(image_size, int):
            sides = [image_size]
        elif isinstance(image_size, Sequence) and not isinstance(image_size, str):
            sides = list(image_size)
        else:
            sides = []
        if len(sides) == 1:
            sides *= 2
        if len(sides) != 2 or not all(isinstance(s, int) and not isinstance(s, bool) for s in sides):
            raise ConfigError(f"{option} must be a side S or [H, W] in pixels, got {image_size!r}.")
        if min(sides) < 1:
            raise ConfigError(f"{option} must be positive, got {image_size!r}.")
        return cls(*sides)

    @property
    def size(self) -> tuple[int, int]:
        """(height, width), as torch takes it."""
        return self.height, self.width

    @property
    def image_size(self) -> int | list[int]:
        """As the option is written: S for a square, else [H, W] (metrics.json, export metadata)."""
        return self.height if self.height == self.width else [self.height, self.width]

    def resize_image(self, image: np.ndarray) -> np.ndarray:
        """H x W x C uint8 -> this size; INTER_AREA when shrinking (no aliasing), bilinear when enlarging."""
        if image.shape[:2] == self.size:
            return image
        shrink = image.shape[0] > self.height or image.shape[1] > self.width
        interpolation = cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
        return cv2.resize(image, (self.width, self.height), interpolation=interpolation)

    def resize_mask(self, mask: np.ndarray) -> np.ndarray:
        """Nearest-neighbour resize keeps masks binary."""
        if mask.shape[:2] == self.size:
            return mask
        return cv2.resize(mask, (self.width, self.height), interpolation=cv2.INTER_NEAREST)
