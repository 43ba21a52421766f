"""Training augmentation presets: callables (image, mask) -> (image, mask), selected by name.

Images are float [3, H, W] in [0, 1], masks float [1, H, W]. Every geometric op is applied to
both with the same random parameters (nearest-neighbour for the mask, so it stays binary).
Randomness comes from torch's global generator: `torch.manual_seed` makes a preset repeatable,
and DataLoader workers get their own seeds from Lightning/torch.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from mvtec_ad.errors import ConfigError

Augmentation = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]

NEAREST = InterpolationMode.NEAREST
BILINEAR = InterpolationMode.BILINEAR


def chance(p: float) -> bool:
    return bool(torch.rand(()) < p)


def uniform(low: float, high: float) -> float:
    return float(low + (high - low) * torch.rand(()))


def hflip(image: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return TF.horizontal_flip(image), TF.horizontal_flip(mask)


def vflip(image: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return TF.vertical_flip(image), TF.vertical_flip(mask)


def affine(
    image: torch.Tensor, mask: torch.Tensor, angle: float, translate: list[int], scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """One affine warp (about the centre) of image and mask; uncovered corners become 0."""
    kwargs = {"angle": angle, "translate": translate, "scale": scale, "shear": [0.0, 0.0]}
    return (
        TF.affine(image, interpolation=BILINEAR, **kwargs).clamp_(0.0, 1.0),
        TF.affine(mask, interpolation=NEAREST, **kwargs),
    )


def pixel_ae_augmentation() -> Augmentation:
    """Seed report 2 (ResNet-3 autoencoder): flip, scale/translate, quarter turns, a very slight blur.

    Affine (p 0.75): scale uniform in [0.9, 1.1], translation uniform up to 5% of the side per
    axis. Rotation (p 0.75): one of -90/90/180 degrees, exact (torch.rot90); 180 on non-square canvases. Blur: kernel 3,
    sigma uniform in [0.01, 0.05] as the seed says (at such sigmas it barely changes a pixel).
    """

    def augment(image: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if chance(0.5):
            image, mask = hflip(image, mask)
        if chance(0.75):
            dx, dy = 0.05 * image.shape[-1], 0.05 * image.shape[-2]
            shift = [round(uniform(-dx, dx)), round(uniform(-dy, dy))]
            image, mask = affine(image, mask, 0.0, shift, uniform(0.9, 1.1))
        if chance(0.75):
            turns = (-1, 1, 2)[int(torch.randint(3, ()))]  # -90, 90, 180 degrees
            if image.shape[-1] != image.shape[-2]:
                turns = 2  # a quarter turn would change a non-square canvas's shape: half turns only
            image, mask = torch.rot90(image, turns, (1, 2)), torch.rot90(mask, turns, (1, 2))
        sigma = uniform(0.01, 0.05)
        return TF.gaussian_blur(image, kernel_size=[3, 3], sigma=[sigma, sigma]), mask

    return augment


def favae_augmentation() -> Augmentation:
    """Seed favae: rotation uniform in +-15 degrees, a random square crop resized back, flips.

    Crop: side uniform in [0.85, 1.0] of the image (area 72-100%), position uniform, resized
    back to the image's size. Horizontal and vertical flips with probability 0.3 each.
    """

    def augment(image: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        image, mask = affine(image, mask, uniform(-15.0, 15.0), [0, 0], 1.0)
        height, width = image.shape[-2:]
        side = round(uniform(0.85, 1.0) * min(height, width))
        top = int(torch.randint(height - side + 1, ()))
        left = int(torch.randint(width - side + 1, ()))
        size = [height, width]
        image = TF.resized_crop(image, top, left, side, side, size, interpolation=BILINEAR, antialias=True)
        mask = TF.resized_crop(mask, top, left, side, side, size, interpolation=NEAREST)
        if chance(0.3):
            image, mask = hflip(image, mask)
        if chance(0.3):
            image, mask = vflip(image, mask)
        return image.clamp_(0.0, 1.0), mask

    return augment


PRESETS: dict[str, Callable[[], Augmentation]] = {
    "pixel_ae": pixel_ae_augmentation,
    "favae": favae_augmentation,
}


def build_augmentation(name: str) -> Augmentation:
    """The named preset (it works at the size of the images it gets); an unknown name lists the presets."""
    if name not in PRESETS:
        raise ConfigError(
            f"Unknown augmentation '{name}' (--data.augmentation): use one of {', '.join(PRESETS)}, "
            f"or null for none."
        )
    return PRESETS[name]()
