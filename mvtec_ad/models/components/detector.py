"""The contract every detector keeps, and the base of every pure (Lightning-free) detector module."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import nn

from mvtec_ad.data.geometry import Pad, Resize, as_option
from mvtec_ad.errors import ConfigError
from mvtec_ad.models.components.pre_processor import PreProcessor, content_mask
from mvtec_ad.models.components.tiler import Tiler


class AnomalyOutput(NamedTuple):
    """Image scores [B] and anomaly maps [B, 1, H, W] at the input resolution (higher = more anomalous)."""

    score: torch.Tensor
    map: torch.Tensor


def fill_outside(maps: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
    """`maps` with every pixel outside `keep` set to the image's lowest kept value: padding never raises anything."""
    if keep is None:
        return maps
    inf = torch.full_like(maps, float("inf"))
    low = torch.where(keep, maps, inf).amin(dim=(-2, -1), keepdim=True)
    low = torch.where(torch.isfinite(low), low, torch.zeros_like(low))  # nothing kept (a tile of padding)
    return torch.where(keep, maps, low)


class Detector(nn.Module):
    """A pure detector: images in [0, 1] -> AnomalyOutput. Exportable; no Lightning inside.

    It owns its input geometry (`pre_processor`) and, optionally, its tiling (`tiler`).
    Subclasses implement `detect` for network-size images (the canvas, or a tile of it), with a
    `valid` mask of where the image is (None = everywhere) that they keep out of their maps and
    scores; every hyperparameter is an argument of their `__init__` (the Lightning wrappers
    forward theirs here unchanged).
    """

    score_from_map = True  # False: the image score comes from pooled features (tiled: max over tiles)

    def __init__(
        self,
        image_size: int | Sequence[int] = 224,
        resize: Resize = "squash",
        pad: Pad = "reflect",
        tile_size: int | Sequence[int] | None = None,
        tile_stride: int | Sequence[int] | None = None,
    ) -> None:
        """
        Args:
            image_size: side S or [H, W] of the canvas every image is placed on: the model's input geometry.
            resize: squash (resize to the canvas) or keep_aspect (fit inside it, pad the rest).
            pad: keep_aspect's padding, reflect or constant (0); the padding is left out of maps and scores.
            tile_size: S or [H, W]: the network sees tiles of the canvas, maps are stitched (None = no tiling).
            tile_stride: step between tiles (default tile_size, no overlap); smaller = overlapping tiles.
        """
        super().__init__()
        self.pre_processor = PreProcessor(image_size, resize, pad)
        if tile_size is None and tile_stride is not None:
            raise ConfigError("--model.tile_stride needs --model.tile_size: set both, or leave both out.")
        self.tiler = (
            Tiler(self.pre_processor.geometry.size, tile_size, tile_stride) if tile_size is not None else None
        )

    @property
    def network_size(self) -> tuple[int, int]:
        """(H, W) of what the network sees: a tile, or the whole canvas."""
        return self.tiler.tile if self.tiler is not None else self.pre_processor.geometry.size

    @property
    def plain(self) -> bool:
        """True when images are squashed onto the canvas and not tiled: every pixel is the image, one pass."""
        return self.tiler is None and self.pre_processor.geometry.resize == "squash"

    def describe_geometry(self) -> dict:
        """For metrics.json and export metadata."""
        return self.pre_processor.geometry.describe() | (self.tiler.describe() if self.tiler else {})

    def require_side(self, minimum: int, reason: str) -> None:
        """Refuse a network input with a side below `minimum` (e.g. a backbone's largest stride)."""
        option = "--model.tile_size" if self.tiler is not None else "--model.image_size"
        if min(self.network_size) < minimum:
            raise ConfigError(
                f"{option} {as_option(self.network_size)} is smaller than {reason} "
                f"({minimum} px): use sides of at least {minimum} (e.g. 224)."
            )

    def network_input(self, images: torch.Tensor) -> torch.Tensor:
        """Canvas images [B, 3, H, W] -> what the network trains on: the tiles [B * T, ...], or the images."""
        return self.tiler.split(images) if self.tiler is not None else images

    def detect(self, images: torch.Tensor, valid: torch.Tensor | None = None) -> AnomalyOutput:
        """Scores and maps of network-size images; `valid` [B, 1, H, W] bool marks the image (None = all)."""
        raise NotImplementedError

    def detect_canvas(self, images: torch.Tensor, content: torch.Tensor | None = None) -> AnomalyOutput:
        """Scores and maps of canvas images whose image covers `content` (h, w) [B, 2] from the top-left."""
        valid = self.canvas_valid(images, content)
        if self.tiler is None:
            return self.detect(images, valid)
        tiles = self.tiler.split(images)
        tile_valid = self.tiler.split(valid) if valid is not None else None
        out = self.detect(tiles, tile_valid)
        maps = fill_outside(self.tiler.stitch(out.map), valid)
        if self.score_from_map:
            return AnomalyOutput(self.map_score(maps, valid), maps)
        scores = self.tiler.per_image(out.score)
        if tile_valid is not None:  # tiles wholly in the padding do not count
            covers = self.tiler.per_image(tile_valid.flatten(1).any(1))
            scores = torch.where(covers, scores, torch.full_like(scores, -float("inf")))
        return AnomalyOutput(scores.amax(1), maps)

    def canvas_valid(self, images: torch.Tensor, content: torch.Tensor | None) -> torch.Tensor | None:
        """The pixels [B, 1, H, W] of canvas images that are image, not padding (None: all of them)."""
        if self.pre_processor.geometry.resize == "squash":
            content = None  # a squashed image covers its whole canvas
        return content_mask(content, images.shape[-2:], images.device)

    def map_score(self, maps: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
        """A stitched map's image score: the detector's own rule (its head's), over the image's pixels."""
        return self.head.image_score(maps, valid)

    def forward(self, images: torch.Tensor, content: torch.Tensor | None = None) -> AnomalyOutput:
        """Images [B, 3, h, w] of any one size -> AnomalyOutput at that size.

        Images already on the canvas (the DataModule's) may say which part is the image (`content`).
        """
        size = images.shape[-2:]
        if tuple(size) != self.pre_processor.geometry.size:
            images, content = self.pre_processor.place(images)
        out = self.detect_canvas(images, content)
        return AnomalyOutput(out.score, self.pre_processor.restore(out.map, size))
