"""The input geometry a detector is trained at: the canvas every image and mask is placed on.

A detector owns its geometry (its pre-processor, mvtec_ad.models.components.pre_processor, holds
one and saves it in every checkpoint); the DataModule is told it by the model and decodes and
places images on it once per run. It is a plain value, so datasets carry it into workers.

Two ways onto the canvas (`resize`):
  squash       the image is resized to height x width, whatever its aspect ratio;
  keep_aspect  the image is scaled, aspect ratio kept, to fit the canvas (longest side to S for a
               square canvas), placed at its top-left corner and the rest padded (`pad`: reflect or
               constant 0). The `content` (height, width) it covers travels with the image, so
               detectors leave the padding out of maps and scores.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import cv2
import numpy as np

from mvtec_ad.errors import ConfigError

Resize = Literal["squash", "keep_aspect"]
Pad = Literal["reflect", "constant"]
RESIZES = ("squash", "keep_aspect")
PADS = ("reflect", "constant")


def sides_of(value: int | Sequence[int], option: str) -> tuple[int, int]:
    """(H, W) from `S` (a square) or `[H, W]`; anything else is an error naming `option`."""
    if isinstance(value, int) and not isinstance(value, bool):
        sides = [value]
    elif isinstance(value, Sequence) and not isinstance(value, str):
        sides = list(value)
    else:
        sides = []
    if len(sides) == 1:
        sides *= 2
    if len(sides) != 2 or not all(isinstance(s, int) and not isinstance(s, bool) for s in sides):
        raise ConfigError(f"{option} must be a side S or [H, W] in pixels, got {value!r}.")
    if min(sides) < 1:
        raise ConfigError(f"{option} must be positive, got {value!r}.")
    return sides[0], sides[1]


def as_option(size: tuple[int, int]) -> int | list[int]:
    """As the option is written: S for a square, else [H, W]."""
    return size[0] if size[0] == size[1] else [size[0], size[1]]


@dataclass(frozen=True)
class InputGeometry:
    """The canvas (height x width) a detector sees, and how an image of any size is put on it."""

    height: int
    width: int
    resize: Resize = "squash"
    pad: Pad = "reflect"

    @classmethod
    def of(
        cls,
        image_size: int | Sequence[int],
        resize: str = "squash",
        pad: str = "reflect",
        option: str = "--model.image_size",
    ) -> InputGeometry:
        """From `S` or `[H, W]` and the resize/pad modes; a bad value is an error naming its option."""
        if resize not in RESIZES:
            raise ConfigError(f"--model.resize must be one of {', '.join(RESIZES)}, got {resize!r}.")
        if pad not in PADS:
            raise ConfigError(f"--model.pad must be one of {', '.join(PADS)}, got {pad!r}.")
        return cls(*sides_of(image_size, option), resize, pad)

    @property
    def size(self) -> tuple[int, int]:
        """(height, width) of the canvas, as torch takes it."""
        return self.height, self.width

    @property
    def image_size(self) -> int | list[int]:
        """As the option is written: S for a square, else [H, W] (metrics.json, export metadata)."""
        return as_option(self.size)

    def describe(self) -> dict:
        """For metrics.json and export metadata."""
        return {"image_size": self.image_size, "resize": self.resize, "pad": self.pad}

    def content_size(self, height: int, width: int) -> tuple[int, int]:
        """(h, w) an image of height x width covers on the canvas."""
        if self.resize == "squash":
            return self.size
        scale = min(self.height / height, self.width / width)
        return (
            min(self.height, max(1, round(height * scale))),
            min(self.width, max(1, round(width * scale))),
        )

    def place_image(self, image: np.ndarray) -> tuple[np.ndarray, tuple[int, int]]:
        """H x W x C uint8 -> (the canvas, the content size); INTER_AREA when shrinking, bilinear when enlarging."""
        content = self.content_size(*image.shape[:2])
        if image.shape[:2] != content:
            shrink = image.shape[0] > content[0] or image.shape[1] > content[1]
            interpolation = cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
            image = cv2.resize(image, (content[1], content[0]), interpolation=interpolation)
            if image.ndim == 2:
                image = image[:, :, None]
        return self.pad_to_canvas(image, self.pad), content

    def place_mask(self, mask: np.ndarray) -> np.ndarray:
        """Nearest-neighbour resize keeps masks binary; the padding is never defective."""
        content = self.content_size(*mask.shape[:2])
        if mask.shape[:2] != content:
            mask = cv2.resize(mask, (content[1], content[0]), interpolation=cv2.INTER_NEAREST)
        return self.pad_to_canvas(mask, "constant")

    def restore_map(self, amap: np.ndarray, height: int, width: int) -> np.ndarray:
        """A float map on the canvas [H, W] -> at an image's own (height, width): its content cut out and
        resized bilinearly (half-pixel centres, no antialiasing), as the pre-processor's `restore` does in torch."""
        h, w = self.content_size(height, width)
        part = np.ascontiguousarray(amap[:h, :w], dtype=np.float32)
        if (h, w) == (height, width):
            return part
        return cv2.resize(part, (width, height), interpolation=cv2.INTER_LINEAR)

    def pad_to_canvas(self, array: np.ndarray, pad: Pad) -> np.ndarray:
        """Pad the bottom and right of an array at its content size up to the canvas."""
        bottom, right = self.height - array.shape[0], self.width - array.shape[1]
        if bottom == 0 and right == 0:
            return array
        border = cv2.BORDER_REFLECT_101 if pad == "reflect" else cv2.BORDER_CONSTANT
        padded = cv2.copyMakeBorder(array, 0, bottom, 0, right, border, value=0)
        return padded[:, :, None] if array.ndim == 3 and padded.ndim == 2 else padded
