"""Tiling: tiles cover the canvas, stitching averages overlaps, tiled detectors see one bank over all tiles."""

import pytest
import torch

from mvtec_ad.errors import ConfigError
from mvtec_ad.models.components.tiler import Tiler, starts


def test_tile_starts_cover_the_side_with_the_last_tile_flush():
    assert starts(100, 40, 30) == [0, 30, 60]
    assert starts(100, 40, 40) == [0, 40, 60]  # the last tile moves back to stay inside
    assert starts(40, 40, 10) == [0]


@pytest.mark.parametrize("tile,stride", [(16, 16), (16, 8), ([16, 24], [12, 10])])
def test_stitching_constant_maps_gives_the_constant(tile, stride):
    tiler = Tiler((40, 56), tile, stride)
    maps = torch.full((2 * tiler.count, 1, *tiler.tile), 3.25)
    stitched = tiler.stitch(maps)
    assert stitched.shape == (2, 1, 40, 56)
    torch.testing.assert_close(stitched, torch.full_like(stitched, 3.25))


def test_split_then_stitch_gives_back_the_canvas():
    tiler = Tiler((40, 56), 16, 12)
    images = torch.rand(3, 1, 40, 56)
    tiles = tiler.split(images)
    assert tiles.shape == (3 * tiler.count, 1, 16, 16)
    assert torch.equal(tiler.per_image(tiles)[1, 0], images[1, :, :16, :16])  # image-major order
    torch.testing.assert_close(tiler.stitch(tiles), images)


def test_overlaps_are_averaged():
    tiler = Tiler((8, 12), [8, 8], [8, 4])  # two tiles, columns 4..7 covered twice
    maps = torch.cat([torch.zeros(1, 1, 8, 8), torch.ones(1, 1, 8, 8)])
    row = tiler.stitch(maps)[0, 0, 0]
    assert row.tolist() == [0] * 4 + [0.5] * 4 + [1] * 4


@pytest.mark.parametrize(
    "tile,stride,message",
    [
        (64, None, r"--model.tile_size 64 is larger than the canvas"),
        (16, 24, r"--model.tile_stride 24 .* gaps"),
    ],
)
def test_bad_tiling_names_the_option(tile, stride, message):
    with pytest.raises(ConfigError, match=message):
        Tiler((40, 56), tile, stride)
