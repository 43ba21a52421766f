"""Augmentation presets: image and mask stay aligned, values stay in range, seeds repeat them."""

import pytest
import torch

from mvtec_ad.data.transforms import PRESETS, build_augmentation, hflip
from tests.helpers import datamodule

SIZE = 64


def square_pair(top: int = 10, left: int = 20, side: int = 12) -> tuple[torch.Tensor, torch.Tensor]:
    """A dark image with one bright square and the mask marking exactly that square."""
    image = torch.full((3, SIZE, SIZE), 0.1)
    mask = torch.zeros(1, SIZE, SIZE)
    image[:, top : top + side, left : left + side] = 0.9
    mask[:, top : top + side, left : left + side] = 1.0
    return image, mask


def iou(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a & b).sum() / (a | b).sum().clamp_min(1))


def test_flip_moves_a_marked_pixel_in_image_and_mask_alike():
    image, mask = torch.zeros(3, SIZE, SIZE), torch.zeros(1, SIZE, SIZE)
    image[:, 5, 7] = 1.0
    mask[:, 5, 7] = 1.0
    image, mask = hflip(image, mask)
    assert image[0, 5, SIZE - 1 - 7] == 1.0 and mask[0, 5, SIZE - 1 - 7] == 1.0


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_keep_image_and_mask_aligned(name):
    augment = build_augmentation(name)
    image, mask = square_pair()
    moved = 0
    for seed in range(12):
        torch.manual_seed(seed)
        out_image, out_mask = augment(image.clone(), mask.clone())
        assert out_image.shape == (3, SIZE, SIZE) and out_mask.shape == (1, SIZE, SIZE)
        assert set(out_mask.unique().tolist()) <= {0.0, 1.0}  # nearest keeps masks binary
        assert iou(out_image[0] > 0.5, out_mask[0] > 0.5) > 0.75, seed
        moved += not torch.equal(out_mask, mask)
    assert moved >= 6  # the geometric ops did happen


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_keep_values_in_range_and_repeat_under_a_seed(name):
    augment = build_augmentation(name)
    image, mask = torch.rand(3, SIZE, SIZE), (torch.rand(1, SIZE, SIZE) > 0.8).float()
    runs = []
    for _ in range(2):
        torch.manual_seed(7)
        runs.append([augment(image.clone(), mask.clone()) for _ in range(5)])
    for (a_img, a_mask), (b_img, b_mask) in zip(*runs, strict=True):
        assert torch.equal(a_img, b_img) and torch.equal(a_mask, b_mask)
        assert 0.0 <= float(a_img.min()) and float(a_img.max()) <= 1.0


def test_unknown_preset_names_the_option_and_the_presets():
    with pytest.raises(ValueError, match=r"--data.augmentation.*pixel_ae, favae"):
        build_augmentation("heavy")


def test_datamodule_augments_training_images_only(tiny_root):
    dm = datamodule(tiny_root, augmentation="favae")
    torch.manual_seed(0)
    augmented = [dm.train_set[0]["image"] for _ in range(3)]
    assert not torch.equal(augmented[0], augmented[1]) or not torch.equal(augmented[1], augmented[2])
    assert torch.equal(dm.dataset("features")[0]["image"], dm.dataset("features")[0]["image"])


def test_pixel_ae_augmentation_keeps_a_non_square_canvas():
    augment = build_augmentation("pixel_ae")
    torch.manual_seed(0)
    for _ in range(20):  # quarter turns are drawn 1 in 2 times the rotation applies
        image, mask = augment(torch.rand(3, 16, 40), torch.zeros(1, 16, 40))
        assert image.shape == (3, 16, 40) and mask.shape == (1, 16, 40)
