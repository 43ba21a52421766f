"""Inferencer: an exported model (or a checkpoint) scoring images of any size as `predict` scores them.

    from mvtec_ad.deploy import Inferencer
    inferencer = Inferencer("patchcore.xml")                # or .onnx, or a .ckpt
    result = inferencer("part.png")                         # a path, an RGB array, or a list of either
    result.score, result.label, result.map, result.mask     # map and mask at the image's own size

Every image goes the way `test` and `predict` send it: decoded as the datasets decode files
(mvtec_ad.data.decode: gray, RGBA and 16-bit become 8-bit RGB), placed on the model's canvas by
the one geometry code (mvtec_ad.data.geometry: squash, or keep_aspect with its padding and the
`content` it covers), scaled to [0, 1]; the model's map is cut to the image's part of the canvas
and resized to the image's own size (InputGeometry.restore_map). Geometry and thresholds come from
the file's metadata; a file without it is refused in one line.

Loading .onnx needs numpy, OpenCV and onnxruntime; .xml needs OpenVINO instead. Neither imports
torch or Lightning (tests/deploy pin that). A .ckpt imports both (the detector is a LightningModule).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import cv2
import numpy as np

from mvtec_ad.data.decode import decode_image, to_uint8
from mvtec_ad.deploy.metadata import check_metadata, geometry_of, threshold_value
from mvtec_ad.deploy.runtimes import DEFAULT_PRECISION, open_runtime
from mvtec_ad.errors import DataError

Image = str | Path | np.ndarray


@dataclass
class Result:
    """One image's prediction. NaN thresholds mean none was fitted (then label and mask are None)."""

    score: float
    label: int | None  # 1 = anomalous (score >= threshold), 0 = normal, None without a threshold
    threshold: float
    map: np.ndarray  # float32 [h, w] at the image's own size
    pixel_threshold: float
    mask: np.ndarray | None  # bool [h, w], map >= pixel_threshold; None without a pixel threshold


class Placed(NamedTuple):
    """An image on the model's canvas: float32 [3, H, W] in [0, 1], the (h, w) it covers, its own (h, w)."""

    image: np.ndarray
    content: tuple[int, int]
    original: tuple[int, int]


def as_rgb(array: np.ndarray) -> np.ndarray:
    """An array as 8-bit RGB [h, w, 3]: [h, w] or [h, w, 1] gray, [h, w, 3] RGB or [h, w, 4] RGBA, any depth."""
    image = to_uint8(np.asarray(array))
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim == 2:
        return cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_GRAY2RGB)
    if image.ndim == 3 and image.shape[2] == 4:
        return cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGBA2RGB)
    if image.ndim == 3 and image.shape[2] == 3:
        return np.ascontiguousarray(image)
    raise DataError(
        f"An image array must be [h, w] gray, [h, w, 3] RGB or [h, w, 4] RGBA (or a batch [B, h, w, C]); "
        f"got shape {tuple(np.shape(array))}."
    )


class Inferencer:
    """Scores, labels, maps and masks of an mvtec_ad model file (.onnx, OpenVINO .xml or .ckpt).

    Args:
        path: the model file; its metadata gives the geometry and thresholds.
        threads: CPU threads for the runtime (default: the runtime's own choice, all cores).
        precision: OpenVINO only: 'f32' (default, the checkpoint's numbers) or 'auto' (the CPU
            plugin's choice: bfloat16 on CPUs that have it).
        batch_size: images per forward pass when given a list.
    """

    def __init__(
        self,
        path: str | Path,
        threads: int | None = None,
        precision: str = DEFAULT_PRECISION,
        batch_size: int = 8,
    ) -> None:
        self.path = Path(path)
        self.runtime = open_runtime(self.path, threads, precision)
        self.metadata = check_metadata(self.runtime.metadata, self.path)
        self.geometry = geometry_of(self.metadata, self.path)
        self.detector = self.metadata["detector"]
        self.threshold = threshold_value(self.metadata["threshold"])
        self.pixel_threshold = threshold_value(self.metadata["pixel_threshold"])
        self.batch_size = max(1, int(batch_size))

    def place(self, image: Image) -> Placed:
        """A file path or an RGB array on the model's canvas, as the datasets place it."""
        rgb = decode_image(image) if isinstance(image, str | Path) else as_rgb(image)
        canvas, content = self.geometry.place_image(rgb)
        placed = np.ascontiguousarray(canvas.transpose(2, 0, 1), dtype=np.float32) / np.float32(255.0)
        return Placed(placed, content, rgb.shape[:2])

    def run(self, images: np.ndarray, content: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Placed images [B, 3, H, W] and their content [B, 2] -> (score [B], map [B, 1, H, W]) on the canvas."""
        return self.runtime(
            np.ascontiguousarray(images, dtype=np.float32), np.ascontiguousarray(content, dtype=np.int64)
        )

    def result(self, score: float, canvas_map: np.ndarray, original: tuple[int, int]) -> Result:
        """One image's Result from its score and canvas map [H, W]."""
        amap = self.geometry.restore_map(canvas_map, *original)
        label = None if math.isnan(self.threshold) else int(score >= self.threshold)
        mask = None if math.isnan(self.pixel_threshold) else amap >= self.pixel_threshold
        return Result(float(score), label, self.threshold, amap, self.pixel_threshold, mask)

    def predict(self, images: Image | Sequence[Image]) -> Result | list[Result]:
        """One image (a path or an array) -> a Result; a list (or a [B, h, w, C] array) -> a list of Results."""
        single = isinstance(images, str | Path) or (isinstance(images, np.ndarray) and images.ndim in (2, 3))
        items = [images] if single else list(images)
        results: list[Result] = []
        for start in range(0, len(items), self.batch_size):
            placed = [self.place(item) for item in items[start : start + self.batch_size]]
            scores, maps = self.run(
                np.stack([p.image for p in placed]), np.array([p.content for p in placed])
            )
            results += [self.result(float(scores[i]), maps[i, 0], p.original) for i, p in enumerate(placed)]
        return results[0] if single else results

    __call__ = predict

    def __repr__(self) -> str:
        return (
            f"Inferencer('{self.path}', detector={self.detector}, geometry={self.geometry.describe()}, "
            f"threshold={self.threshold:.6g}, pixel_threshold={self.pixel_threshold:.6g})"
        )
