"""Placing images on the model's canvas: squash or keep_aspect with padding, in cv2 (data) and torch (model)."""

import numpy as np
import pytest
import torch

from mvtec_ad.data.geometry import InputGeometry
from mvtec_ad.errors import ConfigError
from mvtec_ad.models.components.pre_processor import PreProcessor, content_mask, pad_bottom_right


def test_keep_aspect_fits_the_longest_side_and_pads_the_rest():
    geometry = InputGeometry.of(64, resize="keep_aspect", pad="constant")
    strip = np.full((40, 100, 3), 200, np.uint8)  # 1:2.5, as a line-scan strip
    placed, content = geometry.place_image(strip)
    assert placed.shape == (64, 64, 3) and content == (26, 64)  # 40 * 64 / 100 = 25.6 -> 26
    assert (placed[:26] == 200).all() and (placed[26:] == 0).all()  # the image top-left, zeros below
    mask = np.zeros((40, 100), np.uint8)
    mask[-4:] = 1  # a defect on the last rows stays on the content's last row, never in the padding
    placed_mask = geometry.place_mask(mask)
    assert placed_mask.shape == (64, 64) and placed_mask[25].all() and not placed_mask[26:].any()


def test_squash_fills_the_canvas_whatever_the_aspect():
    geometry = InputGeometry.of([32, 80])
    placed, content = geometry.place_image(np.zeros((100, 40, 3), np.uint8))
    assert placed.shape == (32, 80, 3) and content == (32, 80)


def test_a_canvas_of_the_strips_own_aspect_needs_no_padding():
    geometry = InputGeometry.of([40, 100], resize="keep_aspect")
    assert geometry.content_size(400, 1000) == (40, 100)
    assert geometry.content_size(1000, 400) == (40, 16)  # the other way round: mostly padding


@pytest.mark.parametrize(
    "bottom,right", [(3, 0), (0, 5), (20, 17)]
)  # 20 > 2 x the 8 px content: reflected again
def test_torch_reflect_padding_equals_cv2s(bottom, right):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (8, 9, 3), dtype=np.uint8)
    geometry = InputGeometry(8 + bottom, 9 + right, "keep_aspect", "reflect")
    expected = geometry.pad_to_canvas(image, "reflect")
    ours = pad_bottom_right(torch.from_numpy(image).permute(2, 0, 1)[None].float(), bottom, right, "reflect")
    assert torch.equal(ours[0].permute(1, 2, 0).to(torch.uint8), torch.from_numpy(expected))


def test_the_model_places_images_of_another_size_as_the_data_does():
    pre = PreProcessor([32, 64], resize="keep_aspect", pad="constant")
    images = torch.rand(2, 3, 50, 50)
    placed, content = pre.place(images)
    assert placed.shape == (2, 3, 32, 64) and content.tolist() == [[32, 32], [32, 32]]
    assert (placed[..., 32:] == 0).all()
    valid = content_mask(content, (32, 64), placed.device)
    assert valid.shape == (2, 1, 32, 64) and int(valid.sum()) == 2 * 32 * 32
    maps = torch.zeros(2, 1, 32, 64)
    maps[..., :32] = 1.0  # the image part
    torch.testing.assert_close(pre.restore(maps, (50, 50)), torch.ones(2, 1, 50, 50))  # padding cut first


@pytest.mark.parametrize(
    "option,kwargs", [("--model.resize", {"resize": "crop"}), ("--model.pad", {"pad": "edge"})]
)
def test_bad_resize_or_pad_names_the_option(option, kwargs):
    with pytest.raises(ConfigError, match=option):
        InputGeometry.of(64, **kwargs)
