"""Synthetic anomalies: exact masks, untouched pixels outside them, scale, determinism and errors.

Images are tiny (16-80 px) seeded random textures, checkerboards and flat images built in torch.
"""

from __future__ import annotations

import math

import pytest
import torch

from mvtec_ad.data.anomalies import SYNTHETIC_KINDS, _perlin_noise, add_anomaly, anomaly_generator


def textured(height: int = 64, width: int = 64, seed: int = 0) -> torch.Tensor:
    """Per-pixel random colours: every displacement or paste changes what a pixel shows."""
    return torch.rand(3, height, width, generator=torch.Generator().manual_seed(seed))


def checkerboard(size: int = 64, square: int = 4) -> torch.Tensor:
    """Black/white squares, grayscale (3 equal channels)."""
    cells = (torch.arange(size)[:, None] // square + torch.arange(size)[None, :] // square) % 2
    return cells.float().expand(3, -1, -1).clone()


def bounding_box(mask: torch.Tensor) -> tuple[int, int]:
    """(height, width) in pixels of the set pixels of a [1, H, W] mask."""
    ys, xs = mask[0].nonzero(as_tuple=True)
    return int(ys.max() - ys.min() + 1), int(xs.max() - xs.min() + 1)


def check_contract(image: torch.Tensor, out: torch.Tensor, mask: torch.Tensor) -> None:
    """Shapes, dtypes, range, binary non-empty mask, and pixels outside the mask copied bit for bit."""
    assert out.shape == image.shape and out.dtype == image.dtype and out.device == image.device
    assert mask.shape == (1, *image.shape[1:]) and mask.dtype == image.dtype
    assert set(mask.unique().tolist()) <= {0.0, 1.0}
    assert mask.sum() > 0
    assert 0.0 <= out.min() and out.max() <= 1.0
    outside = ~mask[0].bool()
    assert torch.equal(out[:, outside], image[:, outside])


# ----------------------------------------------------------------------------- contract


@pytest.mark.parametrize("kind", SYNTHETIC_KINDS)
@pytest.mark.parametrize("shape", [(64, 64), (48, 80), (16, 16)])
def test_each_kind_changes_only_inside_its_mask(kind: str, shape: tuple[int, int]) -> None:
    image = textured(*shape)
    for index in range(5):
        out, mask = add_anomaly(image, kind, anomaly_generator(0, index))
        check_contract(image, out, mask)
        inside = mask[0].bool()
        assert (out - image).abs()[:, inside].mean() > 0.05  # random colours: a clear change
    assert torch.equal(image, textured(*shape))  # the input is never modified in place


@pytest.mark.parametrize("kind", SYNTHETIC_KINDS)
def test_region_size_follows_scale(kind: str) -> None:
    image, size = textured(), 64
    small, large = [], []
    for index in range(12):
        _, mask = add_anomaly(image, kind, anomaly_generator(1, index), scale=(0.1, 0.15))
        small.append(mask.sum().item())
        _, mask = add_anomaly(image, kind, anomaly_generator(1, index), scale=(0.3, 0.4))
        large.append(mask.sum().item())
        # a cut-paste rectangle may be up to sqrt(2) longer than the scale on one side (aspect 1:2)
        assert max(bounding_box(mask)) <= math.sqrt(2) * 0.4 * size + 1
        if kind != "perlin":  # a Perlin blob may cover only part of its box
            assert min(bounding_box(mask)) >= 0.5 * 0.3 * size
    assert sum(large) > 3 * sum(small)


def test_cutpaste_mask_is_a_rectangle_and_swirl_mask_a_disc() -> None:
    image = textured()
    for index in range(5):
        _, mask = add_anomaly(image, "cutpaste", anomaly_generator(2, index))
        h, w = bounding_box(mask)
        assert mask.sum().item() == h * w
        _, mask = add_anomaly(image, "swirl", anomaly_generator(2, index), scale=(0.3, 0.5))
        h, w = bounding_box(mask)
        assert abs(h - w) <= 1
        assert mask.sum().item() == pytest.approx(math.pi * h * w / 4, rel=0.15)


@pytest.mark.parametrize("kind", SYNTHETIC_KINDS)
def test_grayscale_images_stay_grayscale(kind: str) -> None:
    image = textured()[:1].expand(3, -1, -1).contiguous()
    for index in range(6):  # covers both Perlin textures (image copy and colour noise)
        out, mask = add_anomaly(image, kind, anomaly_generator(3, index))
        check_contract(image, out, mask)
        assert torch.equal(out[0], out[1]) and torch.equal(out[1], out[2])


@pytest.mark.parametrize("kind", SYNTHETIC_KINDS)
def test_float64_images_work(kind: str) -> None:
    image = textured().double()
    out, mask = add_anomaly(image, kind, anomaly_generator(0, 0))
    check_contract(image, out, mask)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("kind", SYNTHETIC_KINDS)
def test_cuda_images_give_the_cpu_anomaly(kind: str) -> None:
    image = textured()
    out, mask = add_anomaly(image.cuda(), kind, anomaly_generator(0, 7))
    check_contract(image.cuda(), out, mask)
    expected_out, expected_mask = add_anomaly(image, kind, anomaly_generator(0, 7))
    # the same CPU draws; float rounding may flip a pixel on a swirl's rim
    assert (mask.cpu() != expected_mask).float().mean() < 0.01


# ------------------------------------------------------------------------- swirl cases


def test_swirl_mask_is_where_the_sampling_moved_half_a_pixel() -> None:
    # On linear ramps bilinear sampling is exact, so each output pixel tells where it was sampled from.
    size = 64
    ramp = torch.linspace(0, 1, size)
    image = torch.stack(
        [ramp[None, :].expand(size, -1), ramp[:, None].expand(-1, size), torch.full((size, size), 0.5)]
    )
    for index in range(4):
        out, mask = add_anomaly(image, "swirl", anomaly_generator(8, index))
        check_contract(image, out, mask)
        moved_x, moved_y = (out[:2] - image[:2]) * (size - 1)
        moved = (moved_x**2 + moved_y**2).sqrt() >= 0.5 - 1e-3
        inside = mask[0].bool()
        assert not (moved & ~inside).any()
        assert (inside & ~moved).sum() <= 2  # only the centre, which rotates about itself, is filled in


def test_swirl_on_a_flat_image_changes_nothing_but_still_masks_the_disc() -> None:
    flat = torch.full((3, 64, 64), 0.4)
    out, mask = add_anomaly(flat, "swirl", anomaly_generator(4, 0))
    check_contract(flat, out, mask)
    assert torch.allclose(out, flat, atol=1e-6)  # bilinear weights sum to 1, up to float rounding
    # every draw is invisible, so the first is kept: the disc a textured image gets from the same stream
    _, textured_mask = add_anomaly(textured(), "swirl", anomaly_generator(4, 0))
    assert torch.equal(mask, textured_mask)


def test_swirl_on_a_checkerboard_twists_pixels_inside_the_disc_only() -> None:
    board = checkerboard()
    out, mask = add_anomaly(board, "swirl", anomaly_generator(5, 0), scale=(0.3, 0.4))
    check_contract(board, out, mask)
    changed = (out - board).abs().amax(0) > 1e-3
    assert changed.any()
    assert not (changed & ~mask[0].bool()).any()
    assert changed.sum() > 0.3 * mask.sum()  # a real twist, not a few rim pixels


# ------------------------------------------------------------------ determinism, errors


@pytest.mark.parametrize("kind", SYNTHETIC_KINDS)
def test_same_generator_same_anomaly_other_seed_other_mask(kind: str) -> None:
    image = textured()
    out_a, mask_a = add_anomaly(image, kind, anomaly_generator(6, 3))
    out_b, mask_b = add_anomaly(image, kind, anomaly_generator(6, 3))
    assert torch.equal(out_a, out_b) and torch.equal(mask_a, mask_b)
    _, mask_c = add_anomaly(image, kind, anomaly_generator(6, 4))
    _, mask_d = add_anomaly(image, kind, anomaly_generator(7, 3))
    assert not torch.equal(mask_a, mask_c) and not torch.equal(mask_a, mask_d)


def test_anomaly_generator_is_deterministic_and_mixes_seed_and_index() -> None:
    def first_draws(seed: int, index: int) -> torch.Tensor:
        return torch.rand(4, generator=anomaly_generator(seed, index))

    assert torch.equal(first_draws(0, 5), first_draws(0, 5))
    assert not torch.equal(first_draws(1, 2), first_draws(2, 1))
    starts = {first_draws(0, index)[0].item() for index in range(200)}
    assert len(starts) == 200
    assert anomaly_generator(0, 0).device.type == "cpu"


def test_unknown_kind_names_the_valid_kinds_and_the_option() -> None:
    with pytest.raises(ValueError, match="synthetic_kinds") as error:
        add_anomaly(textured(), "twist", anomaly_generator(0, 0))
    message = str(error.value)
    assert "'twist'" in message and "--data.synthetic_kinds" in message
    assert all(kind in message for kind in SYNTHETIC_KINDS)


@pytest.mark.parametrize(
    ("image", "scale"),
    [
        (torch.rand(3, 8, 64), (0.1, 0.2)),  # too small
        (torch.rand(64, 64), (0.1, 0.2)),  # no channel axis
        (torch.zeros(3, 32, 32, dtype=torch.uint8), (0.1, 0.2)),  # not float
        (torch.rand(3, 32, 32), (0.0, 0.2)),
        (torch.rand(3, 32, 32), (0.3, 0.2)),
        (torch.rand(3, 32, 32), (0.5, 1.5)),
    ],
)
def test_bad_image_or_scale_is_rejected(image: torch.Tensor, scale: tuple[float, float]) -> None:
    with pytest.raises(ValueError):
        add_anomaly(image, "swirl", anomaly_generator(0, 0), scale=scale)


def test_perlin_noise_is_smooth_and_bounded() -> None:
    like = torch.zeros(1)
    noise = _perlin_noise(64, 48, 4, torch.Generator().manual_seed(0), like)
    assert noise.shape == (64, 48)
    assert noise.abs().max() <= 1.0 + 1e-6 and noise.std() > 0.1
    # neighbouring pixels differ by a small step: 12-16 px per lattice cell, no white noise
    assert noise.diff(dim=0).abs().max() < 0.3 and noise.diff(dim=1).abs().max() < 0.3
