"""Tiling: a large canvas cut into overlapping tiles for the network, their maps stitched back.

Tile positions are fixed by the canvas, the tile size and the stride (the last tile of a row or
column sits flush with the canvas edge), so splitting and stitching are plain slices: they run
inside an exported graph as well.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from mvtec_ad.data.geometry import as_option, sides_of
from mvtec_ad.errors import ConfigError


def starts(length: int, tile: int, stride: int) -> list[int]:
    """Start offsets of tiles covering [0, length): every `stride`, the last one flush with the end."""
    if tile >= length:
        return [0]
    offsets = list(range(0, length - tile + 1, stride))
    if offsets[-1] != length - tile:
        offsets.append(length - tile)
    return offsets


class Tiler(nn.Module):
    """Splits [B, C, H, W] canvases into [B * T, C, th, tw] tiles (image-major) and stitches maps back.

    Stitching averages every pixel over the tiles that cover it, so a constant map stays constant.
    """

    def __init__(
        self, canvas: tuple[int, int], tile_size: int | Sequence[int], tile_stride: int | Sequence[int] | None
    ) -> None:
        super().__init__()
        self.tile = sides_of(tile_size, "--model.tile_size")
        self.stride = sides_of(tile_stride, "--model.tile_stride") if tile_stride is not None else self.tile
        self.canvas = canvas
        if self.tile[0] > canvas[0] or self.tile[1] > canvas[1]:
            raise ConfigError(
                f"--model.tile_size {as_option(self.tile)} is larger than the canvas "
                f"--model.image_size {as_option(canvas)}: use tiles no larger than the image size."
            )
        if self.stride[0] > self.tile[0] or self.stride[1] > self.tile[1]:
            raise ConfigError(
                f"--model.tile_stride {as_option(self.stride)} is larger than --model.tile_size "
                f"{as_option(self.tile)}: the tiles would leave gaps; use a stride up to the tile size "
                f"(smaller = more overlap)."
            )
        self.positions = [
            (y, x)
            for y in starts(canvas[0], self.tile[0], self.stride[0])
            for x in starts(canvas[1], self.tile[1], self.stride[1])
        ]
        coverage = torch.zeros(1, 1, *canvas)
        for y, x in self.positions:
            coverage[..., y : y + self.tile[0], x : x + self.tile[1]] += 1
        self.register_buffer("coverage", coverage, persistent=False)

    @property
    def count(self) -> int:
        """Tiles per image."""
        return len(self.positions)

    def describe(self) -> dict:
        return {"tile_size": as_option(self.tile), "tile_stride": as_option(self.stride), "tiles": self.count}

    def split(self, images: torch.Tensor) -> torch.Tensor:
        """[B, C, H, W] -> [B * T, C, th, tw], the tiles of image 0 first."""
        th, tw = self.tile
        tiles = [images[..., y : y + th, x : x + tw] for y, x in self.positions]
        return torch.stack(tiles, 1).flatten(0, 1)

    def per_image(self, tensor: torch.Tensor) -> torch.Tensor:
        """[B * T, ...] -> [B, T, ...]."""
        return tensor.unflatten(0, (-1, self.count))

    def stitch(self, maps: torch.Tensor) -> torch.Tensor:
        """Tile maps [B * T, C, th, tw] -> [B, C, H, W], the mean over overlapping tiles."""
        tiles = self.per_image(maps)
        (th, tw), (height, width) = self.tile, self.canvas
        # each tile padded out to the canvas and summed: no in-place writes, so it exports as it runs
        total = sum(
            F.pad(tiles[:, t], (x, width - x - tw, y, height - y - th))
            for t, (y, x) in enumerate(self.positions)
        )
        return total / self.coverage.to(total.dtype)
